"""Running a study: Ray Tune Tuner + OptunaSearch (+ scheduler), driver callbacks for the results
database and MLflow, and resuming with ``Tuner.restore`` and the stored Optuna study."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
from typing import Any

from study import results, tracking
from study.locations import Locations, redact
from study.progress import Progress
from study.spec import (
    CategoricalParam,
    FloatParam,
    GridParam,
    IntParam,
    SpecError,
    StudySpec,
    check_configs,
    param_name,
    spec_to_yaml,
    task_config_dict,
)
from study.trial import CONTEXT_KEY, OPTUNA_NUMBER_KEY, run_trial, sampled_params

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from ray import tune  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

log = logging.getLogger(__name__)
# Without Tune's file loggers (above) ExperimentAnalysis warns about every trial's missing result.json.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def trial_dirname(trial: Any) -> str:
    """Short trial directories: Tune's default spells the whole config into the name."""
    return f"trial_{trial.trial_id}"
TERMINAL = ("completed", "diverged", "failed", "pruned")


class StudyExistsError(RuntimeError):
    pass


# --- Optuna --------------------------------------------------------------------------------------


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
    import optuna.samplers as s

    kind, seed, opts = spec.sampler.type, spec.sampler.seed, dict(spec.sampler.options)
    if kind == "grid":
        grid = {param_name(f, p): list(p.values) for f, p in spec.search.items()}  # type: ignore[union-attr]
        return s.GridSampler(grid, seed=seed, **opts)
    factory = {
        "tpe": s.TPESampler,
        "cmaes": s.CmaEsSampler,
        "gp": s.GPSampler,
        "random": s.RandomSampler,
        "qmc": s.QMCSampler,
    }[kind]
    return factory(seed=seed, **opts)


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that also hands each trial its Optuna trial number (for the DB and MLflow)."""

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if params is not None and trial_id in self._ot_trials:
            params[OPTUNA_NUMBER_KEY] = self._ot_trials[trial_id].number
        return params


def optuna_storage(url: str) -> Any:
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def searcher(spec: StudySpec, results_db: str) -> StudyOptunaSearch:
    return StudyOptunaSearch(
        space=distributions(spec),
        metric="objective",
        mode=spec.mode,
        sampler=sampler(spec),
        study_name=spec.name,
        storage=optuna_storage(results_db),
    )


# --- the driver's callback: results DB + MLflow --------------------------------------------------


class Recorder(tune.Callback):
    """Writes the results DB and the MLflow metric history from the driver, idempotently."""

    def __init__(self, spec: StudySpec, loc: Locations, study_id: int):
        self.spec_dict = spec.model_dump(mode="json")
        self.results_db = loc.results_db
        self.mlflow_uri = loc.mlflow_uri
        self.study_id = study_id
        self._reset()

    def _reset(self) -> None:
        self._pk: dict[str, int] = {}
        self._best: dict[str, float] = {}
        self._metrics: tracking.MetricLog | None = None
        self._run: dict[str, str] = {}
        self.finished: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment; only settings travel.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k != "finished"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def spec(self) -> StudySpec:
        return StudySpec.model_validate(self.spec_dict)

    def _trial_pk(self, trial: Any, **values: Any) -> int:
        pk = results.upsert_trial(self.results_db, self.study_id, trial.trial_id, **values)
        self._pk[trial.trial_id] = pk
        return pk

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from trainables.config import parse_config

        spec = self.spec
        sampled = sampled_params(trial.config)
        cfg = parse_config(task_config_dict(spec, sampled))
        self._trial_pk(
            trial,
            state="running",
            params=sampled,
            config=cfg.model_dump(mode="json"),
            members=cfg.population_size,
            optuna_trial_number=trial.config.get(OPTUNA_NUMBER_KEY),
            started_at=_now(),
            ended_at=None,
            error_message=None,
        )

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_pk(trial, state="running", error_message=_error_text(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = trial.trial_id
        pk = self._pk.get(tid) or self._trial_pk(trial)
        value = result.get("metric_value")
        best = self._best.get(tid)
        if value is not None and math.isfinite(value):
            better = best is None or (value < best if self.spec.mode == "min" else value > best)
            best = value if better else best
            self._best[tid] = best
        results.record_points(self.results_db, pk, int(result["step"]), result.get("members", []))
        run_id = result.get("mlflow_run_id")
        values: dict[str, Any] = dict(
            last_step=int(result["step"]),
            metric_value=value,
            objective=result.get("objective"),
            members_diverged=int(result.get("members_diverged", 0)),
            # Where the trial ran: Tune fills in hostname and node_ip; ray_node_id comes from trial.py.
            hostname=result.get("hostname"),
            node_ip=result.get("node_ip"),
            ray_node_id=result.get("ray_node_id"),
        )
        if best is not None:
            values["best_metric_value"] = best
        if run_id:
            values["mlflow_run_id"] = run_id
            self._run[tid] = run_id
        self._trial_pk(trial, **values)
        if run_id:
            if self._metrics is None:
                self._metrics = tracking.MetricLog(self.mlflow_uri)
            stamp = int(result.get("timestamp", time.time()) * 1000)
            self._metrics.log(run_id, int(result["step"]), tracking.metrics_at_step(result), stamp)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        if not last.get("final"):
            state = "pruned"
        elif last.get("members_diverged"):
            state = "diverged"
        else:
            state = "completed"
        self._finish(trial, state)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "failed", _error_text(trial))

    def _finish(self, trial: Any, state: str, error: str | None = None) -> None:
        self.finished.add(trial.trial_id)
        self._trial_pk(trial, state=state, ended_at=_now(), error_message=error)
        run_id = self._run.get(trial.trial_id) or (trial.last_result or {}).get("mlflow_run_id")
        if run_id is None:
            study = results.get_study(self.results_db, self.spec.name)
            if study and study.mlflow_experiment_id:
                run_id = tracking.find_trial_run(self.mlflow_uri, study.mlflow_experiment_id, trial.trial_id)
        if run_id:
            tags = {"objective": str((trial.last_result or {}).get("objective"))}
            if error:
                tags["error"] = error[-5000:]
            tracking.finish_trial(self.mlflow_uri, run_id, state, tags)


def _error_text(trial: Any) -> str | None:
    try:
        path = trial.error_file
        if path and os.path.exists(path):
            with open(path) as f:
                return f.read()[-4000:]
    except Exception:
        pass
    return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


# --- running -------------------------------------------------------------------------------------


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)


def trainable(spec: StudySpec) -> Any:
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    return tune.with_resources(run_trial, resources)


def scheduler(spec: StudySpec, reports: int) -> Any:
    if spec.scheduler.type == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=spec.scheduler.max_t or reports,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            brackets=spec.scheduler.brackets,
        )
    return None


def run_config(spec: StudySpec, loc: Locations, callbacks: list) -> Any:
    # A multi-node study needs storage every node reaches (shared path or s3://, gs://: docs/cluster.md).
    storage_path, _, name = loc.tune_uri.rpartition("/")
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=spec.retries),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks,
        verbose=0,
    )


def prepare(spec: StudySpec, loc: Locations) -> None:
    """Checks that nothing is in the way, before anything is written."""
    check_configs(spec)
    if spec.sampler.type == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise SpecError("sampler.type='cmaes' needs the 'cmaes' package: pip install cmaes") from None
    if results.sqlite_path_exists(loc.results_db) and results.get_study(loc.results_db, spec.name):
        raise StudyExistsError(
            f"study {spec.name!r} already exists in {redact(loc.results_db)}: continue it with "
            f"`study resume {spec.name}`, or give the spec another name"
        )


def run(spec: StudySpec, loc: Locations, console: Any = None) -> str:
    """Runs a new study to the end (or until interrupted); returns the study's final state."""
    prepare(spec, loc)
    from study import preflight

    preflight.check(spec, loc)
    reports = math.ceil(check_configs(spec).updates / check_configs(spec).report_every)
    loc.study_dir.mkdir(parents=True, exist_ok=True)
    spec_yaml = spec_to_yaml(spec)
    (loc.study_dir / "spec.yaml").write_text(spec_yaml)
    experiment_id, parent_run_id = tracking.setup_study(
        loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), spec_yaml, loc.artifact_location
    )
    study_id = results.upsert_study(
        loc.results_db,
        name=spec.name,
        task=spec.task,
        metric=spec.metric,
        mode=spec.mode,
        num_samples=spec.trials,
        repeats=spec.repeats,
        state="running",
        spec_yaml=spec_yaml,
        tune_path=loc.tune_uri,
        # Stored without a password; `study resume` takes the secret from its own options/env.
        mlflow_uri=redact(loc.mlflow_uri),
        mlflow_experiment_id=experiment_id,
        mlflow_parent_run_id=parent_run_id,
    )
    context = {
        "spec": spec.model_dump(mode="json"),
        "mlflow_uri": loc.mlflow_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
    }
    init_ray(loc.ray_address)
    recorder = Recorder(spec, loc, study_id)
    progress = Progress(spec.name, spec.trials, spec.mode, console)
    tuner = tune.Tuner(
        trainable(spec),
        param_space={CONTEXT_KEY: context},
        tune_config=tune.TuneConfig(
            search_alg=searcher(spec, loc.results_db),
            scheduler=scheduler(spec, reports),
            num_samples=spec.trials,
            max_concurrent_trials=spec.max_concurrent_trials,
            metric="objective",
            mode=spec.mode,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(spec, loc, [recorder, progress]),
    )
    with progress:
        tuner.fit()
    return _conclude(spec, loc, recorder, parent_run_id)


def resume(name: str, loc: Locations, console: Any = None) -> str:
    """Continues an interrupted study: Tuner.restore (trials, checkpoints, the pickled searcher,
    whose Optuna study lives in the results DB); finished trials are not rerun."""
    from study.spec import load_spec

    row = results.get_study(loc.results_db, name) if results.sqlite_path_exists(loc.results_db) else None
    if row is None:
        raise SpecError(f"no study named {name!r} in {redact(loc.results_db)}; `study status` lists the studies")
    spec = load_spec(row.spec_yaml)
    mlflow_uri = loc.mlflow_uri if "***" in row.mlflow_uri else row.mlflow_uri
    loc = Locations(loc.root, name, loc.results_db, mlflow_uri, loc.ray_address, loc.storage)
    path = row.tune_path
    if not tune.Tuner.can_restore(path):
        raise SpecError(f"study {name!r} has no Ray Tune experiment to restore at {path}")
    tracking.setup_study(loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), row.spec_yaml, loc.artifact_location)
    results.set_study_state(loc.results_db, name, "running")
    init_ray(loc.ray_address)
    recorder = Recorder(spec, loc, row.id)
    progress = Progress(spec.name, spec.trials, spec.mode, console)
    tuner = tune.Tuner.restore(path, trainable(spec), resume_unfinished=True, resume_errored=False)
    # The pickled callbacks carry settings only; hand the restored run fresh ones.
    tuner._local_tuner._run_config.callbacks = [recorder, progress]
    tuner._local_tuner._run_config.verbose = 0
    with progress:
        tuner.fit()
    return _conclude(spec, loc, recorder, row.mlflow_parent_run_id)


def _conclude(spec: StudySpec, loc: Locations, recorder: Recorder, parent_run_id: str | None) -> str:
    from sqlalchemy import select, update

    with results.session_scope(loc.results_db) as s:
        study = s.execute(select(results.StudyRow).where(results.StudyRow.name == spec.name)).scalar_one()
        states = [t.state for t in study.trials]
        done = sum(st in TERMINAL for st in states)
        state = "completed" if done >= spec.trials else "interrupted"
        if state == "interrupted":
            s.execute(
                update(results.TrialRow)
                .where(results.TrialRow.study_id == study.id, results.TrialRow.state == "running")
                .values(state="pending")
            )
        study.state = state
    if parent_run_id:
        tracking.finish_study(loc.mlflow_uri, parent_run_id, state)
    return state
