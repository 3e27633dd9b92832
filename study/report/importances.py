"""Optuna's parameter importances of a sampled search, and how far a reader can trust them.

fANOVA fits a random forest to (parameters -> objective): with few trials it attributes the
objective's variance to whichever parameter happened to vary with the noise, and still prints
numbers that sum to 1. The report therefore prints how many trials an importance rests on and a
caveat below ``MIN_TRIALS_PER_PARAMETER`` finite trials per searched parameter (at least
``MIN_TRIALS``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from study.run.optuna_study_analysis import finite_trials_study, importance_evaluator, param_importances

# A caveat below 10 finite trials per searched parameter, and below 20 in any case: the common
# rule of thumb for a regression forest's sample size, and what Optuna's TPE spends on its
# random start-up (10 trials) before it models anything.
MIN_TRIALS_PER_PARAMETER = 10
MIN_TRIALS = 20


def finite_optuna_study(study_name: str, results_db: str, spec: dict[str, Any]) -> tuple[Any | None, str | None]:
    """The study's Optuna trials (from the results DB) that completed with a finite objective, as
    an in-memory Optuna study; or (None, why there is nothing to analyse)."""
    sampler = spec.get("sampler") or {}
    sampler_type = sampler.get("type") if isinstance(sampler, dict) else sampler
    if sampler_type == "grid":
        return None, "skipped: a grid study (every point is run; importances need a sampled search)"
    if not spec.get("search"):
        return None, "skipped: nothing was searched"
    return finite_trials_study(results_db, study_name)


def importances(study_name: str, results_db: str, spec: dict[str, Any]) -> tuple[pd.DataFrame | None, str | None]:
    """optuna.importance.get_param_importances on the study's Optuna storage (in the results DB).

    Returns (table, None), or (None, why it was skipped): a grid (every point is run, there is
    nothing to attribute), fewer than 2 completed trials, or no searched parameter.
    """
    study, why = finite_optuna_study(study_name, results_db, spec)
    if study is None:
        return None, why
    try:
        # The evaluator the importance figure is drawn with (build.py), so the two agree.
        values = param_importances(study, importance_evaluator())
    except Exception as exc:  # noqa: BLE001 - e.g. a parameter that never varied
        return None, f"skipped: optuna could not compute importances ({type(exc).__name__}: {exc})"
    df = pd.DataFrame({"parameter": list(values), "importance": [float(v) for v in values.values()]})
    df.attrs["n_trials"] = len(study.trials)
    df.attrs["caveat"] = few_trials_caveat(len(study.trials), len(values))
    return df, None


def few_trials_caveat(n_trials: int, n_parameters: int) -> str | None:
    """'computed from 2 trials ...' where importances rest on too few trials to be trusted, else None."""
    needed = max(MIN_TRIALS, MIN_TRIALS_PER_PARAMETER * n_parameters)
    if n_trials >= needed:
        return None
    return (f"**computed from {n_trials} finite trial{'s' if n_trials != 1 else ''} only** (fewer than {needed}: "
            f"{MIN_TRIALS_PER_PARAMETER} per searched parameter, at least {MIN_TRIALS}); with so few trials fANOVA "
            "attributes noise to whichever parameter varied with it: read them as indicative, not as a ranking")


__all__ = ["MIN_TRIALS", "MIN_TRIALS_PER_PARAMETER", "few_trials_caveat", "finite_optuna_study", "importance_evaluator",
           "importances"]
