"""Which state a trial ended in, and what each consumer is told about it: one rule for the results
DB, MLflow, Optuna and the progress display (docs/study-specs.md, "States and objectives").

A trial's last Tune result says whether training reached its last update (``final``) and how many
members diverged. From that:

- ``completed``: trained to the end, no member diverged;
- ``diverged``: at least one member's loss became NaN or inf (the trial may have stopped early);
- ``pruned``: a scheduler (ASHA) stopped it before its last update;
- ``failed``: the trial raised (after its retries).
"""

from __future__ import annotations

import math
from typing import Any

TERMINAL = ("completed", "diverged", "failed", "pruned")

# What a scheduler sees for a diverged trial. Optuna and the results DB keep +-inf ("as bad as it
# gets"); ASHA takes percentiles of its rung values, and a rung of infinities has a NaN or -inf
# cutoff that stops nothing, so schedulers get a finite value worse than any real error instead.
SCHEDULER_WORST = 1e30


def trial_state(last_result: dict[str, Any] | None, errored: bool = False) -> str:
    """The terminal state of a trial from its last result (None: it never reported)."""
    if errored:
        return "failed"
    last = last_result or {}
    if last.get("members_diverged"):
        return "diverged"
    if not last.get("final"):
        return "pruned"
    return "completed"


def objectives(value: float | None, diverged: int, mode: str) -> tuple[float, float]:
    """(searcher objective, scheduler objective) for one report's metric ``value``.

    A diverged member, or a metric that is missing or not finite, makes the configuration the
    worst possible: +inf (mode min) / -inf (max) for Optuna, +-SCHEDULER_WORST for schedulers.
    """
    sign = 1.0 if mode == "min" else -1.0
    if diverged or value is None or not math.isfinite(value):
        return sign * math.inf, sign * SCHEDULER_WORST
    return value, value


def better(a: float, b: float | None, mode: str) -> bool:
    """Whether ``a`` beats ``b`` (None: nothing yet) under the study's mode."""
    return b is None or (a < b if mode == "min" else a > b)


MLFLOW_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}
