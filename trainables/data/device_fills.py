"""Tensors made on the device from Python numbers, for the RNN problems' draws: values exact in
float32, and small constant tensors built without a copy from the host (which waits on CUDA).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch


def float32_value(x: float) -> float:
    """x rounded to float32, as a Python float (exact in either dtype)."""
    return float(np.float32(x))


def device_vector(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Python numbers as a tensor made on the device, one fill each: a fill's number is a kernel
    argument, where torch.tensor(values, device=...) is a copy from the host that waits on CUDA."""
    out = torch.empty(len(values), dtype=dtype, device=device)
    for i, v in enumerate(values):
        out[i] = v
    return out


@functools.lru_cache(maxsize=64)
def device_arange(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64, device=device)
