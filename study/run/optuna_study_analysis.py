"""What the reports take from Optuna, and nothing of Ray: a study's finished trials as an
in-memory Optuna study, fANOVA importances with a fixed seed, and Optuna's importance and slice
plots. The study in Optuna's storage and its sampler are study/run/optuna_study.py's; this is the
reading side of the same owner (study/report/importances.py and study/report/figures/search.py ask
it).
"""

from __future__ import annotations

import math
import warnings
from typing import Any


def finite_trials_study(url: str, name: str) -> tuple[Any | None, str | None]:
    """The study's Optuna trials (from the results DB) that completed with a finite objective, as
    an in-memory Optuna study; or (None, why there is nothing to analyse)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except Exception as exc:  # noqa: BLE001 - a study run without Optuna's tables
        return None, f"skipped: no Optuna study {name!r} in the results DB ({type(exc).__name__})"
    # Diverged trials report +inf to the searcher; the analysis is on the finite ones (they are
    # counted as failures in the tables instead).
    finite = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    if len(finite) < 2:
        return None, f"skipped: {len(finite)} completed trial(s) with a finite objective; importances need at least 2"
    copy = optuna.create_study(direction=study.direction)
    copy.add_trials(finite)
    return copy, None


def importance_evaluator() -> Any:
    """fANOVA with a fixed seed: importances.csv and Optuna's importance plot then agree."""
    import optuna

    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def param_importances(study: Any, evaluator: Any = None) -> dict[str, float]:
    """optuna.importance.get_param_importances, by default with ``importance_evaluator``."""
    import optuna

    found = optuna.importance.get_param_importances(study, evaluator=evaluator or importance_evaluator())
    return {k: float(v) for k, v in found.items()}


def plot_importances(study: Any, evaluator: Any = None) -> Any:
    """optuna.visualization.matplotlib.plot_param_importances, by default with
    ``importance_evaluator`` (the importances table's, so the figure and importances.csv agree)."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization.matplotlib import plot_param_importances

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return plot_param_importances(study, evaluator=evaluator or importance_evaluator())


def plot_slice(study: Any) -> Any:
    """optuna.visualization.matplotlib.plot_slice: the objective of every trial against each
    sampled parameter, under the sampler's names."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization.matplotlib import plot_slice as slice_plot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return slice_plot(study)
