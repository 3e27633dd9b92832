"""Faults injected into real studies (real Ray, real stores, tiny budgets), and what must survive:

1. kill -9 of a trial's worker: the trial resumes from its checkpoint and ends with exactly the
   metrics of an uninterrupted run, one row and one MLflow point per reported step;
2. kill -9 of the driver, twice (during `study run`, then during `study resume`): resumed to the
   end, every configuration ran exactly once in the results DB, Optuna and MLflow; in a TPE study
   killed mid-population, each configuration is the one the sampler suggested, trained once;
3. a store that goes down mid-study (the results DB on PostgreSQL; an MLflow tracking server):
   the study ends in a true state naming the store, loses nothing it had recorded, and
   `study resume` with the store back completes it with the invariants of 2.

Drivers are `study` subprocesses, each in a process group of its own; tests/faults_util.py kills
them and every Ray process they started. Where the fault is Ray's (a killed worker or driver) each
driver starts a Ray of its own (RAY_ADDRESS unset), as a user's `study run` does; where it is a
store's (3.), the drivers join the session's Ray (conftest.ray_session): which Ray runs the trials
is no part of that fault, and two local Ray start-ups a test are saved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import STUDY_BIN
from faults_util import (
    Driver,
    ResultsDB,
    assert_each_suggestion_once,
    assert_study_whole,
    checkpoints,
    driver_env,
    freeze_when,
    grid_spec,
    resume_to_the_end,
    tpe_spec,
    tune_state_lists,
    wait_for,
)
from pg import LocalPostgres, postgres_bindir
from study.record.journal import JOURNAL_FILE, Journal
from study.cluster.servers import (
    free_port,
    mlflow_server_command,
    mlflow_server_env,
    wait_http,
)

STEPS = [250, 500, 750, 1000]
# Three populations of at most two: a fault injected after the first population still finds
# a whole population not yet started, however fast the machine.
LRS = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]
# A store down for good must end the study within this; MLflow's client otherwise retries a
# refused request for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES defaults to 7, back-off factor 2).
# Retried at once (no back-off, no jitter): a refused write then fails in milliseconds, not the
# 2-3 s of sleeps that each of the run's dozen writes after the kill took with a back-off of 1;
# what the study does with a failed write (journal it, end failed naming MLflow) is the same.
MLFLOW_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
STORE_DOWN_EXIT_S = 240


def _sqlite(root, name: str, store: str) -> str:
    return f"sqlite:///{root / name / store}"


@pytest.fixture
def workdir():
    """A directory of this test's own: pytest's tmp_path lives under /tmp/pytest-of-<user>, whose
    older numbered directories another pytest session on the machine may delete while we run."""
    path = Path(tempfile.mkdtemp(prefix="ms-faults-", dir="/tmp"))
    try:
        yield path
    finally:
        if not os.environ.get("MOMENTUM_FAULTS_KEEP"):
            shutil.rmtree(path, ignore_errors=True)


# --- 1. a trial's worker killed ------------------------------------------------------------------


def test_killed_trial_worker_resumes_from_checkpoint_with_the_metrics_of_an_uninterrupted_run(workdir):
    from trainables import train

    name, root = "worker-kill", workdir / "studies"
    spec = grid_spec(workdir / "spec.yaml", name, [2e-3], retries=2, repeats=2, config={"report_every": 50})
    steps = list(range(50, 1001, 50))
    db = ResultsDB(_sqlite(root, name, "results.db"))
    driver = Driver(["run", str(spec)], driver_env(root), workdir / "driver.log")
    killed: set[int] = set()
    workers_seen: set[int] = set()
    try:
        # Kill once the driver has recorded the trial's second report (rows in the DB), the worker
        # held (SIGSTOP) from then on and let run only in short slices before, so that the kill
        # finds it well before its last report however fast the machine trains. (Not waiting for
        # the DB to catch up with the worker's checkpoints: a worker stopped between writing a
        # checkpoint and sending its result never lets it.)
        frozen = freeze_when("the trial's second report in the results DB",
                             lambda: db.scalar("SELECT MAX(step) FROM ms_metric_points") >= 100, driver)
        before = db.point_rows(name)
        at_kill = max(step for _, step, _ in before)
        at_checkpoint = max(checkpoints(root / name))
        assert at_checkpoint < steps[-1], "the trial finished before its worker could be killed"
        for w in frozen:
            killed.add(w.pid)
            w.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 180
        while driver.alive() and time.monotonic() < deadline:
            workers_seen.update(w.pid for w in driver.workers())
            time.sleep(0.1)
        rc = driver.wait(timeout=30)
    finally:
        driver.cleanup()
    assert rc == 0, driver.output()
    assert workers_seen - killed, "no new worker ran the trial after the kill"

    trial = db.rows("SELECT id, trial_id, optuna_trial_number, state, config, mlflow_run_id FROM ms_trials")
    assert len(trial) == 1 and trial[0].state == "completed", trial
    after = db.point_rows(name)
    db.dispose()
    # One row per (trial, step, member): the unique key holds that; every step is there.
    assert sorted(after) == sorted((trial[0].optuna_trial_number, s, m) for s in steps for m in (0, 1))
    # Resumed from its checkpoint, not from scratch: reports before the last one seen at the kill
    # were not written again.
    for key, (_, _, recorded_at) in before.items():
        if key[1] < at_kill:
            assert after[key][2] == recorded_at, f"point {key} was rewritten: the trial restarted from scratch"

    # The same config, uninterrupted, in this process: equal in float64, bit for bit.
    config = trial[0].config
    config = json.loads(config) if isinstance(config, str) else config
    reference: dict[tuple[int, int], tuple[float, float]] = {}
    train(config, lambda r: reference.update({(r.step, m.member): (m.error, m.loss) for m in r.members}))
    resumed = {(s, m): (e, loss) for (_, s, m), (e, loss, _) in after.items()}
    assert resumed == reference
    assert 100 <= at_kill <= at_checkpoint < steps[-1]

    c = MlflowClient(_sqlite(root, name, "mlflow.db"))
    run_id = trial[0].mlflow_run_id
    assert sorted(m.step for m in c.get_metric_history(run_id, "error")) == steps
    for member, seed in ((0, 0), (1, 1)):
        history = sorted((m.step, m.value) for m in c.get_metric_history(run_id, f"error/seed_{seed}"))
        assert history == [(s, reference[(s, member)][0]) for s in steps]
    assert c.get_run(run_id).info.status == "FINISHED"
    print(f"\nfault: worker kill -9 at checkpoint {at_checkpoint} (recorded {at_kill}); killed {sorted(killed)}; "
          f"rows {len(after)} (expected {len(steps) * 2}); metrics equal to uninterrupted run")


# --- 2. the driver killed, twice -----------------------------------------------------------------


def test_driver_killed_during_run_and_during_resume_runs_every_configuration_exactly_once(workdir):
    name, root = "driver-kill", workdir / "studies"
    lrs = LRS
    spec = grid_spec(workdir / "spec.yaml", name, lrs)
    env = driver_env(root)
    db = ResultsDB(_sqlite(root, name, "results.db"))
    log = workdir / "driver.log"
    try:
        driver = Driver(["run", str(spec)], env, log)
        try:
            wait_for("the first metric point", lambda: db.points(name) >= 1, driver, db=db)
            kept_1 = db.point_rows(name)
            driver.kill()
        finally:
            driver.cleanup()

        driver = Driver(["resume", name], env, log)
        try:
            # Right after a trial finished and the next one started: its Optuna trial has just been
            # asked for, and Tune may not have saved its experiment state since.
            done, started = db.finished_trials(name), db.trials(name)
            wait_for("a trial to finish in the resumed study and the next to start",
                     lambda: db.finished_trials(name) > done and db.trials(name) > started, driver, db=db)
            kept_2 = db.point_rows(name)
            driver.kill()
        finally:
            driver.cleanup()
        # Killed twice, never concluded: the study is still shown running (a missing row fails here).
        assert _study_state(db, name) == "running"

        resume_to_the_end(name, env, log)
        final = db.point_rows(name)
    finally:
        db.dispose()
    # Nothing recorded before a kill is lost (a rerun may only rewrite a row in place).
    assert set(kept_1) <= set(final) and set(kept_2) <= set(final)
    figures = assert_study_whole(name, db.url, _sqlite(root, name, "mlflow.db"), lrs, STEPS)
    print(f"\nfault: driver kill -9 x2 (after {len(kept_1)} and {len(kept_2)} points); after resume {figures}")


def test_tpe_study_killed_mid_population_trains_each_suggestion_once(workdir):
    """Issue 18: kill -9 while the second population of a TPE study trains, with Tune's saved state
    older than Optuna's storage, then resume: each configuration is TPE's own suggestion for its
    Optuna trial number, trained once, with no number and no values twice. (A saved state that
    lists the population but whose searcher file is older: tests/test_study_resume.py.)"""
    import optuna

    name, root = "tpe-kill", workdir / "studies"
    samples = 6  # three populations of two: the third is asked for after the kill
    spec = tpe_spec(workdir / "spec.yaml", name, samples)
    # What the sampler suggests, asked in a row in plain Optuna: TPE's random start-up (10 trials)
    # draws the same values whatever the results, so an unbroken study trains exactly these.
    reference = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, constant_liar=True))
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    suggested = [reference.ask({"lr": lr}).params for _ in range(samples)]
    env = driver_env(root)
    db = ResultsDB(_sqlite(root, name, "results.db"))
    tune_dir = root / name / "tune"
    log = workdir / "driver.log"
    try:
        # Tune saves its experiment state (with the searcher) as it starts, then only every 10 s or
        # more; here only as it starts, so the kill always finds it older than Optuna's storage,
        # where the second population's configurations were asked and are RUNNING.
        driver = Driver(["run", str(spec)], {**env, "TUNE_GLOBAL_CHECKPOINT_S": "3600"}, log)
        try:
            wait_for("the second population's configurations", lambda: len(db.populations(name)) >= 2, driver, db=db)
            driver.kill()
        finally:
            driver.cleanup()
        second = db.populations(name, "running")
        assert second and not tune_state_lists(tune_dir, second), "Tune's saved state already knew the population"
        asked = db.scalar("SELECT COUNT(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                          "WHERE s.study_name = :n AND t.state = 'RUNNING'", n=name)
        assert asked == 2, f"{asked} Optuna trials RUNNING at the kill"

        resume_to_the_end(name, env, log)
    finally:
        db.dispose()
    assert_each_suggestion_once(name, db.url, suggested)
    figures = assert_study_whole(name, db.url, _sqlite(root, name, "mlflow.db"), [s["lr"] for s in suggested], STEPS)
    print(f"\nfault: TPE driver kill -9 while population {sorted(second)} trained, unknown to Tune's saved state; "
          f"after resume {figures}")


# --- 3. a store down mid-study -------------------------------------------------------------------

REASON_RESULTS_DB = re.compile(r"results[ _-]?(database|db)", re.I)
REASON_MLFLOW = re.compile(r"mlflow", re.I)


def _study_state(db: ResultsDB, name: str) -> str:
    return db.rows("SELECT state FROM ms_studies WHERE name = :n", n=name)[0].state


def _state_reason(db: ResultsDB, name: str) -> str | None:
    """Why the study ended as it did: migration 0003's column ms_studies.state_reason."""
    return db.rows("SELECT state_reason FROM ms_studies WHERE name = :n", n=name)[0].state_reason


def _assert_nothing_lost(db: ResultsDB, name: str, kept: dict, finished: dict[str, str]) -> None:
    """Every metric point, and the end state of every trial finished before the failure, is still there."""
    now = db.point_rows(name)
    lost = sorted(k for k in kept if k not in now)
    assert not lost, f"{len(lost)} metric points recorded before the failure were lost: {lost[:5]}"
    states = db.trial_states(name)
    changed = {t: (s, states.get(t)) for t, s in finished.items()
               if s in ("completed", "diverged", "failed", "pruned") and states.get(t) != s}
    assert not changed, f"trials finished before the failure changed state (before, after): {changed}"


def _parent_run(mlflow_uri: str, name: str):
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name(name)
    return c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'parent'")[0]


@pytest.fixture
def postgres(workdir):
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries absent (initdb/pg_ctl): run tests/setup_postgres.sh")
    server = LocalPostgres(workdir / "pg")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_results_db_down_mid_study_ends_failed_naming_it_and_resume_completes(workdir, postgres, ray_session):
    name, root = "pg-down", workdir / "studies"
    url = postgres.create_database("results", "study", "pw-faults")
    spec = grid_spec(workdir / "spec.yaml", name, LRS)
    # The URL (with its password) through the environment, as docs/cluster.md says.
    env = driver_env(root, ray_session, MOMENTUM_STUDY_RESULTS_DB=url)
    mlflow_uri = _sqlite(root, name, "mlflow.db")
    db = ResultsDB(url)
    log = workdir / "driver.log"
    try:
        driver = Driver(["run", str(spec)], env, log)
        try:
            wait_for("the first finished trial", lambda: db.finished_trials(name) >= 1, driver, db=db)
            kept, finished = db.point_rows(name), db.trial_states(name)
            db.engine.dispose()
            postgres.stop()
            rc = driver.wait(timeout=STORE_DOWN_EXIT_S)
        finally:
            driver.cleanup()
            if not (postgres.data / "postmaster.pid").exists():
                postgres.start()
        assert rc != 0, f"the study claimed success with its results DB down:\n{driver.output()}"

        # What the failed run left: nothing recorded before the failure is lost, no success claimed.
        _assert_nothing_lost(db, name, kept, finished)
        # The database was down when the driver ended: its row still says running, and the failed
        # state waits in the journal with the other writes (it lands with `study resume`).
        assert _study_state(db, name) == "running"
        assert Journal(root / name / JOURNAL_FILE).pending() > 0
        # MLflow was up: the parent run is FAILED (docs/reliability.md), naming the database.
        parent = _parent_run(mlflow_uri, name)
        assert parent.info.status == "FAILED" and parent.data.tags.get("state") == "failed", (
            parent.info.status, parent.data.tags)
        assert REASON_RESULTS_DB.search(parent.data.tags.get("state_reason", "")), parent.data.tags
        status = subprocess.run([STUDY_BIN, "status", name], env=env, capture_output=True, text=True, timeout=120)
        assert f"{name}: completed" not in status.stdout, status.stdout

        resume_to_the_end(name, env, log)
        final = db.point_rows(name)
        assert all(k in final for k in kept)
    finally:
        db.dispose()
    figures = assert_study_whole(name, url, mlflow_uri, LRS, STEPS)
    print(f"\nfault: results DB (PostgreSQL) stopped after {len(kept)} points; study exit {rc}; after resume {figures}")


class MlflowServer:
    """`mlflow server` on an SQLite backend, in a process group of its own, on a fixed port."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend = f"sqlite:///{workdir / 'mlflow-server.db'}"
        self.cmd = mlflow_server_command(str(workdir / "artifacts"), port=self.port)
        self.log = open(workdir / "mlflow-server.log", "a")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        env = mlflow_server_env(self.backend, {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self) -> None:
        wait_http(f"{self.uri}/health", timeout_s=180, proc=self.proc)

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        procs = psutil.Process(self.proc.pid).children(recursive=True)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(workdir):
    server = MlflowServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.kill()
        server.log.close()


def test_mlflow_server_down_mid_study_ends_failed_naming_it_and_resume_completes(workdir, mlflow_server, ray_session):
    name, root = "mlflow-down", workdir / "studies"
    spec = grid_spec(workdir / "spec.yaml", name, LRS)
    env = driver_env(root, ray_session, MLFLOW_TRACKING_URI=mlflow_server.uri, **MLFLOW_CLIENT_ENV)
    db = ResultsDB(_sqlite(root, name, "results.db"))
    log = workdir / "driver.log"
    try:
        driver = Driver(["run", str(spec)], env, log)
        try:
            wait_for("the first finished trial", lambda: db.finished_trials(name) >= 1, driver, db=db)
            kept, finished = db.point_rows(name), db.trial_states(name)
            mlflow_server.kill()
            rc = driver.wait(timeout=STORE_DOWN_EXIT_S)
        finally:
            driver.cleanup()
            # Back on its port while the failed run's records are checked below (none of which
            # asks MLflow); ready before `study resume`.
            mlflow_server.launch()
        assert rc != 0, f"the study claimed success with its MLflow store down:\n{driver.output()}"

        _assert_nothing_lost(db, name, kept, finished)
        state = _study_state(db, name)
        assert state in ("failed", "interrupted"), f"ms_studies.state is {state!r} after the driver exited {rc}"
        reason = _state_reason(db, name)
        assert reason and REASON_MLFLOW.search(reason), reason
        status = subprocess.run([STUDY_BIN, "status", name], env=env, capture_output=True, text=True, timeout=120)
        assert f"{name}: {state}" in status.stdout, status.stdout

        mlflow_server.wait_ready()
        resume_to_the_end(name, env, log)
    finally:
        db.dispose()
    figures = assert_study_whole(name, db.url, mlflow_server.uri, LRS, STEPS)
    print(f"\nfault: MLflow server kill -9 after {len(kept)} points; study exit {rc}; after resume {figures}")
