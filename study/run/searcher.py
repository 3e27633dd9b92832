"""The Ray Tune searcher that hands each Ray trial a population of configurations, asked of the
Optuna study stored in the results database (reached through study/run/optuna_study.py).

``PopulationSearch`` is a Ray Tune ``Searcher`` written for this service rather than Ray's
``OptunaSearch``, which asks Optuna for one configuration per Ray trial and tells one value back;
a fused study needs a member table per trial (study/plan/population.py) and a value per configuration:

- Asking: a population's configurations are asked one after the other (Optuna's ask-and-tell;
  the sampler settings for batches are in ``optuna_study.batch_sampler``). A grid is walked by the searcher in an
  order that keeps one shape together, each point an enqueued Optuna trial; a suggestion of
  another shape than the population being filled waits for the next one.
- Telling is not the searcher's: the study's Tune callback (study/run/feed.py) tells Optuna each
  configuration's state by the study's rule (study/run/optuna_reports.py, ``optuna_study.tell_ended``):
  a configuration stopped early is PRUNED with its last intermediate value, a diverged one
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
- Pacing: a sampler that learns from results (TPE, GP, CMA-ES) is asked only as many new
  configurations as study/plan/pacing.py allows: the start-up suggestions freely, then no more
  without a result than its window, each population at most its share of them (the trials at
  once share them, so every trial slot gets a population from the start). A population takes what is allowed when Tune asks for it
  (possibly fewer than ``per_trial``); when nothing is allowed, ``suggest`` returns None and Tune
  asks again later. Only configurations of populations still live in Tune count as waiting for a
  result, so a study with nothing running never waits.
- The sampler is state too: its random generator after the newest ask is kept in the Optuna
  storage with that ask (``optuna_study.SAMPLER_ATTR``), and a restored searcher continues from it. The
  pickle's older generator would draw again the values it had drawn for the trials asked since,
  and a resumed study would train those values twice (issue 18). A kill between an ask and
  the write of its sampler leaves no state that has not drawn them: the sampler is then reseeded
  (``reseed_rng``), so the study stays without duplicates, though no longer seed-reproducible.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.search import Searcher

from study.plan import population
from study.record.outcome import CONFIGS_KEY
from study.spec.expand import grid_points, param_name
from study.spec.model import StudySpec
from study.run.optuna_study import OptunaStudy, distributions, is_running, study_pacing

log = logging.getLogger(__name__)


# The results-DB URL of the study this process runs (with its password, never pickled).
_storage_url: str | None = None
# Ray trial id -> member table of every trial Tune restores, from the experiment state Tune
# resumes from (set by `study resume`; None in a new study): what a restored searcher takes as
# the populations that exist (module docstring).
_restored: dict[str, list[dict[str, Any]]] | None = None


def use_storage(url: str) -> None:
    """Sets the Optuna storage URL that searchers unpickled in this process re-attach to."""
    global _storage_url
    _storage_url = url


def use_restored_populations(tables: dict[str, list[dict[str, Any]]] | None) -> None:
    """The member tables of the Ray trials Tune is about to restore (None: a new study)."""
    global _restored
    _restored = None if tables is None else {tid: list(t) for tid, t in tables.items()}


def searcher(spec: StudySpec, results_db: str, per_trial: int, sampler: Any, slots: int = 1) -> "PopulationSearch":
    """The study's searcher, its Optuna study created in the results database; ``sampler`` is the
    run's one (optuna_study.batch_sampler for ``per_trial``); ``slots`` trials run at once (the
    plan's), which share a learning sampler's pacing."""
    use_storage(results_db)
    use_restored_populations(None)
    found = PopulationSearch(spec, per_trial, sampler, study_pacing(spec, per_trial, sampler, slots))
    found.open(results_db)
    return found


class PopulationSearch(Searcher):
    """The searcher of every study: hands each Ray trial a member table (module docstring)."""

    def __init__(self, spec: StudySpec, per_trial: int, sampler: Any, pace: Any = None) -> None:
        super().__init__(metric="objective", mode=spec.mode)
        self._spec_dict = spec.model_dump(mode="json")
        self._study_name = spec.name
        self._space = distributions(spec)
        self._sampler = sampler
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
        self._orphans: list[int] = []
        self._grid_orphans: dict[str, int] = {}
        self._grid_done: set[str] = set()
        self._optuna: OptunaStudy | None = None
        self._spec: StudySpec | None = spec
        # A sampler that learns from results is asked in rounds (study/plan/pacing.py); None: freely.
        self._pace = pace
        # Populations that may still bring results: handed out by this searcher, or reporting
        # (a restored one counts once it reports), and not yet completed in Tune.
        self._live: set[str] = set()
        self._waiting = False

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True  # the space, metric and mode come from the study spec

    # --- pickling: no storage ------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_optuna"] = state["_spec"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_pace": None, "_live": set(), "_waiting": False, **state})  # older pickles lack them
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
        self._optuna = OptunaStudy.create(url, self._study_name, self._sampler, self._mode, self._spec_dict["metric"])

    def _attach(self, url: str) -> None:
        """Re-opens the Optuna study after a restore, and rebuilds what the searcher knows from the
        populations Tune restores and from Optuna's storage, not from its own pickle (module
        docstring)."""
        study = self._optuna = OptunaStudy.load(url, self._study_name, self._sampler)
        trials = study.trials()
        tables = _restored if _restored is not None else self._populations
        self._populations = {tid: list(table) for tid, table in tables.items() if table}
        by_number = {t.number: t._trial_id for t in trials}
        self._ids = {c["config_id"]: by_number[c["number"]] for table in self._populations.values() for c in table
                     if c["number"] in by_number}
        known = set(self._ids.values())
        self._held, self._orphans, self._grid_orphans, self._grid_done = [], [], {}, set()
        self._live, self._waiting = set(), False  # Tune's restored trials count once they report
        # A grid is walked again from its start: every point with a trial is done or an orphan, and
        # one enqueued but never asked (WAITING) is asked when the walk reaches it (_ask_point).
        self._next_grid = 0
        asked, newest = 0, None
        for t in trials:
            if t.user_attrs.get("abandoned"):
                continue
            complete = set(t.params) == set(self._space)
            if is_running(t) and not complete and self._grid is not None and "fixed_params" in t.system_attrs:
                # A grid point's trial whose values were being written when the driver died:
                # they are known (the enqueued point), so it is finished being asked.
                t, complete = study.complete_point(t._trial_id, self._space), True
            if not complete:
                if is_running(t):  # killed in the middle of sampling: nothing of it ran
                    study.abandon(t._trial_id)
                continue
            asked += 1
            newest = t.number if newest is None else max(newest, t.number)
            if t._trial_id in known or not is_running(t):
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
        assert self._optuna is not None
        saved = self._optuna.saved_sampler(newest)
        if saved is not None:
            self._sampler = saved
        else:
            log.warning("the sampler's state after Optuna trial %d was not saved (a kill right after that ask, or "
                        "a study started by an older version): reseeded, so the rest of the study is not "
                        "reproducible from its seed", newest)
            self._sampler.reseed_rng()
        self._optuna.sampler = self._sampler

    # --- asking ----------------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self._populations:
            return {population.POPULATION_KEY: self._populations[trial_id]}
        spec = self._study_spec()
        table: list[dict[str, Any]] = []
        shape = None
        allowed, first = self._allowed_now(), self._handed
        self._waiting = False
        while len(table) < self._per_trial:
            t = self._take(allowed is None or self._handed - first < allowed)
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
            # Waiting for results: Tune asks again later (a Searcher's None); else nothing is left.
            return None if self._waiting else Searcher.FINISHED
        self._populations[trial_id] = table
        self._live.add(trial_id)
        return {population.POPULATION_KEY: table}

    def _allowed_now(self) -> int | None:
        """New suggestions the pacing allows now (None: no limit). Pending are the configurations of
        the live populations that Optuna has no result of, and those asked but not handed out yet.
        With no population live, nothing pending can bring a result, so none counts and the study
        cannot wait forever (a configuration's result lost with a killed driver, say)."""
        pace = getattr(self, "_pace", None)  # None in a searcher pickled by an older version
        if pace is None:
            return None
        live = getattr(self, "_live", set())
        assert self._optuna is not None
        running = {t._trial_id for t in self._optuna.trials(running_only=True)}
        pending = sum(self._ids.get(c["config_id"]) in running
                      for tid in live for c in self._populations.get(tid, []))
        return pace.allowed(self._handed, pending + len(self._held) + len(self._orphans))

    def _take(self, may_ask: bool = True) -> Any:
        """The next configuration's Optuna trial, or None when every configuration was handed out,
        or when a new one would have to be asked and ``may_ask`` is false (then ``_waiting``)."""
        study = self._optuna
        assert study is not None
        if self._held:
            return study.trial(self._held.pop(0))
        if self._grid is not None:
            while self._next_grid < len(self._grid):
                point = self._grid[self._next_grid]
                self._next_grid += 1
                key = _key(point)
                if key in self._grid_done:
                    continue
                if key in self._grid_orphans:
                    return study.trial(self._grid_orphans.pop(key))
                return self._ask_point(point, key)
            return None
        if self._orphans:
            return study.trial(self._orphans.pop(0))
        if self._handed >= self._total:
            return None
        if not may_ask:
            self._waiting = True
            return None
        self._handed += 1
        trial = study.ask(self._space)
        study.keep_sampler(trial.number)
        return trial

    def _ask_point(self, point: dict[str, Any], key: str) -> Any:
        """The grid point's Optuna trial: enqueued, then asked. ``ask`` takes the oldest enqueued
        trial; one that a killed driver enqueued for a later point (the walk restarts from Tune's
        older saved state) becomes that point's orphan, and the point's own is asked for again."""
        study = self._optuna
        assert study is not None
        if not any(_key(w) == key for w in study.waiting_points()):
            study.enqueue(point)
        while True:
            trial = study.ask(self._space)
            got = _key(trial.params)
            if got == key:
                return trial
            self._grid_orphans[got] = trial._trial_id

    # --- telling ---------------------------------------------------------------------------------
    # Optuna hears of each configuration from the study's Tune callback (study/run/feed.py ->
    # study/run/optuna_reports.py), which reads every result once for the recorder and the progress
    # display too; Tune's own calls to its searcher tell nothing more.

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # A restored population reporting may still bring results; one whose configurations have
        # all ended brings none (Tune's ConcurrencyLimiter passes on_trial_complete on only for
        # the trials it started itself, not for all that a resumed study restores).
        configs = result.get(CONFIGS_KEY) or []
        if configs and all(c.get("ended") for c in configs):
            self._live.discard(trial_id)
        else:
            self._live.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        getattr(self, "_live", set()).discard(trial_id)


def _key(params: dict[str, Any]) -> str:
    import json

    return json.dumps(params, sort_keys=True, default=str)
