"""The search: Optuna distributions and sampler from a spec, and the Ray Tune searcher that drives
them with the Optuna study stored in the results database.

``StudyOptunaSearch`` is Ray's ``OptunaSearch`` with what a resumable, recorded study needs and
Ray's class does not do (each is a method override, documented where it is):

- Optuna is told the state the study's own rule gives (study/outcome.py): a trial ASHA stopped is
  PRUNED with its last intermediate value, a diverged one COMPLETE with +-inf and a ``state`` user
  attribute, a crashed one FAIL. Ray tells every stopped trial COMPLETE with its partial value.
- Nothing secret is pickled: Tune writes the searcher into its experiment directory (tuner.pkl,
  searcher state), so the storage (whose URL may hold a password) is dropped on pickling and
  re-attached from ``use_storage()`` by the process that restores it.
- After a hard kill, Tune's saved state can be older than Optuna's: Optuna trials asked but never
  known to Tune stay RUNNING ("orphans"), and trials Optuna already finished are resumed by Tune.
  On restore, orphans are handed to the next Tune trials that ask (so every configuration runs
  once, and a grid point is never handed out twice), and results for trials Optuna already
  finished are not told again (Optuna would raise UpdateFinishedTrialError).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from study import outcome
from study.journal import scrub
from study.trial import OPTUNA_NUMBER_KEY
from study.spec import (
    CategoricalParam,
    FloatParam,
    GridParam,
    IntParam,
    SpecError,
    StudySpec,
    optuna_sampler,
    param_name,
)

log = logging.getLogger(__name__)


# The results-DB URL of the study this process runs (with its password, never pickled).
_storage_url: str | None = None
# Ray trial id -> its MLflow run, from the driver's recorder (study/recorder.py), for the Optuna
# trial's user attributes (optuna-dashboard links a trial to its run with them).
_mlflow_runs: dict[str, str] = {}


def note_mlflow_run(trial_id: str, run_id: str) -> None:
    _mlflow_runs[trial_id] = run_id


def use_storage(url: str) -> None:
    """Sets the Optuna storage URL that searchers unpickled in this process re-attach to."""
    global _storage_url
    _storage_url = url


def distributions(spec: StudySpec) -> dict[str, Any]:
    import optuna.distributions as d

    out: dict[str, Any] = {}
    for field, p in spec.search.items():
        name = param_name(field, p)
        if isinstance(p, FloatParam):
            out[name] = d.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            out[name] = d.IntDistribution(p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, (CategoricalParam, GridParam)):
            out[name] = d.CategoricalDistribution(p.values)
    return out


def sampler(spec: StudySpec) -> Any:
    """The spec's Optuna sampler (validated there: a bad option is a SpecError naming it)."""
    if spec.sampler.type == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise SpecError("sampler.type='cmaes' needs the 'cmaes' package: pip install cmaes") from None
    return optuna_sampler(spec)


def optuna_storage(url: str) -> Any:
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def searcher(spec: StudySpec, results_db: str) -> "StudyOptunaSearch":
    use_storage(results_db)
    found = StudyOptunaSearch(
        space=distributions(spec),
        metric="objective",
        mode=spec.mode,
        sampler=sampler(spec),
        study_name=spec.name,
        storage=optuna_storage(results_db),
    )
    # The objective's name in optuna-dashboard: the study's metric, not "Objective 0"
    # (experimental in Optuna since 3.2, and warns so).
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        found._ot_study.set_metric_names([spec.metric])
    return found


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch for recorded, resumable studies (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._orphans: list[int] = []  # Optuna trial ids to hand to the next trials that ask

    # --- pickling: no storage, trials by id ----------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_storage"] = None
        state["_ot_study"] = None
        state["_ot_trials"] = {tid: t._trial_id for tid, t in self._ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_orphans", [])
        if _storage_url is not None:
            self._attach(_storage_url)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))

    def _attach(self, url: str) -> None:
        """Re-opens the Optuna study and its trials; finds the orphans (module docstring)."""
        import optuna
        from optuna.trial import Trial, TrialState

        self._storage = optuna_storage(url)
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())
        ids = {tid: (t if isinstance(t, int) else t._trial_id) for tid, t in self._ot_trials.items()}
        self._ot_trials = {tid: Trial(self._ot_study, i) for tid, i in ids.items()}
        held = set(ids.values())
        running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        self._orphans = [t._trial_id for t in sorted(running, key=lambda t: t.number) if t._trial_id not in held]
        if self._orphans:
            log.info("re-attaching %d Optuna trial(s) that Tune's saved state did not know", len(self._orphans))

    # --- asking ----------------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._orphans:
            from optuna.trial import Trial

            orphan = Trial(self._ot_study, self._orphans.pop(0))
            if set(orphan.params) == set(self._space):
                self._ot_trials[trial_id] = orphan
            else:  # killed in the middle of sampling: nothing of it ran
                tell(self._ot_study, orphan, state=_state("FAIL"))
        params = super().suggest(trial_id)
        if params is not None and trial_id in self._ot_trials:
            params[OPTUNA_NUMBER_KEY] = self._ot_trials[trial_id].number
        return params

    # --- telling ---------------------------------------------------------------------------------

    def _finished(self, trial_id: str) -> bool:
        """Whether Optuna already holds a final state for this Tune trial's Optuna trial."""
        ot = self._ot_trials.get(trial_id)
        if ot is None:
            return True
        return self._ot_study._storage.get_trial(ot._trial_id).state.is_finished()

    # Telling is best effort: with the storage (the results DB) down, a failed report or tell is
    # logged and the study goes on; at its end the runner tells Optuna what the results DB holds
    # for every configuration still RUNNING there (runner._settle_optuna).

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            if trial_id in self._completed_trials or self._finished(trial_id):
                return
            self._ot_trials[trial_id].report(result[self.metric], int(result["step"]))
        except Exception as exc:
            log.warning("Optuna report for trial %s failed: %s", trial_id, scrub(str(exc))[:300])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        self._completed_trials.add(trial_id)
        try:
            self._tell(trial_id, result, error)
        except Exception as exc:
            log.warning("Optuna tell for trial %s failed: %s", trial_id, scrub(str(exc))[:300])

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        if self._finished(trial_id):
            return
        ot = self._ot_trials[trial_id]
        state = outcome.trial_state(result, error)
        ot.set_user_attr("state", state)
        ot.set_user_attr("ray_trial_id", trial_id)
        if trial_id in _mlflow_runs:
            ot.set_user_attr("mlflow_run_id", _mlflow_runs[trial_id])
        reported = self._ot_study._storage.get_trial(ot._trial_id).intermediate_values
        if state == "pruned" and result is not None and int(result["step"]) not in reported:
            # Tune tells the result that made the scheduler stop the trial to on_trial_complete
            # alone: report it, so PRUNED takes it as the trial's value (Optuna's rule).
            ot.report(result[self.metric], int(result["step"]))
        if state in ("completed", "diverged") and result is not None:
            tell(self._ot_study, ot, float(result[self.metric]))
        else:
            tell(self._ot_study, ot, state=_state("PRUNED" if state == "pruned" else "FAIL"))

    def fail_orphans(self) -> int:
        """Fails the orphans no trial took (a finished study must leave nothing RUNNING)."""
        from optuna.trial import Trial

        n = 0
        while self._orphans:
            tell(self._ot_study, Trial(self._ot_study, self._orphans.pop(0)), state=_state("FAIL"))
            n += 1
        return n


def tell(study: Any, trial: Any, value: float | None = None, state: Any = None) -> None:
    """study.tell, where the state is stored whatever the sampler's after_trial does: GridSampler
    calls Study.stop() once the grid is exhausted, which raises outside Optuna's own optimize loop
    (Optuna has stored the trial's state by then, in a finally clause)."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]
