"""The search: Optuna distributions and sampler from a spec, and the Ray Tune searcher that hands
each Ray trial a population of configurations, with the Optuna study stored in the results database.

``PopulationSearch`` is a Ray Tune ``Searcher`` written for this service rather than Ray's
``OptunaSearch``, which asks Optuna for one configuration per Ray trial and tells one value back;
a fused study needs a member table per trial (study/plan/population.py) and a value per configuration:

- Asking: a population's configurations are asked one after the other (Optuna's ask-and-tell;
  the sampler settings for batches are in ``sampler``). A grid is walked by the searcher in an
  order that keeps one shape together, each point an enqueued Optuna trial; a suggestion of
  another shape than the population being filled waits for the next one.
- Telling: every configuration is told its own state by the study's rule (study/record/outcome.py): a
  configuration stopped early is PRUNED with its last intermediate value, a diverged one
  COMPLETE with +-inf and a ``state`` user attribute, a failed one FAIL. A configuration that
  ends before its population (stopped at a rung) is told at once.
- Nothing secret is pickled: Tune writes the searcher into its experiment directory, so the
  storage (whose URL may hold a password) is dropped on pickling and re-attached from
  ``use_storage()`` by the process that restores it.
- After a hard kill, the searcher's pickle in Tune's experiment directory is not the truth: Tune
  saves it every ten seconds or so (and a kill can fall between Tune's trial list and the
  searcher's file), while Optuna's storage is written at every ask and tell. So a restored
  searcher keeps only its settings and rebuilds what it knows from two sources: the populations
  of the trials Tune restores (``use_restored_populations``, from the experiment state Tune resumes
  from) and the Optuna storage. An Optuna trial in one of those populations is trained there;
  one asked but in none of them (still RUNNING: an "orphan") is handed to the next population
  with its own values (a grid point's when the walk reaches that point), never asked again; one
  that finished counts as done; configurations Optuna already finished are not told again
  (Optuna would raise UpdateFinishedTrialError).
- The sampler is state too: its random generator after the newest ask is kept in the Optuna
  storage with that ask (``SAMPLER_ATTR``), and a restored searcher continues from it. The
  pickle's older generator would draw again the values it had drawn for the trials asked since,
  and a resumed study would train those values twice (issue 18). A kill between an ask and
  the write of its sampler leaves no state that has not drawn them: the sampler is then reseeded
  (``reseed_rng``), so the study stays without duplicates, though no longer seed-reproducible.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.search import Searcher

from study.record import outcome
from study.plan import population
from study.record.journal import scrub
from study.spec.model import (
    CategoricalParam,
    FloatParam,
    GridParam,
    IntParam,
    StudySpec,
    grid_points,
    param_name,
)
from study.run.optuna_study import optuna_sampler

log = logging.getLogger(__name__)


# The results-DB URL of the study this process runs (with its password, never pickled).
_storage_url: str | None = None
# Ray trial id -> its MLflow run, from the driver's recorder (study/record/recorder.py), for the Optuna
# trial's user attributes (optuna-dashboard links a trial to its run with them).
_mlflow_runs: dict[str, str] = {}
# Ray trial id -> member table of every trial Tune restores, from the experiment state Tune
# resumes from (set by `study resume`; None in a new study): what a restored searcher takes as
# the populations that exist (module docstring).
_restored: dict[str, list[dict[str, Any]]] | None = None
# The Optuna study system attribute holding the sampler (pickled, base64) right after the newest
# ask: {"after": that trial's number, "state": ...}. Optuna's own CmaEsSampler keeps its optimizer
# in the storage the same way. About 11 KB (two random generators); GPSampler's grows by about
# 1 KB per finished trial (its cache of fitted GPs).
SAMPLER_ATTR = "momentum_study:sampler"


def note_mlflow_run(trial_id: str, run_id: str) -> None:
    _mlflow_runs[trial_id] = run_id


def use_storage(url: str) -> None:
    """Sets the Optuna storage URL that searchers unpickled in this process re-attach to."""
    global _storage_url
    _storage_url = url


def use_restored_populations(tables: dict[str, list[dict[str, Any]]] | None) -> None:
    """The member tables of the Ray trials Tune is about to restore (None: a new study)."""
    global _restored
    _restored = None if tables is None else {tid: list(t) for tid, t in tables.items()}


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


def sampler(spec: StudySpec, per_trial: int = 1) -> Any:
    """The spec's Optuna sampler (validated there: a bad option is a SpecError naming it).

    Asked for ``per_trial`` configurations at once, TPE gets ``constant_liar`` (running trials count
    as bad, so one batch spreads out instead of repeating one point) and CMA-ES a ``popsize`` of the
    batch, unless the spec's sampler options set them."""
    extra: dict[str, Any] = {}
    if per_trial > 1 and spec.sampler.type == "tpe" and "constant_liar" not in spec.sampler.options:
        extra["constant_liar"] = True
    if per_trial > 1 and spec.sampler.type == "cmaes" and "popsize" not in spec.sampler.options:
        extra["popsize"] = max(per_trial, 2)
    return optuna_sampler(spec, extra)


def optuna_storage(url: str) -> Any:
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def searcher(spec: StudySpec, results_db: str, per_trial: int) -> "PopulationSearch":
    """The study's searcher, its Optuna study created in the results database."""
    use_storage(results_db)
    use_restored_populations(None)
    found = PopulationSearch(spec, per_trial, sampler(spec, per_trial))
    found.open(results_db)
    # The objective's name in optuna-dashboard: the study's metric, not "Objective 0"
    # (experimental in Optuna since 3.2, and warns so).
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        found._ot_study.set_metric_names([spec.metric])
    return found


class PopulationSearch(Searcher):
    """The searcher of every study: hands each Ray trial a member table (module docstring)."""

    def __init__(self, spec: StudySpec, per_trial: int, optuna_sampler_: Any) -> None:
        super().__init__(metric="objective", mode=spec.mode)
        self._spec_dict = spec.model_dump(mode="json")
        self._study_name = spec.name
        self._space = distributions(spec)
        self._sampler = optuna_sampler_
        self._per_trial = per_trial
        self._total = spec.trials
        # A grid is walked in an order that keeps configurations of one shape together.
        self._grid: list[dict[str, Any]] | None = None
        if spec.sampler.type == "grid":
            points = [{param_name(f, spec.search[f]): v for f, v in p.items()} for p in grid_points(spec)]
            order = sorted(range(len(points)), key=lambda i: population.shape_key(spec, points[i]))
            self._grid = [points[i] for i in order]
        self._next_grid = 0
        self._handed = 0  # configurations asked of Optuna (orphans included: they were asked)
        self._populations: dict[str, list[dict[str, Any]]] = {}  # Ray trial id -> member table
        self._ids: dict[str, int] = {}  # configuration id -> Optuna trial id (storage's)
        self._held: list[int] = []  # asked, but of another shape than the population being filled
        self._told: set[str] = set()
        self._orphans: list[int] = []
        self._grid_orphans: dict[str, int] = {}
        self._grid_done: set[str] = set()
        self._storage: Any = None
        self._ot_study: Any = None
        self._spec: StudySpec | None = spec

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True  # the space, metric and mode come from the study spec

    # --- pickling: no storage ------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_storage"] = state["_ot_study"] = state["_spec"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
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

    def _study_spec(self) -> StudySpec:
        if self._spec is None:
            self._spec = StudySpec.model_validate(self._spec_dict)
        return self._spec

    def open(self, url: str) -> None:
        """Creates (or opens) the Optuna study in the results database."""
        import optuna

        self._storage = optuna_storage(url)
        self._ot_study = optuna.create_study(study_name=self._study_name, storage=self._storage,
                                            sampler=self._sampler, direction="minimize" if self._mode == "min" else "maximize",
                                            load_if_exists=True)

    def _attach(self, url: str) -> None:
        """Re-opens the Optuna study after a restore, and rebuilds what the searcher knows from the
        populations Tune restores and from Optuna's storage, not from its own pickle (module
        docstring)."""
        import optuna
        from optuna.trial import TrialState

        self._storage = optuna_storage(url)
        self._ot_study = optuna.load_study(study_name=self._study_name, storage=self._storage, sampler=self._sampler,
                                           pruner=optuna.pruners.NopPruner())
        study = self._ot_study
        trials = study.get_trials(deepcopy=False)
        tables = _restored if _restored is not None else self._populations
        self._populations = {tid: list(table) for tid, table in tables.items() if table}
        by_number = {t.number: t._trial_id for t in trials}
        self._ids = {c["config_id"]: by_number[c["number"]] for table in self._populations.values() for c in table
                     if c["number"] in by_number}
        known = set(self._ids.values())
        self._held, self._orphans, self._grid_orphans, self._grid_done = [], [], {}, set()
        # A grid is walked again from its start: every point with a trial is done or an orphan, and
        # one enqueued but never asked (WAITING) is asked when the walk reaches it (_ask_point).
        self._next_grid = 0
        asked, newest = 0, None
        for t in trials:
            if t.user_attrs.get("abandoned"):
                continue
            complete = set(t.params) == set(self._space)
            if t.state == TrialState.RUNNING and not complete and self._grid is not None and "fixed_params" in t.system_attrs:
                # A grid point's trial whose values were being written when the driver died:
                # they are known (the enqueued point), so it is finished being asked.
                trial = optuna.trial.Trial(study, t._trial_id)
                for name, dist in self._space.items():
                    trial.suggest_categorical(name, dist.choices)
                t, complete = _frozen(study, t._trial_id), True
            if not complete:
                if t.state == TrialState.RUNNING:  # killed in the middle of sampling: nothing of it ran
                    optuna.trial.Trial(study, t._trial_id).set_user_attr("abandoned", True)
                    tell(study, t.number, state=TrialState.FAIL)
                continue
            asked += 1
            newest = t.number if newest is None else max(newest, t.number)
            if t._trial_id in known or t.state != TrialState.RUNNING:
                # Trained by a population Tune resumes, or finished in one Tune's state lost: done.
                if self._grid is not None:
                    self._grid_done.add(_key(t.params))
            elif self._grid is not None:
                self._grid_orphans[_key(t.params)] = t._trial_id
            else:
                self._orphans.append(t._trial_id)
        self._handed = asked
        self._resume_sampler(newest)
        if self._orphans or self._grid_orphans:
            log.info("re-attaching %d Optuna trial(s) that Tune's saved state did not know",
                     len(self._orphans) + len(self._grid_orphans))

    def _resume_sampler(self, newest: int | None) -> None:
        """The sampler as it was after the newest ask that Optuna holds (module docstring)."""
        if newest is None or self._grid is not None:
            return  # nothing drawn yet; a grid's points are enqueued, nothing is drawn
        import base64
        import pickle

        saved = self._storage.get_study_system_attrs(self._ot_study._study_id).get(SAMPLER_ATTR)
        if saved and saved["after"] >= newest:
            self._sampler = pickle.loads(base64.b64decode(saved["state"]))
        else:
            log.warning("the sampler's state after Optuna trial %d was not saved (a kill right after that ask, or "
                        "a study started by an older version): reseeded, so the rest of the study is not "
                        "reproducible from its seed", newest)
            self._sampler.reseed_rng()
        self._ot_study.sampler = self._sampler

    def _keep_sampler(self, number: int) -> None:
        import base64
        import pickle

        state = {"after": number, "state": base64.b64encode(pickle.dumps(self._sampler)).decode("ascii")}
        self._storage.set_study_system_attr(self._ot_study._study_id, SAMPLER_ATTR, state)

    # --- asking ----------------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self._populations:
            return {population.POPULATION_KEY: self._populations[trial_id]}
        spec = self._study_spec()
        table: list[dict[str, Any]] = []
        shape = None
        while len(table) < self._per_trial:
            t = self._take()
            if t is None:
                break
            key = population.shape_key(spec, t.params)
            if shape is not None and key != shape:
                self._held.insert(0, t._trial_id)  # the first of the next population
                break
            shape = key
            cid = population.config_id(trial_id, len(table))
            self._ids[cid] = t._trial_id
            table.append(population.Configuration(cid, t.number, dict(t.params)).to_dict())
        if not table:
            return Searcher.FINISHED
        self._populations[trial_id] = table
        return {population.POPULATION_KEY: table}

    def _take(self) -> Any:
        """The next configuration's Optuna trial, or None when every configuration was handed out."""
        study = self._ot_study
        if self._held:
            return _frozen(study, self._held.pop(0))
        if self._grid is not None:
            while self._next_grid < len(self._grid):
                point = self._grid[self._next_grid]
                self._next_grid += 1
                key = _key(point)
                if key in self._grid_done:
                    continue
                if key in self._grid_orphans:
                    return _frozen(study, self._grid_orphans.pop(key))
                return self._ask_point(point, key)
            return None
        if self._orphans:
            return _frozen(study, self._orphans.pop(0))
        if self._handed >= self._total:
            return None
        self._handed += 1
        trial = study.ask(fixed_distributions=self._space)
        self._keep_sampler(trial.number)
        return _frozen(study, trial._trial_id)

    def _ask_point(self, point: dict[str, Any], key: str) -> Any:
        """The grid point's Optuna trial: enqueued, then asked. ``ask`` takes the oldest enqueued
        trial; one that a killed driver enqueued for a later point (the walk restarts from Tune's
        older saved state) becomes that point's orphan, and the point's own is asked for again."""
        from optuna.trial import TrialState

        study = self._ot_study
        waiting = [t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
        if not any(w is not None and _key(w) == key for w in waiting):
            study.enqueue_trial(point)
        while True:
            trial = study.ask(fixed_distributions=self._space)
            got = _key(trial.params)
            if got == key:
                return _frozen(study, trial._trial_id)
            self._grid_orphans[got] = trial._trial_id

    # --- telling ---------------------------------------------------------------------------------

    def _finished(self, cid: str) -> bool:
        """Whether Optuna already holds a final state for this configuration."""
        ot = self._ids.get(cid)
        return ot is None or self._ot_study._storage.get_trial(ot).state.is_finished()

    # Telling is best effort: with the storage (the results DB) down, a failed report or tell is
    # logged and the study goes on; at its end the runner tells Optuna what the results DB holds
    # for every configuration still RUNNING there (runner._settle_optuna).

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        for c in population.reported(result).values():
            cid = c["config_id"]
            try:
                if cid in self._told or self._finished(cid):
                    continue
                if c.get("ended"):
                    self._told.add(cid)
                    self._tell(trial_id, cid, c, False)
                else:
                    self._trial(cid).report(c["objective"], int(c["step"]))
            except Exception as exc:
                log.warning("Optuna report for configuration %s failed: %s", cid, scrub(str(exc))[:300])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        last = population.reported(result)
        for entry in self._populations.get(trial_id, []):
            cid = entry["config_id"]
            if cid in self._told:
                continue
            self._told.add(cid)
            try:
                if not self._finished(cid):
                    self._tell(trial_id, cid, last.get(cid), error)
            except Exception as exc:
                log.warning("Optuna tell for configuration %s failed: %s", cid, scrub(str(exc))[:300])

    def _trial(self, cid: str) -> Any:
        from optuna.trial import Trial

        return Trial(self._ot_study, self._ids[cid])

    def _tell(self, trial_id: str, cid: str, result: dict | None, error: bool) -> None:
        ot = self._trial(cid)
        state = outcome.trial_state(result, error)
        ot.set_user_attr("state", state)
        ot.set_user_attr("ray_trial_id", trial_id)
        ot.set_user_attr("trial_id", cid)
        if cid in _mlflow_runs:
            ot.set_user_attr("mlflow_run_id", _mlflow_runs[cid])
        reported = self._ot_study._storage.get_trial(ot._trial_id).intermediate_values
        if state == "pruned" and result is not None and int(result["step"]) not in reported:
            # The value at which the configuration stopped: PRUNED takes it as the trial's value.
            ot.report(result["objective"], int(result["step"]))
        if state in ("completed", "diverged") and result is not None:
            tell(self._ot_study, ot, float(result["objective"]))
        else:
            tell(self._ot_study, ot, state=_state("PRUNED" if state == "pruned" else "FAIL"))


def _key(params: dict[str, Any]) -> str:
    import json

    return json.dumps(params, sort_keys=True, default=str)


def _frozen(study: Any, trial_id: int) -> Any:
    return study._storage.get_trial(trial_id)


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
