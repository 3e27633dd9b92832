"""Exponential (Polyak) averaging of the iterates: avg <- decay * avg + (1 - decay) * theta.

The averages are reported as an extra metric and never fed back into training. Written with
``lerp`` (avg + (1 - decay) * (theta - avg)), the same arithmetic as
``torch.optim.swa_utils.get_ema_multi_avg_fn``, against which the tests check it; ``decay`` is one
scalar for the whole population (``TaskConfig.polyak_decay``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def polyak_init(params: Sequence[Tensor]) -> list[Tensor]:
    """The averages before any update: copies of the current iterates (as ``AveragedModel``)."""
    return [p.detach().clone() for p in params]


@torch.no_grad()
def polyak_update(averages: Sequence[Tensor], params: Sequence[Tensor], decay: float) -> None:
    """In place: avg <- decay * avg + (1 - decay) * theta, for every tensor of the population."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"polyak_decay={decay!r} is not allowed: must lie in [0, 1)")
    for a, p in zip(averages, params, strict=True):
        a.lerp_(p.detach(), 1.0 - decay)
