"""Running a study: start it (everything that can fail is checked before the first write, and a
start that fails after it leaves nothing behind), fit the Ray Tune Tuner, and conclude in a true
state (completed, interrupted or failed, with the reason) whatever happened in between.

The search lives in study/run/searcher.py, the recording in study/record/recorder.py, the rule for a trial's
final state in study/record/outcome.py; this module only puts them together.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from typing import Any, Callable

from study.record import outcome
from study.plan import preflight
from study.record import results
from study.run import searcher as search
from study.record import tracking
from study.record.journal import JOURNAL_FILE, Journal, scrub
from study.run.lock import StudyLock
from study.locations import Locations, redact
from study.run.progress import Progress
from study.spec.model import SpecError, StudySpec, check_configs, spec_to_yaml
from study.run.trial import CONTEXT_KEY, MLFLOW_URI_ENV, run_trial

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from ray import tune  # noqa: E402

log = logging.getLogger(__name__)
# Without Tune's file loggers (above) ExperimentAnalysis warns about every trial's missing result.json.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

TERMINAL = outcome.TERMINAL
# Ray Tune's experiment inside the study directory, stored relative to it (ms_studies.tune_path).
TUNE_DIR = "tune"
# The RNN momentum schedule's warm-up at mu = 0.9 (sec. 4.2), before mu_0 applies.
RNN_WARMUP_UPDATES = 1000


class StudyExistsError(SpecError):
    pass


def trial_dirname(trial: Any) -> str:
    """Short trial directories: Tune's default spells the whole config into the name."""
    return f"trial_{trial.trial_id}"


# --- checks before anything is written -----------------------------------------------------------


def scheduler(spec: StudySpec, reports: int) -> Any:
    """Ray Tune's ASHA for ``fuse: off`` (a trial is one configuration); a fused study stops
    configurations inside their population instead (study/plan/population.py, MemberRungs)."""
    if spec.scheduler.type == "asha" and spec.fuse == "off":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(
            time_attr="training_iteration",
            metric="scheduler_objective",  # finite for diverged trials (study/record/outcome.py)
            mode=spec.mode,
            max_t=spec.scheduler.max_t or reports,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
            brackets=spec.scheduler.brackets,
        )
    return None


def check_scheduler(spec: StudySpec, report_every: int, momentum_schedule: str) -> None:
    """ASHA's first rung must come after the RNN warm-up when mu_0 is searched: before it every
    trial trains at mu = 0.9 and the rung would prune on noise, not on the searched momentum."""
    if spec.scheduler.type != "asha" or "mu_0" not in spec.search or momentum_schedule != "rnn":
        return
    first = spec.scheduler.grace_period * report_every
    if first <= RNN_WARMUP_UPDATES:
        need = RNN_WARMUP_UPDATES // report_every + 1
        raise SpecError(
            f"scheduler.grace_period={spec.scheduler.grace_period} is not allowed with a searched mu_0: the first "
            f"rung falls at update {first} (grace_period x report_every {report_every}), inside the RNN "
            f"schedule's {RNN_WARMUP_UPDATES}-update warm-up at mu = 0.9, before mu_0 applies; "
            f"use grace_period >= {need}"
        )


def prepare(spec: StudySpec, loc: Locations) -> int:
    """Every check that needs no store: the configs, the sampler, the scheduler.
    Returns the number of reports a trial makes."""
    from trainables.train import DEFAULT_SCHEDULE
    from trainables.tasks import family

    cfg = check_configs(spec)
    search.sampler(spec)
    check_scheduler(spec, cfg.report_every, cfg.momentum_schedule or DEFAULT_SCHEDULE[family(cfg.task)])
    return math.ceil(cfg.updates / cfg.report_every)


def configs_per_trial(spec: StudySpec, loc: Locations | None = None) -> int:
    """How many configurations a Ray trial trains, for the Ray just started: study/plan/sizing.py's
    make_plan, the function `study plan` prints (the trials that can run at once are
    ``max_concurrent_trials``, else what the cluster's resources hold; the device and its memory
    size the population)."""
    from study.plan import sizing as plan

    local = loc is None or not loc.ray_address
    return plan.make_plan(spec, plan.ray_machine(local)).configs_per_trial


def _refuse_existing(spec: StudySpec, loc: Locations) -> None:
    own = loc.study_dir / "results.db"
    if loc.results_db == results.sqlite_url(own) and own.exists():
        # Judged by the file, not by opening it: opening an SQLite database in WAL mode rewrites its
        # -wal and -shm files, and a refused run must leave the existing study as it was.
        raise StudyExistsError(
            f"study {spec.name!r} already exists: {loc.study_dir} holds its results database; continue it with "
            f"`study resume {spec.name}`, delete it with `study delete {spec.name}`, or give the spec another name"
        )
    if results.sqlite_path_exists(loc.results_db) and results.get_study(loc.results_db, spec.name):
        raise StudyExistsError(
            f"study {spec.name!r} already exists in {redact(loc.results_db)}: continue it with "
            f"`study resume {spec.name}`, or give the spec another name"
        )


# --- Ray -----------------------------------------------------------------------------------------


def init_ray(loc: Locations, spec: StudySpec) -> None:
    """A local Ray of the study's own (127.0.0.1 only), or the cluster at ``loc.ray_address``.

    A password in the MLflow URI reaches the trials through their environment, never through a
    config or a pickled object that Tune writes to disk.
    """
    import ray

    secret = loc.mlflow_uri if redact(loc.mlflow_uri) != loc.mlflow_uri else None
    if secret:
        os.environ[MLFLOW_URI_ENV] = secret  # local Ray's workers inherit the driver's environment
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING)
    if loc.ray_address:
        env = {MLFLOW_URI_ENV: secret} if secret else {}
        ray.init(address=loc.ray_address, runtime_env={"env_vars": env} if env else None, **kwargs)
        preflight.check_resources(spec, _node_resources())
        from study.plan.sizing import ray_machine

        preflight.check_memory(spec, ray_machine(local=False))
        return
    from study.run.local_ray import start_local_ray

    start_local_ray(**kwargs)


def _node_resources() -> dict[str, dict[str, float]]:
    import ray

    return preflight.node_resources(ray.nodes())


def trainable(spec: StudySpec) -> Any:
    """The trial with its resources; ``gpus: auto`` resolved against the Ray this driver is on."""
    from study.plan.sizing import trial_resources

    gpus = 0.0
    if spec.resources.gpus == "auto":
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
    return tune.with_resources(run_trial, trial_resources(spec, gpus))


def run_config(spec: StudySpec, loc: Locations, callbacks: list) -> Any:
    # A multi-node study needs storage every node reaches (shared path or s3://, gs://: docs/cluster.md).
    storage_path, _, name = loc.tune_uri.rpartition("/")
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        failure_config=tune.FailureConfig(max_failures=spec.retries),
        # Keep every checkpoint: Tune's experiment snapshot may name one that a smaller
        # num_to_keep deleted since, and a trial killed then could not resume (study/run/trial.py
        # falls back to the newest checkpoint that exists, this keeps that rare).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        callbacks=callbacks,
        verbose=0,
    )


# --- run -----------------------------------------------------------------------------------------


def run(spec: StudySpec, loc: Locations, console: Any = None) -> str:
    """Runs a new study to the end (or until interrupted); returns the study's final state."""
    reports = prepare(spec, loc)
    preflight.check(spec, loc)
    _refuse_existing(spec, loc)
    created_dir = not loc.study_dir.exists()
    with StudyLock(loc.study_dir, spec.name, loc.results_db):
        undo: list[Callable[[], None]] = []
        try:
            _refuse_existing(spec, loc)  # again, now that no other driver can be starting it
            init_ray(loc, spec)
            started = _start(spec, loc, reports, console, undo)
        except BaseException:
            _undo_start(loc, created_dir, undo)
            raise
        return _fit_and_conclude(spec, loc, *started)


def _start(spec: StudySpec, loc: Locations, reports: int, console: Any, undo: list) -> tuple:
    """The first writes, each with its undo (run in reverse if a later step fails)."""
    spec_yaml = spec_to_yaml(spec)
    (loc.study_dir / "spec.yaml").write_text(spec_yaml)
    undo.append(lambda: (loc.study_dir / "spec.yaml").unlink(missing_ok=True))
    existed = tracking.client(loc.mlflow_uri).get_experiment_by_name(spec.name) is not None
    experiment_id, parent_run_id = tracking.setup_study(
        loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), spec_yaml, loc.artifact_location
    )
    if not existed:
        undo.append(lambda: tracking.client(loc.mlflow_uri).delete_experiment(experiment_id))
    undo.append(lambda: results.delete_study(loc.results_db, spec.name))
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
        # Relative to the study directory when Tune's experiment lives in it: a moved or copied
        # study directory resumes from where it is now (resume() resolves it).
        tune_path=TUNE_DIR if not loc.storage else loc.tune_uri,
        # Stored without a password; `study resume` takes the secret from its own options/env.
        mlflow_uri=redact(loc.mlflow_uri),
        mlflow_experiment_id=experiment_id,
        mlflow_parent_run_id=parent_run_id,
    )
    context = {
        "spec": spec.model_dump(mode="json"),
        "mlflow_uri": redact(loc.mlflow_uri),
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
    }
    from study.record.recorder import Recorder

    recorder = Recorder(spec, loc, study_id, experiment_id, parent_run_id, Journal(loc.study_dir / JOURNAL_FILE))
    progress = Progress(spec.name, spec.trials, spec.mode, console)
    undo.append(lambda: shutil.rmtree(loc.tune_path, ignore_errors=True) if not loc.storage else None)
    tuner = tune.Tuner(
        trainable(spec),
        param_space={CONTEXT_KEY: context},
        tune_config=tune.TuneConfig(
            search_alg=search.searcher(spec, loc.results_db, configs_per_trial(spec, loc)),
            scheduler=scheduler(spec, reports),
            # An upper bound (a trial trains at least one configuration): the searcher says when
            # every configuration has been handed out.
            num_samples=spec.trials,
            max_concurrent_trials=spec.max_concurrent_trials,
            # A worker process trains one population after another: no new process, imports or
            # MLflow client per trial (docs/benchmarks.md, "Study throughput").
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config(spec, loc, [recorder, progress]),
    )
    return tuner, recorder, progress, parent_run_id


def _undo_start(loc: Locations, created_dir: bool, undo: list[Callable[[], None]]) -> None:
    """A start that failed leaves nothing: no rows, no Optuna study, no MLflow experiment, no files."""
    for step in reversed(undo):
        try:
            step()
        except Exception as exc:  # best effort: report, then go on undoing the rest
            log.warning("undoing a failed start: %s", scrub(str(exc)))
    if created_dir:
        results.forget_engine(loc.results_db)
        shutil.rmtree(loc.study_dir, ignore_errors=True)


# --- resume --------------------------------------------------------------------------------------


def resume(name: str, loc: Locations, console: Any = None) -> str:
    """Continues a study: replays writes a store missed, then Tuner.restore (trials, checkpoints,
    the searcher, whose Optuna study lives in the results DB); finished trials are not rerun."""
    from study.spec.model import load_spec

    row = results.get_study(loc.results_db, name) if results.sqlite_path_exists(loc.results_db) else None
    if row is None:
        raise SpecError(f"no study named {name!r} in {redact(loc.results_db)}; `study status` lists the studies")
    spec = load_spec(row.spec_yaml)
    mlflow_uri = loc.mlflow_uri if "***" in row.mlflow_uri else row.mlflow_uri
    own_mlflow = loc.study_dir / "mlflow.db"
    if own_mlflow.is_file() and loc.mlflow_uri == results.sqlite_url(own_mlflow):
        if mlflow_uri != loc.mlflow_uri:
            # The study directory moved: Tune restores the trials' context with the old path, and
            # MLflow would create an empty store there. A local Ray's workers inherit this instead.
            os.environ[MLFLOW_URI_ENV] = loc.mlflow_uri
        mlflow_uri = loc.mlflow_uri  # the study directory's own store, wherever it was moved
    loc = Locations(loc.root, name, loc.results_db, mlflow_uri, loc.ray_address, loc.storage)
    preflight.check(spec, loc)
    with StudyLock(loc.study_dir, name, loc.results_db):
        journal = Journal(loc.study_dir / JOURNAL_FILE)
        if row.state == "completed" and not journal.pending():
            return "completed"  # nothing to do (the command line says so)
        path = row.tune_path
        if "://" not in path and not os.path.isabs(path):
            path = str((loc.study_dir / path).resolve())
        elif not loc.storage and loc.tune_path.is_dir():
            path = str(loc.tune_path.resolve())  # stored absolute by an older version; the study dir's own wins
        if not tune.Tuner.can_restore(path):
            raise SpecError(f"study {name!r} has no Ray Tune experiment to restore at {path}")
        if "://" not in path:
            _rebase_search_state(path)
        init_ray(loc, spec)
        search.use_storage(loc.results_db)  # the restored searcher re-attaches to it
        # ... and takes the populations of the trials Tune restores as those that exist, not the
        # older ones its own pickle may hold (study/run/searcher.py).
        search.use_restored_populations(_restored_populations(path))
        # Restored before anything is written: an experiment that cannot be restored leaves the
        # study's state, its MLflow runs and the journal as they were.
        tuner = _restore(name, path, spec)
        from study.record.recorder import Recorder

        experiment_id, parent_run_id = tracking.setup_study(
            loc.mlflow_uri, spec.name, spec.model_dump(mode="json"), row.spec_yaml, loc.artifact_location
        )
        recorder = Recorder(spec, loc, row.id, experiment_id, parent_run_id, journal)
        recorder.drain()  # what an earlier run could not write lands first
        results.set_study_state(loc.results_db, name, "running", state_reason=None)
        progress = Progress(spec.name, spec.trials, spec.mode, console)
        # The pickled callbacks carry settings only; hand the restored run fresh ones. Ray 2.60's
        # Tuner.restore takes no run config or callbacks (ray-project/ray#41364 asks for it), so
        # this private attribute is the way in; tests/test_study_resume.py fails if it moves.
        tuner._local_tuner._run_config.callbacks = [recorder, progress]
        tuner._local_tuner._run_config.verbose = 0
        return _fit_and_conclude(spec, loc, tuner, recorder, progress, parent_run_id)


def _restore(name: str, path: str, spec: StudySpec) -> Any:
    """Tuner.restore, with a failure to unpickle the experiment said as what it means to the user."""
    try:
        return tune.Tuner.restore(path, trainable(spec), resume_unfinished=True, resume_errored=False)
    except (AttributeError, ModuleNotFoundError, ImportError, TypeError) as exc:
        # Tune pickles the searcher with the experiment: one saved by a version whose searcher
        # class is gone (StudyOptunaSearch, before fused studies) cannot be loaded by this one.
        older = "StudyOptunaSearch" in str(exc) or isinstance(exc, (AttributeError, ModuleNotFoundError))
        raise SpecError(
            f"study {name!r} cannot be resumed: its Ray Tune experiment at {path} could not be restored "
            f"({type(exc).__name__}: {scrub(str(exc))[:300]})"
            + (
                ". It was most likely saved by an earlier version of momentum-study (before fused studies), "
                "whose searcher this version no longer has. Its finished configurations stay readable "
                f"(`study results {name}`, `study report {name}`); to go on, run its spec again under a new name"
                if older
                else ""
            )
        ) from None


def _restored_populations(path: str) -> dict[str, list[dict[str, Any]]] | None:
    """The member table of every trial in the experiment state Tune resumes from (the newest), or
    None if it cannot be read (Tuner.restore then says why; the searcher goes by its own file)."""
    from study.plan.population import POPULATION_KEY

    try:
        trials = tune.ExperimentAnalysis(path).trials
    except Exception as exc:
        log.warning("could not read the trials of Tune's saved state: %s", scrub(str(exc))[:300])
        return None
    return {t.trial_id: list(t.config.get(POPULATION_KEY) or []) for t in trials}


def _rebase_search_state(tune_dir: str) -> None:
    """Ray Tune restores a moved experiment's trials at its new place (TuneController._restore_trials)
    but not the pickled Experiment of its search generator, so trials created after the restore
    would write to the old place and fail. Points that Experiment's storage at the new place, the
    same three fields Tune updates for its trials."""
    import glob

    import ray.cloudpickle as cloudpickle

    parent, name = os.path.split(os.path.abspath(tune_dir))
    for file in glob.glob(os.path.join(tune_dir, "search_gen_state-*.json")):
        with open(file, "rb") as f:
            state = cloudpickle.load(f)
        storage = getattr(state.get("experiment"), "storage", None)
        if storage is None or (storage.storage_fs_path, storage.experiment_dir_name) == (parent, name):
            continue
        storage.storage_fs_path, storage.experiment_dir_name = parent, name
        tmp = os.path.join(tune_dir, f".rebase-{os.path.basename(file)}")
        with open(tmp, "wb") as f:
            cloudpickle.dump(state, f)
        os.replace(tmp, file)


# --- fit and conclude ----------------------------------------------------------------------------


def _fit_and_conclude(spec: StudySpec, loc: Locations, tuner: Any, recorder: Any, progress: Progress,
                      parent_run_id: str | None) -> str:
    failure = None
    try:
        with progress:
            tuner.fit()
    except KeyboardInterrupt:
        failure = ("interrupted", "interrupted by the user")
    except Exception as exc:  # the driver itself failed: the study must still end in a true state
        log.exception("study %s failed", spec.name)
        failure = ("failed", f"the driver failed: {scrub(f'{type(exc).__name__}: {exc}')[:2000]}")
    state = conclude(spec, loc, recorder, parent_run_id, failure)
    _checkpoint(loc)
    return state


def _checkpoint(loc: Locations) -> None:
    """The study's SQLite results database whole in its file (docs/results-db.md); never raises."""
    try:
        busy = (results.checkpoint(loc.results_db) or (0,))[0]
        if busy:
            log.warning("results database: a reader kept part of the write-ahead log; it lands at the next end")
    except Exception as exc:
        log.warning("could not checkpoint the results database's write-ahead log: %s", scrub(str(exc)))


def conclude(spec: StudySpec, loc: Locations, recorder: Any, parent_run_id: str | None,
             failure: tuple[str, str] | None = None) -> str:
    """Lands pending writes, decides the study's state and reason (by outcome.study_state), and
    writes them everywhere it can; never raises (the reason says what could not be written)."""
    store_problem = recorder.drain()
    ended: dict[str, int] = {}
    first_error = None
    try:
        ended, first_error = _finish_rows(spec, loc, failed=bool(failure or store_problem))
    except Exception as exc:
        store_problem = store_problem or f"results database unreachable ({scrub(str(exc))[:300]})"
    state, reason = outcome.study_state(ended, spec.trials, spec.name, failure, store_problem, first_error)
    # The state goes through the results DB's write queue: with the database down it is journaled
    # (and lands with `study resume`); `study status` meanwhile shows a study without a driver.
    if not recorder.db.write({"kind": "study", "trial_id": "", "state": state, "reason": reason}):
        log.warning("could not record the study's state %s in the results database", state)
    if parent_run_id:
        try:
            # This run's driver bookkeeping against its trials' compute (docs/benchmarks.md).
            tracking.finish_study(loc.mlflow_uri, parent_run_id, state, reason, recorder.cost())
        except Exception as exc:
            log.warning("could not record the study's state in MLflow: %s", scrub(str(exc)))
        try:
            _settle_mlflow(spec, loc, state)
        except Exception as exc:
            log.warning("could not settle the trials' MLflow runs: %s", scrub(str(exc)))
    return state


def _finish_rows(spec: StudySpec, loc: Locations, failed: bool) -> tuple[dict[str, int], str | None]:
    """Settles the rows at the end of a run; returns how many configurations ended in each
    terminal state, and the last line of the first failed one's error.

    Running trials of an unfinished study become pending (`study resume` continues them). Once
    every trial finished, Optuna trials that no trial took over after a hard kill are failed, so
    nothing is left RUNNING.
    """
    from sqlalchemy import select, update

    with results.session_scope(loc.results_db) as s:
        study = s.execute(select(results.StudyRow).where(results.StudyRow.name == spec.name)).scalar_one()
        done = sum(t.state in TERMINAL for t in study.trials)
        ended = {state: sum(t.state == state for t in study.trials) for state in TERMINAL}
        errors = [t.error_message for t in sorted(study.trials, key=lambda t: t.id) if t.state == "failed" and t.error_message]
        numbers = {t.optuna_trial_number for t in study.trials}
        finished = {t.optuna_trial_number: (t.state, t.objective) for t in study.trials
                    if t.state in TERMINAL and t.optuna_trial_number is not None}
        if done < spec.trials or failed:
            s.execute(
                update(results.TrialRow)
                .where(results.TrialRow.study_id == study.id, results.TrialRow.state == "running")
                .values(state="pending")
            )
    _settle_optuna(spec, loc, finished, numbers if done >= spec.trials and not failed else None)
    return ended, _last_line(errors[0]) if errors else None


def _last_line(error: str) -> str:
    """A traceback's last line (the exception), which is what a reason has room for."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return scrub(lines[-1] if lines else error)[:300]


def _settle_optuna(spec: StudySpec, loc: Locations, finished: dict[int, tuple[str, float | None]],
                   held: set | None) -> None:
    """Optuna trials still RUNNING get the state the results DB holds for their configuration (a
    tell that failed while the database was down, or a driver killed before it); once the study
    is complete (``held`` given), those no configuration took over after a hard kill are failed."""
    import optuna
    from optuna.trial import TrialState

    ot = optuna.load_study(study_name=spec.name, storage=search.optuna_storage(loc.results_db))
    for t in ot.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in finished:
            state, value = finished[t.number]
            optuna.trial.Trial(ot, t._trial_id).set_user_attr("state", state)
            if state in ("completed", "diverged") and value is not None:
                search.tell(ot, t.number, value)
            else:
                search.tell(ot, t.number, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)
        elif held is not None and t.number not in held:
            search.tell(ot, t.number, state=TrialState.FAIL)


def _settle_mlflow(spec: StudySpec, loc: Locations, state: str) -> None:
    """Child runs MLflow still shows RUNNING get the state the results DB holds for their trial."""
    study = results.get_study(loc.results_db, spec.name)
    if study is None or not study.mlflow_experiment_id:
        return
    by_trial = {t.trial_id: t.state for t in _trial_rows(loc, study.id)}
    for run in tracking.running_trial_runs(loc.mlflow_uri, study.mlflow_experiment_id):
        trial_state = by_trial.get(run.data.tags.get(tracking.TRIAL_TAG), "failed")
        if trial_state in TERMINAL:
            tracking.finish_trial(loc.mlflow_uri, run.info.run_id, trial_state)
        elif state != "completed":
            tracking.client(loc.mlflow_uri).set_terminated(run.info.run_id, status="KILLED")


def _trial_rows(loc: Locations, study_id: int) -> list:
    from sqlalchemy import select

    with results.session_scope(loc.results_db) as s:
        return list(s.execute(select(results.TrialRow).where(results.TrialRow.study_id == study_id)).scalars())

