"""What the `study` command line prints, as a user sees it (issue #13): progress without a terminal,
`study stop` and `study delete`, counts after an interrupt, a moved study directory, resuming a
finished study, query errors, 80-column tables and full-precision CSV/JSON. Real Ray, SQLite and
MLflow. The commands whose process is the point run as subprocesses: `study run` and `study stop`
(a signal to another process), `study resume` (its own Ray; none for a finished study), `study
delete` (its prompt), and a terminal's width; what a command only prints or refuses runs
study.cli.main.main in this process (conftest.study_in_process)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import sqlite3
import struct
import subprocess
import termios
import time
from io import StringIO
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import STUDY_BIN, quick_spec, study_in_process
from study import api

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROGRESS_LINE = re.compile(
    r"study (?P<name>\S+): (?P<finished>\d+)/(?P<total>\d+) finished, (?P<running>\d+) running \| "
    r"elapsed (?P<elapsed>\d+:\d\d:\d\d) \| ETA (?P<eta>\d+:\d\d:\d\d|unknown) \| "
    r"best (?P<metric>\w+) (?P<best>none finished yet|\S+ \(trial \S+\))$"
)


def _cli(*args: str, env: dict | None = None, timeout: float = 300, stdin: str | None = None):
    return subprocess.run([STUDY_BIN, *args], capture_output=True, text=True, timeout=timeout, env=env, input=stdin)


def _in_terminal(*args: str, columns: int = 80, timeout: float = 120) -> str:
    """A command's output on a real terminal (a pseudo-terminal) of the given width."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen([STUDY_BIN, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the command ended and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=30) == 0
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")


def _finished(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
            return c.execute(
                "SELECT COUNT(*) FROM ms_trials WHERE state IN ('completed', 'diverged', 'failed', 'pruned')"
            ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


# --- credentials in a spec -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["author", "authored_by", "authority", "max_tokens", "tokenizer", "compass"])
def test_credential_rule_lets_ordinary_words_pass(key):
    from study.errors import SpecError
    from study.spec.credentials import find_credentials
    from study.spec.model import load_spec

    assert find_credentials({"config": {key: "x"}}) is None
    with pytest.raises(SpecError) as refused:  # refused as an unknown field, not as a credential
        load_spec(quick_spec("cred-test", **{key: "x"}))
    assert "credential" not in str(refused.value)
    assert key in str(refused.value)


@pytest.mark.parametrize("key", [
    "password", "db_password", "passwd", "secret", "client_secrets", "token", "access_token", "x-auth-token",
    "authToken", "auth", "Authorization", "api_key", "apiKey", "API-KEY", "private_key", "sshPrivateKey",
    "credentials", "oauth_client", "bearer",
])
def test_credential_rule_refuses_credential_keys(key):
    from study.errors import SpecError
    from study.spec.model import load_spec

    with pytest.raises(SpecError, match="looks like a credential"):
        load_spec(quick_spec("cred-test", sampler={"type": "tpe", "options": {key: "x"}}))


# --- query ------------------------------------------------------------------------------------------


def test_query_typo_is_one_line_with_exit_2_and_a_quoted_semicolon_is_data(quick_study):
    root = str(quick_study.root)
    out = study_in_process("query", quick_study.name, "SELEC trial_id FROM ms_trials", "--dir", root)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the query failed:") and "syntax error" in lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""
    out = study_in_process("query", quick_study.name, "SELECT trial_id FROM ms_trails", "--dir", root)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: the query failed: no such table: ms_trails"
    ]

    out = study_in_process("query", quick_study.name, "SELECT ';' AS s, 'a;b' AS t", "--dir", root, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"s": ";", "t": "a;b"}]


# --- tables, CSV and JSON ----------------------------------------------------------------------------


def test_status_and_results_fit_an_80_column_terminal(quick_study):
    root = str(quick_study.root)
    trial_ids = list(api.trials(quick_study.name, results_db=quick_study.results_db)["trial_id"])
    for args in (["status"], ["status", quick_study.name], ["results", quick_study.name],
                 ["results", quick_study.name, "--metrics"]):
        shown = _in_terminal(*args, "--dir", root)
        lines = shown.splitlines()
        assert len(lines) > 3, shown
        assert max(len(line) for line in lines) <= 80, shown
        assert "…" not in shown, shown  # no cell cut short
        if args == ["status"]:  # each study on one line, its creation time included
            row = next(line for line in lines if quick_study.name in line)
            assert re.search(r"completed\s+3/3\s.*\d{4}-\d\d-\d\d \d\d:\d\d$", row.rstrip()), shown
        else:
            for tid in trial_ids:  # each trial id whole, on one line
                assert re.search(rf"(^|\s){re.escape(tid)}(\s|$)", shown, re.M), (tid, shown)
    status = _in_terminal("status", quick_study.name, "--dir", root)
    assert "completed, 3/3 trials finished" in status


def test_csv_and_json_keep_every_digit_and_tables_round(quick_study):
    root, name = str(quick_study.root), quick_study.name
    db = quick_study.study_dir / "results.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        stored = dict(c.execute("SELECT trial_id, json_extract(params, '$.lr') FROM ms_trials").fetchall())
        points = c.execute("SELECT COUNT(*), SUM(loss) FROM ms_metric_points").fetchone()
    assert len(stored) == 3 and all(len(repr(v)) > 12 for v in stored.values())  # lr has many digits

    out = study_in_process("results", name, "--dir", root, "--format", "csv")
    df = pd.read_csv(StringIO(out.stdout))
    assert dict(zip(df["trial_id"], df["lr"])) == stored
    out = study_in_process("results", name, "--dir", root, "--format", "json")
    rows = json.loads(out.stdout)
    assert {r["trial_id"]: r["lr"] for r in rows} == stored
    out = study_in_process("results", name, "--dir", root, "--format", "json", "--metrics")
    rows = json.loads(out.stdout)
    assert len(rows) == points[0] and math.fsum(r["loss"] for r in rows) == pytest.approx(points[1], rel=1e-15)

    table = study_in_process("results", name, "--dir", root).stdout
    for tid, lr in stored.items():
        assert f"{lr:.4g}" in table and repr(lr) not in table

    out = study_in_process("status", name, "--dir", root, "--format", "json")
    status = json.loads(out.stdout)
    assert status["state"] == "completed" and status["finished"] == 3 and status["num_samples"] == 3
    assert {t["trial"] for t in status["trials"]} == set(stored)
    # best: the best final result (the study metric at the last report, the mean over seeds) of a
    # completed configuration; lowest_seen: a configuration's lowest at any report, named apart.
    finals = [t["error"] for t in status["trials"] if t["state"] == "completed"]
    assert status["best"] == min(finals) and all(isinstance(t["lowest_seen"], float) for t in status["trials"])
    out = study_in_process("status", name, "--dir", root, "--format", "csv")
    assert set(pd.read_csv(StringIO(out.stdout))["trial"]) == set(stored)
    out = study_in_process("status", "--dir", root, "--format", "json")
    assert [s["name"] for s in json.loads(out.stdout)] == [name]


# --- stop, progress without a terminal, counts after an interrupt, a moved study, resume, delete -----


def test_stop_interrupts_a_running_study_and_a_moved_copy_resumes(ray_session, study_env, tmp_path):
    name = "stoppable"
    spec = quick_spec(name, num_samples=3, max_concurrent_trials=1, checkpoint_every=1, fuse="off")
    # Long enough (about 6 s a trial here) that the study is still running after the first trial
    # and two commands, on machines several times faster than this one: a worker is reused from
    # one trial to the next, so nothing else slows the study down.
    spec["config"].update(updates=2500, report_every=250)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAY_ADDRESS": ray_session, "MOMENTUM_STUDY_PROGRESS_EVERY": "1"}
    db = study_env / name / "results.db"
    log_out, log_err = tmp_path / "run.out", tmp_path / "run.err"

    with open(log_out, "w") as o, open(log_err, "w") as e:  # no terminal: progress as plain lines
        driver = subprocess.Popen([STUDY_BIN, "run", str(path)], env=env, stdout=o, stderr=e)
    try:
        deadline = time.time() + 300
        while _finished(db) < 1 and time.time() < deadline and driver.poll() is None:
            time.sleep(0.3)
        assert driver.poll() is None, "the study ended before it could be stopped"

        busy = study_in_process("delete", name, "--yes", env=env)
        assert busy.returncode == 2 and f"`study stop {name}` first" in busy.stderr
        assert db.exists() and _finished(db) >= 1

        stop = _cli("stop", name, env=env)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert re.search(rf"asked its driver \(pid {driver.pid}\) to stop", stop.stdout)
        found = re.search(rf"study {name} stopped: interrupted, (\d+)/3 trials finished", stop.stdout)
        assert found, stop.stdout
        assert driver.wait(timeout=60) == 130
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    finished = _finished(db)
    assert int(found.group(1)) == finished and 1 <= finished < 3
    driver_out, driver_err = log_out.read_text(), log_err.read_text()
    assert f"continue it with: study resume {name}" in driver_out
    assert "Tuner.restore" not in driver_out + driver_err  # Ray's own hint is not shown beside ours

    # Progress without a terminal: one line per trial end and every second, with the rule's best.
    lines = [ln for ln in driver_err.splitlines() if ln.startswith((f"study {name}:", "trial "))]
    parsed = [PROGRESS_LINE.search(ln) for ln in lines]
    assert all(parsed) and len(parsed) >= 3, driver_err
    ends = [ln for ln in lines if re.match(r"trial \S+ completed; ", ln)]
    assert len(ends) == finished, driver_err
    assert all(m["total"] == "3" and m["metric"] == "error" for m in parsed)
    last = parsed[-1]
    assert int(last["finished"]) == finished
    assert any(m["eta"] != "unknown" for m in parsed)
    trials = api.trials(name)
    # The best is a completed configuration's result (its metric at its last report; issue 21).
    completed = trials[trials["state"] == "completed"].set_index("trial_id")["metric_value"]
    assert last["best"] == f"{completed.min():.4g} (trial {completed.idxmin()})"

    # After the interrupt the study counts what finished, not "3/3".
    status = study_in_process("status", name, env=env)
    assert status.returncode == 0, status.stderr
    assert f"interrupted, {finished}/3 trials finished" in status.stdout
    assert "3/3" not in status.stdout

    # The study directory moves; status, results and query read the moved copy, resume continues it.
    moved_root = tmp_path / "elsewhere"
    moved_root.mkdir()
    shutil.move(str(study_env / name), str(moved_root / name))
    env_moved = {**env, "MOMENTUM_STUDY_DIR": str(moved_root)}
    assert f"{finished}/3 trials finished" in study_in_process("status", name, env=env_moved).stdout
    csv = study_in_process("results", name, "--format", "csv", env=env_moved).stdout
    assert len(pd.read_csv(StringIO(csv))) == len(trials)
    query = study_in_process("query", name, "SELECT tune_path FROM ms_studies", "--format", "json", env=env_moved)
    assert json.loads(query.stdout) == [{"tune_path": "tune"}]
    before = trials[trials["state"] == "completed"].set_index("trial_id")["ended_at"]

    # On a Ray of its own, as a user would: its workers take the moved MLflow store from the driver.
    own_ray = {k: v for k, v in env_moved.items() if k != "RAY_ADDRESS"}
    resumed = _cli("resume", name, env=own_ray, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not (study_env / name).exists()  # nothing written at the old place
    after = api.trials(name, str(moved_root))
    assert len(after) == 3 and set(after["state"]) == {"completed"}
    assert all(after.set_index("trial_id").loc[t, "ended_at"] == ended for t, ended in before.items())
    for _, steps in api.metrics(name, str(moved_root)).groupby("trial_id")["step"]:
        assert sorted(steps) == list(range(250, 2501, 250))
    c = MlflowClient(f"sqlite:///{moved_root / name / 'mlflow.db'}")
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    assert len(runs) == 3 and {r.data.tags["state"] for r in runs} == {"completed"}
    assert "completed, 3/3 trials finished" in study_in_process("status", name, env=env_moved).stdout

    # A finished study: nothing to do, and no Ray started for it (Ray says so on stderr when it
    # starts; a wall-clock bound here failed on a loaded machine).
    again = _cli("resume", name, env=env_moved)
    assert again.returncode == 0 and again.stdout.strip() == f"study {name} is already completed: nothing to do"
    assert "Ray" not in again.stderr

    # Stopping a study that is not running says so.
    idle = study_in_process("stop", name, env=env_moved)
    assert idle.returncode == 0 and idle.stdout.strip() == f"study {name} is not running: nothing to stop"


def test_delete_asks_then_removes_rows_optuna_mlflow_and_the_tune_directory(ray_session, study_env, tmp_path):
    from study.run import runner
    from study.locations import resolve
    from study.spec.model import load_spec

    name = "deletable"
    mlflow_uri = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"  # a store outside the study directory
    storage = tmp_path / "tune-storage"  # and Ray Tune's experiment outside it too
    spec = load_spec(quick_spec(name, num_samples=1))
    loc = resolve(name, study_env, None, mlflow_uri, None, str(storage))
    assert runner.run(spec, loc) == "completed"
    tune_dir = storage / name / "tune"
    assert tune_dir.is_dir() and (study_env / name).is_dir()
    args = (name, "--mlflow-uri", mlflow_uri)  # Tune's directory is found where the study stored it

    declined = _cli("delete", *args, stdin="n\n")
    assert declined.returncode == 1 and "nothing deleted" in declined.stdout
    assert "1 trials and the Optuna study" in declined.stdout
    assert re.search(r"MLflow experiment \S+ \(2 runs\)", declined.stdout)  # the parent and the trial
    assert f"Ray Tune directory {tune_dir}" in declined.stdout
    assert tune_dir.is_dir() and len(api.trials(name)) == 1

    done = _cli("delete", *args, stdin="y\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(f"study {name} deleted")
    assert not (study_env / name).exists() and not tune_dir.exists()
    assert MlflowClient(mlflow_uri).get_experiment_by_name(name) is None
    assert study_in_process("status", "--dir", str(study_env)).stdout.strip() == f"no studies yet in {study_env}"
    gone = study_in_process("delete", name)
    assert gone.returncode == 2 and f"no study named {name!r}" in gone.stderr

    # The name is free again: the same study runs anew in the same stores.
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(quick_spec(name, num_samples=1)))
    env = {**os.environ, "RAY_ADDRESS": ray_session}
    again = _cli("run", str(spec_file), "--mlflow-uri", mlflow_uri, "--storage", str(storage), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(api.trials(name)) == 1
    assert MlflowClient(mlflow_uri).get_experiment_by_name(name).lifecycle_stage == "active"
    ot = optuna.load_study(study_name=name, storage=loc.results_db)
    assert len(ot.trials) == 1
