"""Which state a trial ended in, and what each consumer is told about it: one rule for the results
DB, MLflow, Optuna and the progress display (docs/study-specs.md, "States and objectives").

A trial's last Tune result says whether training reached its last update (``final``) and how many
members diverged. From that:

- ``completed``: trained to the end, no member diverged;
- ``diverged``: at least one member's loss became NaN or inf (the trial may have stopped early);
- ``pruned``: a scheduler (ASHA) stopped it before its last update;
- ``failed``: the trial raised (after its retries).

A study's end state follows one rule too (``study_state``): in short, ``failed`` when not one of
its configurations succeeded, ``completed`` with the count of failed ones when some did.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

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


# How the reason of a study in which no configuration succeeded begins (the command line reads it:
# `study resume` reruns no failed configuration, so it is no way on for such a study).
ALL_FAILED = "every configuration failed"


def study_state(ended: Mapping[str, int], planned: int, name: str, failure: tuple[str, str] | None = None,
                store_problem: str | None = None, first_error: str | None = None) -> tuple[str, str | None]:
    """The state a study's run (or resume) ends in, and its reason: the one rule for both.

    ``ended`` counts its configurations by terminal state, ``planned`` is how many it has;
    ``failure`` is what stopped the driver (("interrupted" | "failed", reason)), ``store_problem``
    a store that stayed unreachable, ``first_error`` one failed configuration's error.

    - a store left unreachable: ``failed`` (its writes wait in the journal; resume lands them);
    - the driver failed or was interrupted: that;
    - fewer configurations ended than planned: ``interrupted`` (resume goes on);
    - every configuration ended and none of them other than ``failed``: ``failed``, as a study
      without a single result has not completed;
    - otherwise ``completed``: a diverged, pruned or failed configuration is a result of the
      search; failed ones are counted in the reason.
    """
    state, reason = failure or (None, None)
    if store_problem:
        return "failed", "; ".join(r for r in (reason, store_problem) if r) + f"; `study resume {name}` lands them once it is back"
    if state is not None:
        return state, reason
    done = sum(ended.get(s, 0) for s in TERMINAL)
    if done < planned:
        return "interrupted", f"stopped with {done} of {planned} trials finished; `study resume {name}` continues"
    failed = ended.get("failed", 0)
    error = f"; the first error: {first_error}" if first_error else ""
    if failed == done:
        return "failed", (
            f"{ALL_FAILED} ({failed} of {planned}){error}; `study resume` reruns no failed configuration: "
            f"fix the cause and run the spec again (`study delete {name}` first, or under another name)"
        )
    if failed:
        return "completed", f"{failed} of {planned} configurations failed (`study results {name}` shows which){error}"
    return "completed", None


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
