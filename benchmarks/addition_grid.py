"""The reduced Table 5 addition grid that the study benchmarks run (study_throughput.py,
gpu_benchmark.py): optimizer x momentum x learning rate x seed, 2 x 4 x 4 x 2 = 64 runs.

The paper's learning rates {1e-3 .. 1e-6} learn nothing in a few hundred updates, hence these;
the momentum applies from the first update (``momentum_schedule: constant``).
"""

from __future__ import annotations

import itertools

OPTIMIZERS = ["cm", "nag"]
MOMENTA = [0.0, 0.9, 0.98, 0.995]
LRS = [3e-3, 1e-3, 3e-4, 1e-4]
SEEDS = [0, 1]


def configurations() -> list[dict]:
    """The 64 runs, each {optimizer, mu_max, lr, seed}, seeds innermost."""
    return [
        {"optimizer": o, "mu_max": m, "lr": lr, "seed": s}
        for o, m, lr, s in itertools.product(OPTIMIZERS, MOMENTA, LRS, SEEDS)
    ]
