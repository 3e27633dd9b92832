"""Fault injection for tests/test_faults.py: study drivers as subprocesses in process groups of
their own, the processes of the Ray they start, polling a results DB, and the invariants every
study must meet after a fault once it has been resumed to the end."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from conftest import STUDY_BIN

# Small enough that a trial lasts a few seconds on two busy cores, long enough to be killed mid-run;
# float64 so a resumed trial can be compared with an uninterrupted run exactly.
# Long enough (about 2.5 s a population here) that the work left after a test's trigger (a first
# point, a first finished trial) outlasts the fault it then injects, on machines several times
# faster than this one; few reports, so the records stay small.
FAULT_CONFIG = {
    "updates": 1000,
    "report_every": 250,
    "seq_length": 20,
    "eval_cases": 100,
    "batch_size": 20,
    "mu_0": 0.9,
    "dtype": "float64",
}


def grid_spec(path: Path, name: str, lrs: list[float], **overrides: Any) -> Path:
    """A grid study over ``lrs`` (so its configurations are known in advance), one trial at a time,
    each a fused population of two configurations."""
    spec = {
        "name": name,
        "task": "addition",
        "config": dict(FAULT_CONFIG),
        "search": {"lr": {"type": "grid", "values": list(lrs)}},
        "sampler": {"type": "grid", "seed": 0},
        "max_concurrent_trials": 1,
        "max_members": 2,
        "checkpoint_every": 1,
    }
    config = overrides.pop("config", {})
    spec["config"].update(config)
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


# A results DB the driver has not created (or migrated) yet: its file, a table, a column.
_NOT_THERE_YET = re.compile(r"unable to open database file|no such (table|column)|(relation|column) .* does not exist")


def driver_env(root: Path, ray_address: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a `study` subprocess: its own studies directory, and a Ray of its own,
    or the Ray at ``ray_address`` (the session's, conftest.ray_session) with this process's RAY_*
    settings, its token among them."""
    drop = ("MOMENTUM_STUDY_", "MLFLOW_") if ray_address else ("RAY_", "MOMENTUM_STUDY_", "MLFLOW_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    env.update(
        MOMENTUM_STUDY_DIR=str(root),
        TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.update(extra)
    return env


class Driver:
    """One `study ...` command in a process group (session) of its own.

    Ray's workers run in process groups of their own, so every descendant seen while the command
    runs is remembered and killed with it: a test that fails leaves nothing running.
    """

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.log = log
        self._log = open(log, "a")
        self._log.write(f"\n$ study {' '.join(args)}\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            [STUDY_BIN, *args], env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.seen: dict[int, psutil.Process] = {}

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            found = []
        for p in found:
            self.seen.setdefault(p.pid, p)
        return found

    def workers(self, marker: str = "ImplicitFunc") -> list[psutil.Process]:
        """The Ray worker processes running a trial (Ray retitles them ``ray::ImplicitFunc.train``)."""
        out = []
        for p in self.descendants():
            try:
                title = p.name() + " " + " ".join(p.cmdline())
            except psutil.Error:
                continue
            if marker in title:
                out.append(p)
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9 of the driver's process group and of every Ray process it started."""
        self.descendants()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in self.seen.values():
            try:
                p.kill()
            except psutil.Error:
                pass
        self.proc.wait(timeout=60)
        psutil.wait_procs(list(self.seen.values()), timeout=30)

    def wait(self, timeout: float) -> int:
        """The exit status; kills everything and fails the test if the command is still running."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            self.descendants()
            time.sleep(0.5)
        if self.alive():
            self.kill()
            raise AssertionError(f"`study` still running after {timeout:.0f}s; its log:\n{self.output()}")
        self.cleanup()
        return self.proc.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text()[-6000:]

    def cleanup(self) -> None:
        if self.alive():
            self.kill()
        for p in self.seen.values():
            try:
                if p.is_running():
                    p.kill()
            except psutil.Error:
                pass
        self._log.close()


def freeze_when(what: str, condition: Callable[[], Any], driver: Driver, slice_s: float = 0.02,
                timeout: float = 180) -> list[psutil.Process]:
    """Lets the driver's trial workers run only in short slices (SIGCONT, ``slice_s``, SIGSTOP) and
    returns them stopped once ``condition()`` holds while they are stopped.

    The condition is checked against what the workers themselves wrote (their checkpoints, say),
    so a fault injected next finds them exactly there: where a worker is when a test acts then
    no longer depends on how fast the machine trains (a slice is a few updates here; a race
    sized by a training budget was lost on fast machines and won on slow ones)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = driver.workers()
        for w in workers:
            try:
                w.suspend()
            except psutil.Error:
                pass
        if workers and condition():
            return workers
        if not driver.alive():
            raise AssertionError(f"the study ended (exit {driver.proc.returncode}) before {what}:\n{driver.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{driver.output()}")
        for w in workers:
            try:
                w.resume()
            except psutil.Error:
                pass
        time.sleep(slice_s)


def checkpoints(study_dir: Path) -> list[int]:
    """The steps of the trial checkpoints a study's workers have written into its Tune directory."""
    import torch

    steps = []
    for f in Path(study_dir).glob("**/checkpoint_*/train_state.pt"):
        try:
            steps.append(int(torch.load(f, map_location="cpu", weights_only=False)["step"]))
        except Exception:  # being written right now: not there yet
            continue
    return sorted(steps)


def resume_to_the_end(name: str, env: dict[str, str], log: Path, timeout: float = 240) -> None:
    """`study resume NAME` as a user runs it, to the end; fails the test unless it exits 0."""
    driver = Driver(["resume", name], env, log)
    try:
        rc = driver.wait(timeout=timeout)
    finally:
        driver.cleanup()
    assert rc == 0, driver.output()


def wait_for(what: str, condition: Callable[[], Any], driver: Driver | None, timeout: float = 180,
             db: "ResultsDB | None" = None) -> Any:
    """Polls ``condition`` until it is truthy; fails if the driver exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if driver is not None:
            driver.descendants()
            if not driver.alive():
                raise AssertionError(
                    f"the study ended (exit {driver.proc.returncode}) before {what}; last DB error "
                    f"{db and db.last_error!r}:\n{driver.output()}"
                )
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{driver.output()}" if driver else ""))


class ResultsDB:
    """Read access to a results DB (SQLite or PostgreSQL) that may not exist yet or may be down."""

    def __init__(self, url: str):
        self.url = url
        kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine = create_engine(_never_created(url), **kwargs)
        self.last_error: Exception | None = None

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as c:
            return list(c.execute(text(sql), params))

    def scalar(self, sql: str, default: Any = 0, **params: Any) -> Any:
        """One value (``default`` for NULL), or ``default`` while the database or its tables are not
        there yet (the driver creates them); any other failure raises: a check such as
        ``!= "completed"`` must not pass because the query failed."""
        value = self._when_there(lambda: self._one(sql, params), None)
        return default if value is None else value

    def populations(self, name: str, state: str | None = None) -> set[str]:
        """The Ray trials (populations) with a configuration in ms_trials (in ``state`` if given);
        none while the database or its tables are not there yet."""
        sql = ("SELECT DISTINCT t.population FROM ms_trials t JOIN ms_studies s ON s.id = t.study_id "
               "WHERE s.name = :n AND (:state IS NULL OR t.state = :state)")
        return self._when_there(lambda: {r.population for r in self.rows(sql, n=name, state=state)}, set())

    def _one(self, sql: str, params: dict[str, Any]) -> Any:
        with self.engine.connect() as c:
            return c.execute(text(sql), params).scalar()

    def _when_there(self, query: Callable[[], Any], missing: Any) -> Any:
        try:
            return query()
        except (OperationalError, ProgrammingError) as exc:
            self.last_error = exc
            if _NOT_THERE_YET.search(str(exc.orig)):
                return missing
            raise

    def trials(self, name: str) -> int:
        return self.scalar(
            "SELECT COUNT(*) FROM ms_trials t JOIN ms_studies s ON s.id = t.study_id WHERE s.name = :n", n=name
        )

    def finished_trials(self, name: str) -> int:
        return self.scalar(
            "SELECT COUNT(*) FROM ms_trials t JOIN ms_studies s ON s.id = t.study_id "
            "WHERE s.name = :n AND t.state IN ('completed', 'diverged')",
            n=name,
        )

    def trial_states(self, name: str) -> dict[str, str]:
        rows = self.rows(
            "SELECT t.trial_id, t.state FROM ms_trials t JOIN ms_studies s ON s.id = t.study_id WHERE s.name = :n",
            n=name,
        )
        return {r[0]: r[1] for r in rows}

    def points(self, name: str) -> int:
        return self.scalar(
            "SELECT COUNT(*) FROM ms_metric_points p JOIN ms_trials t ON t.id = p.trial_pk "
            "JOIN ms_studies s ON s.id = t.study_id WHERE s.name = :n",
            n=name,
        )

    def point_rows(self, name: str) -> dict[tuple[int, int, int], tuple]:
        """(Optuna trial number, step, member) -> (error, loss, recorded_at) of every metric point.

        Keyed by the configuration's Optuna number, not its trial id: a configuration whose
        population Tune's saved state lost (a driver killed right after asking for it) is trained by
        a new population, and its row, points included, is re-keyed to the new id (adopted)."""
        rows = self.rows(
            "SELECT t.optuna_trial_number, p.step, p.member, p.error, p.loss, p.recorded_at FROM ms_metric_points p "
            "JOIN ms_trials t ON t.id = p.trial_pk JOIN ms_studies s ON s.id = t.study_id WHERE s.name = :n",
            n=name,
        )
        return {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in rows}

    def dispose(self) -> None:
        self.engine.dispose()


def _never_created(url: str) -> str:
    """The URL opening an SQLite file only if it is there: SQLite creates a file it is asked to
    open, and a poll that created the study's results.db before the driver did would make the
    driver refuse the study as one that exists."""
    if url.startswith("sqlite:///") and "?" not in url:
        return f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=rw&uri=true"
    return url


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def assert_study_whole(name: str, results_db: str, mlflow_uri: str, lrs: list[float], steps: list[int],
                       members: int = 1) -> dict[str, int]:
    """Every configuration exactly once and every reported step exactly once, in the results DB,
    the Optuna storage and MLflow; nothing left RUNNING; the study completed. Returns figures."""
    import optuna
    from mlflow.tracking import MlflowClient

    db = ResultsDB(results_db)
    try:
        study = db.rows("SELECT id, state FROM ms_studies WHERE name = :n", n=name)
        assert len(study) == 1, study
        assert study[0].state == "completed", f"ms_studies.state is {study[0].state!r}"
        trials = db.rows("SELECT id, trial_id, state, params, optuna_trial_number FROM ms_trials WHERE study_id = :s",
                         s=study[0].id)
        per_lr = collections.Counter(_json(t.params)["lr"] for t in trials)
        assert per_lr == collections.Counter(lrs), f"ms_trials configurations: {dict(per_lr)}"
        assert {t.state for t in trials} == {"completed"}, [(t.trial_id, t.state) for t in trials]
        dup = db.rows(
            "SELECT p.trial_pk, p.step, p.member, COUNT(*) AS n FROM ms_metric_points p JOIN ms_trials t "
            "ON t.id = p.trial_pk WHERE t.study_id = :s GROUP BY p.trial_pk, p.step, p.member HAVING COUNT(*) > 1",
            s=study[0].id,
        )
        assert not dup, f"duplicated metric points: {dup}"
        for t in trials:
            got = db.rows("SELECT step, member FROM ms_metric_points WHERE trial_pk = :t", t=t.id)
            assert sorted(got) == sorted((s, m) for s in steps for m in range(members)), (t.trial_id, sorted(got))
        points = db.points(name)
    finally:
        db.dispose()

    ot = optuna.load_study(study_name=name, storage=results_db)
    states = collections.Counter(t.state.name for t in ot.trials)
    assert states == {"COMPLETE": len(lrs)}, f"Optuna trials by state: {dict(states)}"
    ot_lr = collections.Counter(t.params.get("lr") for t in ot.trials)
    assert ot_lr == collections.Counter(lrs), f"Optuna configurations: {dict(ot_lr)}"
    assert sorted(t.optuna_trial_number for t in trials) == sorted(t.number for t in ot.trials)

    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    run_lr = collections.Counter(float(r.data.params["lr"]) if "lr" in r.data.params else None for r in runs)
    assert run_lr == collections.Counter(lrs), f"MLflow child runs per configuration: {dict(run_lr)}"
    assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_id, r.info.status) for r in runs]
    assert {r.data.tags.get("trial_id") for r in runs} == {t.trial_id for t in trials}
    for r in runs:
        history = sorted(m.step for m in c.get_metric_history(r.info.run_id, "error"))
        assert history == steps, f"MLflow 'error' steps of run {r.info.run_id}: {history}"
    parents = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info.status for p in parents]
    assert parents[0].data.tags.get("state") == "completed", parents[0].data.tags
    return {"trials": len(trials), "points": points, "optuna_trials": len(ot.trials), "mlflow_runs": len(runs)}


def tpe_spec(path: Path, name: str, num_samples: int, **overrides: Any) -> Path:
    """A TPE study over ``lr`` (seed 0), one trial at a time, each a fused population of two
    configurations. Its first ``n_startup_trials`` (10) suggestions are TPE's random start-up, so
    what they are does not depend on any result: the same in a study killed and resumed."""
    spec = {
        "name": name,
        "task": "addition",
        "config": dict(FAULT_CONFIG),
        "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "sampler": {"type": "tpe", "seed": 0},
        "num_samples": num_samples,
        "max_concurrent_trials": 1,
        "max_members": 2,
        "checkpoint_every": 1,
    }
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


def tune_sessions(tune_dir: Path) -> list[str]:
    """The sessions that saved Ray Tune's experiment state in ``tune_dir``, oldest first (a session
    is named by its start time, so their names sort in time)."""
    return sorted(p.name.removeprefix("experiment_state-").removesuffix(".json")
                  for p in tune_dir.glob("experiment_state-*.json"))


def tune_state_lists(tune_dir: Path, trial_ids: set[str]) -> set[str]:
    """Which of ``trial_ids`` the newest experiment state Tune saved lists (what a resume restores)."""
    sessions = tune_sessions(tune_dir)
    if not sessions:
        return set()
    try:
        state = (tune_dir / f"experiment_state-{sessions[-1]}.json").read_text()
    except FileNotFoundError:
        return set()
    return {t for t in trial_ids if f'"trial_id": "{t}"' in state or f'\\"trial_id\\": \\"{t}\\"' in state}


def assert_each_suggestion_once(name: str, results_db: str, suggested: list[dict[str, Any]]) -> None:
    """Every configuration the sampler suggested trained exactly once, as that Optuna trial: each
    Optuna trial number once in ms_trials, with the values Optuna recorded for it and suggested
    for it (``suggested[number]``), no two configurations with equal values, and every Optuna
    trial finished with its row."""
    import optuna

    db = ResultsDB(results_db)
    try:
        rows = db.rows("SELECT t.trial_id, t.optuna_trial_number, t.params, t.state, t.population FROM ms_trials t "
                       "JOIN ms_studies s ON s.id = t.study_id WHERE s.name = :n", n=name)
    finally:
        db.dispose()
    numbers = collections.Counter(r.optuna_trial_number for r in rows)
    assert all(n == 1 for n in numbers.values()), f"Optuna trial numbers in ms_trials: {dict(numbers)}"
    values = collections.Counter(json.dumps(_json(r.params), sort_keys=True) for r in rows)
    assert all(n == 1 for n in values.values()), f"configurations trained more than once: {dict(values)}"
    assert len(rows) == len(suggested), f"{len(rows)} configurations in ms_trials, {len(suggested)} asked for"
    ot = {t.number: t for t in optuna.load_study(study_name=name, storage=results_db).trials}
    assert all(t.state.is_finished() for t in ot.values()), {n: t.state.name for n, t in ot.items()}
    # Every Optuna trial with values is a configuration (one left without values by a kill mid-ask
    # was never one).
    assert {n for n, t in ot.items() if t.params} == set(numbers), (sorted(ot), sorted(numbers))
    for r in rows:
        # A configuration re-run by a new population after the kill names that population.
        assert r.trial_id.rsplit("-", 1)[0] == r.population, (r.trial_id, r.population)
        params = _json(r.params)
        assert params == ot[r.optuna_trial_number].params, (r.trial_id, params, ot[r.optuna_trial_number].params)
        assert params == suggested[r.optuna_trial_number], (r.optuna_trial_number, params, "suggested",
                                                            suggested[r.optuna_trial_number])
