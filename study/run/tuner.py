"""The Ray side of a study: Ray itself (a local Ray of the study's own, or the cluster), the
Tuner (its trainable with the resources each trial asks, the scheduler, the run config), and
restoring a Tuner from a saved experiment. The driver's flow is in study/run/runner.py.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from study.errors import SpecError
from study.locations import Locations, redact
from study.plan import preflight
from study.record.journal import scrub
from study.run.trial import CONTEXT_KEY, MLFLOW_URI_ENV, run_trial
from study.spec.expand import check_configs
from study.spec.model import StudySpec

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from ray import tune  # noqa: E402

log = logging.getLogger(__name__)
# Without Tune's file loggers (above) ExperimentAnalysis warns about every trial's missing result.json.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def trial_dirname(trial: Any) -> str:
    """Short trial directories: Tune's default spells the whole config into the name."""
    return f"trial_{trial.trial_id}"


# --- checks before anything is written -----------------------------------------------------------


def scheduler(spec: StudySpec, reports: int) -> Any:
    """Ray Tune's ASHA for ``fuse: off`` (a trial is one configuration); a fused study's
    populations stop their configurations by the same rule at the study's rungs, shared through
    study/run/rung_board.py (study/plan/population.py, AshaRule)."""
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


def check_scheduler(spec: StudySpec, report_every: int, warmup_updates: int) -> None:
    """ASHA's first rung must come after the RNN warm-up (``warmup_updates``, as the task answers
    it: Task.warmup_updates) when mu_0 is searched: before it every trial trains at mu = 0.9 and
    the rung would prune on noise, not on the searched momentum."""
    if spec.scheduler.type != "asha" or "mu_0" not in spec.search or not warmup_updates:
        return
    first = spec.scheduler.grace_period * report_every
    if first <= warmup_updates:
        need = warmup_updates // report_every + 1
        raise SpecError(
            f"scheduler.grace_period={spec.scheduler.grace_period} is not allowed with a searched mu_0: the first "
            f"rung falls at update {first} (grace_period x report_every {report_every}), inside the RNN "
            f"schedule's {warmup_updates}-update warm-up at mu = 0.9, before mu_0 applies; "
            f"use grace_period >= {need}"
        )


def prepare(spec: StudySpec, loc: Locations) -> int:
    """Every check that needs no store: the configs and the scheduler (the sampler was checked with
    the spec, and the run builds its one sampler once it knows the population size).
    Returns the number of reports a trial makes."""
    from trainables.tasks import task_for

    cfg = check_configs(spec)
    check_scheduler(spec, cfg.report_every, task_for(cfg.task).warmup_updates(cfg))
    return math.ceil(cfg.updates / cfg.report_every)


def run_plan(spec: StudySpec, loc: Locations | None = None) -> Any:
    """The plan for the Ray just started: study/plan/sizing.py's make_plan, the function `study
    plan` prints (the trials that can run at once are ``max_concurrent_trials``, else what the
    cluster's resources hold; the device and its memory size the population)."""
    from study.plan import sizing as plan

    local = loc is None or not loc.ray_address
    return plan.make_plan(spec, plan.ray_machine(local))


def configs_per_trial(spec: StudySpec, loc: Locations | None = None) -> int:
    """How many configurations a Ray trial trains, at most (``run_plan``)."""
    return run_plan(spec, loc).configs_per_trial


# --- Ray and the Tuner ---------------------------------------------------------------------------


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


def new_tuner(spec: StudySpec, loc: Locations, reports: int, context: dict[str, Any], search_alg: Any,
              callbacks: list) -> Any:
    """A new study's Tuner: its trials hand ``context`` to the trainable, ``search_alg`` hands out
    the populations."""
    return tune.Tuner(
        trainable(spec),
        param_space={CONTEXT_KEY: context},
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
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
        run_config=run_config(spec, loc, callbacks),
    )


# --- a saved experiment --------------------------------------------------------------------------


def can_restore(path: str) -> bool:
    return tune.Tuner.can_restore(path)


def use_callbacks(tuner: Any, callbacks: list) -> None:
    """Hands a restored Tuner this run's callbacks: the pickled ones carry settings only. Ray 2.60's
    Tuner.restore takes no run config or callbacks (ray-project/ray#41364 asks for it), so this
    private attribute is the way in; tests/test_study_resume.py fails if it moves."""
    tuner._local_tuner._run_config.callbacks = callbacks
    tuner._local_tuner._run_config.verbose = 0


def restore(name: str, path: str, spec: StudySpec) -> Any:
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


def restored_populations(path: str) -> dict[str, list[dict[str, Any]]] | None:
    """The member table of every trial in the experiment state Tune resumes from (the newest), or
    None if it cannot be read (Tuner.restore then says why; the searcher goes by its own file)."""
    from study.plan.population import POPULATION_KEY

    try:
        trials = tune.ExperimentAnalysis(path).trials
    except Exception as exc:
        log.warning("could not read the trials of Tune's saved state: %s", scrub(str(exc))[:300])
        return None
    return {t.trial_id: list(t.config.get(POPULATION_KEY) or []) for t in trials}


def rebase_search_state(tune_dir: str) -> None:
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
