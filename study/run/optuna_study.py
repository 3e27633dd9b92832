"""Optuna, and nothing of Ray: the spec's sampler (built and checked here), its distributions, the
Optuna study in the results database (``OptunaStudy``: open, ask, report, tell, the sampler's
state after each ask), and the one rule for telling it how a configuration ended. What the
reports take from Optuna (importances, plots) is its reading side, optuna_study_analysis.py.

Every other module of study/ reaches Optuna through these two, so which Optuna APIs the service
depends on can be read in two short pages.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

from pydantic import ConfigDict, ValidationError

from study.errors import SpecError
from study.spec.expand import param_name
from study.spec.model import StudySpec

SAMPLERS = {"tpe": "TPESampler", "cmaes": "CmaEsSampler", "gp": "GPSampler", "random": "RandomSampler",
            "qmc": "QMCSampler", "grid": "GridSampler"}


def optuna_sampler(spec: StudySpec, extra: dict[str, Any] | None = None) -> Any:
    """The spec's Optuna sampler, built with ``seed`` and ``options``; a misspelt or bad option is a
    SpecError naming ``sampler.options.<key>`` (so it is found at validation, not in the driver)."""
    import optuna.samplers

    kind, seed, opts = spec.sampler.type, spec.sampler.seed, dict(spec.sampler.options)
    cls = getattr(optuna.samplers, SAMPLERS[kind])
    extra = extra or {}
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("seed", "search_space")]
    for key in opts:
        if key in ("seed", "search_space"):
            raise SpecError(
                f"sampler.options.{key} is not allowed: "
                + ("give the seed as sampler.seed" if key == "seed" else "the grid comes from search")
            )
        if key not in allowed:
            raise SpecError(
                f"sampler.options.{key}={opts[key]!r} is not allowed: {cls.__name__} has no option {key!r}; "
                f"allowed: {', '.join(allowed) or '(none)'}"
            )
        opts[key] = _checked_option(cls, key, opts[key])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning for some samplers and options
            if kind == "grid":
                grid = {param_name(f, p): list(p.values) for f, p in spec.search.items()}  # type: ignore[union-attr]
                return cls(grid, seed=seed, **opts)
            return cls(seed=seed, **opts, **extra)
    except (TypeError, ValueError, AttributeError) as exc:
        raise SpecError(
            f"sampler={{type: {kind}, seed: {seed!r}, options: {opts!r}}} is not allowed: {cls.__name__}: {exc}"
        ) from None


def _checked_option(cls: type, key: str, value: Any) -> Any:
    """``value`` checked against the type the sampler's constructor declares for ``key`` (Optuna
    accepts e.g. n_startup_trials='ten' at construction and fails only when it samples, in the
    driver). An annotation that cannot be resolved here (a type imported only for type checkers)
    is not checked."""
    import collections.abc
    import sys
    import typing

    from pydantic import TypeAdapter

    bad = _non_finite(value)
    if bad is not None:
        # pydantic's float takes inf and nan; no sampler setting means them.
        raise SpecError(f"sampler.options.{key}={value!r} is not allowed: {bad!r} is not a finite number")
    annotation = inspect.signature(cls).parameters[key].annotation
    if isinstance(annotation, str):  # Optuna's modules use postponed annotations
        names = {**vars(typing), **vars(collections.abc), **vars(sys.modules[cls.__module__])}
        try:
            annotation = eval(annotation, names)  # noqa: S307 - a library's own annotation, not input
        except Exception:
            return value
    if annotation is inspect.Parameter.empty:
        return value
    try:
        adapter = TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # a type pydantic cannot describe: left to the sampler
        return value
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        wanted = getattr(annotation, "__name__", None) or str(annotation).replace("collections.abc.", "")
        raise SpecError(
            f"sampler.options.{key}={value!r} is not allowed: {cls.__name__} takes {key} as {wanted} "
            f"({exc.errors()[0]['msg'].lower()})"
        ) from None


def _non_finite(value: Any) -> float | None:
    """The first inf or nan in a plain value (lists and mappings searched), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for v in items:
        found = _non_finite(v)
        if found is not None:
            return found
    return None


def batch_sampler(spec: StudySpec, per_trial: int = 1) -> Any:
    """The spec's sampler for a run that asks ``per_trial`` configurations at once: TPE gets
    ``constant_liar`` (running trials count as bad, so one batch spreads out instead of repeating
    one point) and CMA-ES a ``popsize`` of the batch, unless the spec's sampler options set them.
    A run builds it once and hands it to its searcher."""
    extra: dict[str, Any] = {}
    if per_trial > 1 and spec.sampler.type == "tpe" and "constant_liar" not in spec.sampler.options:
        extra["constant_liar"] = True
    if per_trial > 1 and spec.sampler.type == "cmaes" and "popsize" not in spec.sampler.options:
        extra["popsize"] = max(per_trial, 2)
    return optuna_sampler(spec, extra)


def study_pacing(spec: StudySpec, per_trial: int = 1, sampler: Any = None, slots: int = 1) -> Any:
    """The pacing of the spec's sampler (study/plan/pacing.py) for ``slots`` trials at once, read
    from the sampler a run builds (``batch_sampler``): TPE's and GP's ``n_startup_trials``,
    CMA-ES's ``popsize`` (when unset, the cmaes package's default 4 + floor(3 ln n) over the n
    numerical parameters it searches)."""
    from study.plan.pacing import pacing

    sampler = sampler if sampler is not None else batch_sampler(spec, per_trial)
    generation = None
    if spec.sampler.type == "cmaes":
        numerical = sum(not hasattr(d, "choices") for d in distributions(spec).values())
        generation = getattr(sampler, "_popsize", None) or 4 + math.floor(3 * math.log(max(1, numerical)))
    return pacing(spec.sampler.type, spec.trials, int(getattr(sampler, "_n_startup_trials", 0) or 0), generation,
                  slots)


def distributions(spec: StudySpec) -> dict[str, Any]:
    """The spec's search as Optuna distributions, under the sampler's parameter names."""
    import optuna.distributions as d

    from study.spec.params import CategoricalParam, FloatParam, GridParam, IntParam

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


# --- the study in Optuna's storage (the results database) ----------------------------------------

# The Optuna study system attribute holding the sampler (pickled, base64) right after the newest
# ask: {"after": that trial's number, "state": ...}. Optuna's own CmaEsSampler keeps its optimizer
# in the storage the same way. About 11 KB (two random generators); GPSampler's grows by about
# 1 KB per finished trial (its cache of fitted GPs).
SAMPLER_ATTR = "momentum_study:sampler"


def storage(url: str) -> Any:
    """Optuna's RDBStorage on the results database; SQLite waits for a writer as the results
    module's own engine does."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def delete_study(url: str, name: str) -> None:
    """Removes the study's Optuna study from the results database, if there is one."""
    import optuna

    try:
        optuna.delete_study(study_name=name, storage=url)
    except KeyError:
        pass


def is_running(trial: Any) -> bool:
    """Whether a frozen trial was asked and not told (WAITING, an enqueued point never asked, is not)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.RUNNING


class OptunaStudy:
    """A study's Optuna study, with the few operations the service does on it. Trials are named by
    their id in the storage (``FrozenTrial._trial_id``), which the searcher keeps per configuration."""

    def __init__(self, study: Any) -> None:
        self.study = study
        self._reported: dict[int, set[int]] = {}  # per trial, the steps with an intermediate value

    @classmethod
    def create(cls, url: str, name: str, sampler: Any, mode: str, metric: str) -> "OptunaStudy":
        """Creates (or opens) the study, its objective named after the study's metric."""
        import optuna
        from optuna.exceptions import ExperimentalWarning

        study = optuna.create_study(study_name=name, storage=storage(url), sampler=sampler,
                                    direction="minimize" if mode == "min" else "maximize", load_if_exists=True)
        # The objective's name in optuna-dashboard: the study's metric, not "Objective 0"
        # (experimental in Optuna since 3.2, and warns so).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names([metric])
        return cls(study)

    @classmethod
    def load(cls, url: str, name: str, sampler: Any = None) -> "OptunaStudy":
        """Opens an existing study (Optuna's default sampler where none is given: a study that is
        only told, not asked). Never prunes by itself: the runner's rungs do."""
        import optuna

        return cls(optuna.load_study(study_name=name, storage=storage(url), sampler=sampler,
                                     pruner=optuna.pruners.NopPruner()))

    # --- reading ---

    def trials(self, running_only: bool = False) -> list[Any]:
        from optuna.trial import TrialState

        states = (TrialState.RUNNING,) if running_only else None
        return self.study.get_trials(deepcopy=False, states=states)

    def trial(self, ot_id: int) -> Any:
        """The trial as the storage holds it now (a FrozenTrial)."""
        return self.study._storage.get_trial(ot_id)

    def finished(self, ot_id: int) -> bool:
        return self.trial(ot_id).state.is_finished()

    def waiting_points(self) -> list[dict[str, Any]]:
        """The values of the enqueued trials not asked yet."""
        from optuna.trial import TrialState

        return [t.system_attrs["fixed_params"] for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                if t.system_attrs.get("fixed_params") is not None]

    # --- asking ---

    def ask(self, space: dict[str, Any]) -> Any:
        """A new trial (or the oldest enqueued one) with values for ``space``, frozen."""
        return self.trial(self.study.ask(fixed_distributions=space)._trial_id)

    def enqueue(self, point: dict[str, Any]) -> None:
        self.study.enqueue_trial(point)

    def complete_point(self, ot_id: int, space: dict[str, Any]) -> Any:
        """An enqueued trial whose values were being written when a driver died: they are the
        enqueued point's, so they are written again (suggesting returns the fixed values)."""
        import optuna

        trial = optuna.trial.Trial(self.study, ot_id)
        for name, dist in space.items():
            trial.suggest_categorical(name, dist.choices)
        return self.trial(ot_id)

    def abandon(self, ot_id: int) -> None:
        """A trial killed in the middle of sampling (nothing of it ran): marked and failed."""
        self.set_user_attrs(ot_id, abandoned=True)
        self.tell(ot_id, state="FAIL")

    # --- the sampler's state after each ask (searcher.py, module docstring) ---

    @property
    def sampler(self) -> Any:
        return self.study.sampler

    @sampler.setter
    def sampler(self, sampler: Any) -> None:
        self.study.sampler = sampler

    def keep_sampler(self, number: int) -> None:
        """Stores the sampler as it is right after asking trial ``number``."""
        import base64
        import pickle

        state = {"after": number, "state": base64.b64encode(pickle.dumps(self.study.sampler)).decode("ascii")}
        self.study._storage.set_study_system_attr(self.study._study_id, SAMPLER_ATTR, state)

    def saved_sampler(self, newest: int) -> Any | None:
        """The sampler stored after trial ``newest`` (or a later one), or None if none was."""
        import base64
        import pickle

        saved = self.study._storage.get_study_system_attrs(self.study._study_id).get(SAMPLER_ATTR)
        if saved and saved["after"] >= newest:
            return pickle.loads(base64.b64decode(saved["state"]))
        return None

    # --- telling ---

    def set_user_attrs(self, ot_id: int, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.study._storage.set_trial_user_attr(ot_id, key, value)

    def intermediate_values(self, ot_id: int) -> dict[int, float]:
        return self.trial(ot_id).intermediate_values

    def report(self, ot_id: int, value: float, step: int) -> None:
        """An intermediate value, at a step not reported before: a resumed population reports again
        the steps since its checkpoint, which Optuna would ignore with a warning for each."""
        import optuna

        reported = self._reported.get(ot_id)
        if reported is None:
            reported = self._reported[ot_id] = set(self.intermediate_values(ot_id))
        if step in reported:
            return
        optuna.trial.Trial(self.study, ot_id).report(value, step)
        reported.add(step)

    def tell(self, ot_id: int, value: float | None = None, state: str | None = None) -> None:
        """study.tell with a value, or a state by name (``"PRUNED"``, ``"FAIL"``); the state is
        stored whatever the sampler's after_trial does: GridSampler calls Study.stop() once the
        grid is exhausted, which raises outside Optuna's own optimize loop (Optuna has stored the
        trial's state by then, in a finally clause)."""
        import optuna
        from optuna.trial import TrialState

        try:
            self.study.tell(optuna.trial.Trial(self.study, ot_id), value,
                            state=None if state is None else TrialState[state])
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise


# --- what Optuna is told of a configuration that ended (the one rule) --------------------------


def tell_ended(study: OptunaStudy, ot_id: int, state: str, value: float | None, step: int | None = None,
               **user_attrs: Any) -> None:
    """Tells Optuna how a configuration ended, by the study's rule (docs/study-specs.md, "States and
    objectives"): ``completed`` and ``diverged`` COMPLETE with ``value`` (+-inf for diverged),
    ``pruned`` PRUNED with its last intermediate value (``value`` reported at ``step`` first when it
    was not), anything else (``failed``, or no value) FAIL. The trial keeps ``state`` and the other
    ``user_attrs`` as user attributes. The searcher's reports during a run and the runner's settling
    at its end both tell through this."""
    study.set_user_attrs(ot_id, state=state, **user_attrs)
    if state == "pruned" and value is not None and step is not None and step not in study.intermediate_values(ot_id):
        study.report(ot_id, value, step)  # PRUNED takes the last intermediate value as the trial's value
    if state in ("completed", "diverged") and value is not None:
        study.tell(ot_id, float(value))
    else:
        study.tell(ot_id, state="PRUNED" if state == "pruned" else "FAIL")
