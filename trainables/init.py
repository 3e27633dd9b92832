"""Weight initializations (paper sec. 3.1 and Table 4), one member at a time.

Each function draws one member's matrix from that member's own ``torch.Generator``, so member k of
a population gets exactly the weights its solo run gets. Matrices are (fan_in, fan_out): a layer
computes ``x @ W + b``.
"""

from __future__ import annotations

import numpy as np
import torch

SPARSE_FAN_IN = 15  # Martens (2010): every unit gets 15 nonzero incoming weights.


def sparse_init(
    fan_in: int, fan_out: int, scale: float, generator: torch.Generator, *, nonzeros: int = SPARSE_FAN_IN
) -> torch.Tensor:
    """Sparse initialization, SI (sec. 3.1): each unit gets ``nonzeros`` incoming weights drawn from
    ``scale * N(0, 1)`` on distinct, randomly chosen units of the previous layer; the rest are 0.

    Indices are drawn without replacement, so every unit has exactly 15 nonzeros (Martens' code
    draws with replacement; task-definitions.md). A layer with fewer than 15 inputs is dense.

    >>> w = sparse_init(784, 400, 1.0, torch.Generator().manual_seed(0))
    >>> sorted(set((w != 0).sum(0).tolist()))
    [15]
    """
    k = min(nonzeros, fan_in)
    # argsort of uniform noise gives a random subset per column without a Python loop.
    rows = torch.rand(fan_in, fan_out, generator=generator).argsort(dim=0)[:k]
    values = torch.randn(k, fan_out, generator=generator, dtype=torch.float64) * scale
    w = torch.zeros(fan_in, fan_out, dtype=torch.float64)
    w.scatter_(0, rows, values)
    return w


def sparse_init_tanh(
    fan_in: int, fan_out: int, scale: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """SI for tanh units: weights x0.25 and biases 0.5, to imitate logistic units (sec. 3.1)."""
    return 0.25 * sparse_init(fan_in, fan_out, scale, generator), torch.full((fan_out,), 0.5, dtype=torch.float64)


def esn_recurrent(n: int, spectral_radius: float, generator: torch.Generator) -> torch.Tensor:
    """ESN-style recurrent matrix (Table 4): 15 fan-in sparse N(0,1), rescaled so that the largest
    absolute eigenvalue equals ``spectral_radius`` (Jaeger & Haas 2004; sec. 4.1)."""
    w = sparse_init(n, n, 1.0, generator)
    radius = float(np.max(np.abs(np.linalg.eigvals(w.numpy()))))
    return w * (spectral_radius / radius)


def gaussian(fan_in: int, fan_out: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Dense ``scale * N(0, 1)`` (Table 4's input-to-hidden and hidden-to-output weights)."""
    return torch.randn(fan_in, fan_out, generator=generator, dtype=torch.float64) * scale


def glorot_uniform(fan_in: int, fan_out: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Glorot & Bengio (2010): U(-u, u) with u = scale * sqrt(6 / (fan_in + fan_out))."""
    bound = scale * (6.0 / (fan_in + fan_out)) ** 0.5
    return (torch.rand(fan_in, fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound


def orthogonal(fan_in: int, fan_out: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Saxe et al. (2013): a (semi-)orthogonal matrix times ``scale``, via torch.nn.init.orthogonal_."""
    w = torch.empty(fan_in, fan_out, dtype=torch.float64)
    torch.nn.init.orthogonal_(w, gain=scale, generator=generator)
    return w


def dense_init(kind: str, fan_in: int, fan_out: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """The autoencoders' alternatives to SI, by name."""
    makers = {"sparse": sparse_init, "gaussian": gaussian, "glorot": glorot_uniform, "orthogonal": orthogonal}
    return makers[kind](fan_in, fan_out, scale, generator)


def output_bias(training_outputs: np.ndarray) -> torch.Tensor:
    """Output bias = mean of the training outputs (Table 4), so the untrained net predicts the mean."""
    return torch.as_tensor(np.asarray(training_outputs, dtype=np.float64).mean(axis=0))
