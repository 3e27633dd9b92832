"""Where a study lives, as an operator meets it (issue 18, "Locations"): a location that cannot
hold a study is refused before any work, a refused `run` leaves an existing study's files as they
were, and a study that ended leaves its whole SQLite results database in results.db (no data
left in the write-ahead log), so copying that one file copies the study.

A real `study` process where the study runs; the refusals before any work run the executable's
code (study.cli.main.main) in this process. Real files and real SQLite; no mocks.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import quick_spec, study_in_process


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MOMENTUM_STUDY_", "MLFLOW_"))}
    env.update(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


@pytest.fixture
def refusal(monkeypatch):
    """`study ARGS` in this process (study.cli.main.main, the executable's code), run in ``cwd``:
    for refusals that come before any work, where an interpreter start per command is only cost
    (`study run` imports torch, Ray, MLflow and Optuna first). The executable's own refusals are
    in tests/test_bad_input.py (test_no_hang_*) and tests/test_memory_limits.py."""

    def call(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)  # a stray write in the working directory is seen, as with cwd=
        return study_in_process(*args, env=_env())

    return call


def _spec_file(tmp_path: Path, name: str, **overrides) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(quick_spec(name, **overrides)))
    return path


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: its bytes and modification time (nanoseconds)."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    return " ".join(err.split())


def test_an_mlflow_store_that_is_a_text_file_is_refused_before_any_work(tmp_path, refusal):
    """It used to start Ray and end in a traceback; the same file as --results-db was refused."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    spec = _spec_file(tmp_path, "txt")
    for option in ("--mlflow-uri", "--results-db"):
        out = refusal("run", str(spec), "--dir", str(tmp_path / "studies"), option, f"sqlite:///{notes}", cwd=tmp_path)
        message = _one_line(out.stderr)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "Traceback" not in out.stderr and "Ray" not in out.stdout + out.stderr
        assert option in message and "is not an SQLite database" in message and str(notes) in message, message
    assert notes.read_text() == "not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "txt.yaml"]


def test_a_studies_directory_that_is_a_symbolic_link_loop_is_a_clean_error(tmp_path, refusal):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    spec = _spec_file(tmp_path, "looped")
    for args in (["run", str(spec)], ["status"], ["status", "looped"], ["query", "looped", "SELECT 1"]):
        out = refusal(*args, "--dir", str(loop), cwd=tmp_path)
        message = _one_line(out.stderr)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and "RuntimeError" not in out.stderr
        assert "--dir" in message and "loop" in message.lower(), message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "looped.yaml"]


_KILLED_WRITER = """
import os, sys
from study.record import results
url = sys.argv[1]
results.upsert_study(url, name="kept", task="addition", metric="error", mode="min", num_samples=3, repeats=1,
                     state="interrupted", spec_yaml="name: kept", tune_path="tune", mlflow_uri="sqlite://")
os._exit(0)  # as a killed driver: no connection closed, so -wal and -shm stay
"""


def _killed_writer(db: Path) -> None:
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, f"sqlite:///{db}"], check=True, timeout=120)


def test_a_refused_run_of_an_existing_study_touches_none_of_its_files(tmp_path, refusal):
    """A `run` of a name that exists used to open the study's results.db, rewriting its -wal and
    -shm; the refusal now comes from the directory alone."""
    root = tmp_path / "studies"
    (root / "kept").mkdir(parents=True)
    _killed_writer(root / "kept" / "results.db")
    assert (root / "kept" / "results.db-wal").stat().st_size > 0 and (root / "kept" / "results.db-shm").exists()
    before = _files(root)
    out = refusal("run", str(_spec_file(tmp_path, "kept")), "--dir", str(root), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    message = _one_line(out.stderr)
    assert "study 'kept' already exists" in message and "study resume kept" in message, message
    assert _files(root) == before


def _rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_checkpoint_moves_the_write_ahead_log_into_the_database_file(tmp_path):
    from study.record import results

    db = tmp_path / "results.db"
    _killed_writer(db)
    (tmp_path / "before").mkdir()
    shutil.copyfile(db, tmp_path / "before" / "results.db")  # the file alone: its study is only in the log
    assert _rows(tmp_path / "before" / "results.db", "SELECT name FROM sqlite_master WHERE name = 'ms_studies'") == []
    busy, _, _ = results.checkpoint(results.sqlite_url(db))
    assert busy == 0
    assert (tmp_path / "results.db-wal").stat().st_size == 0
    (tmp_path / "after").mkdir()
    shutil.copyfile(db, tmp_path / "after" / "results.db")
    assert _rows(tmp_path / "after" / "results.db", "SELECT name, state FROM ms_studies") == [("kept", "interrupted")]
    assert results.checkpoint("postgresql://u@127.0.0.1:1/x") is None


def test_a_study_that_ended_has_its_whole_database_in_results_db(ray_session, tmp_path):
    """SQLite folds the write-ahead log into the file only when the last connection closes: a
    driver killed after its study ended (a hung exit, a scheduler's kill) left the end of the study
    in results.db-wal, and results.db alone, copied, lacked it. The driver now checkpoints when the
    study ends, before it says so: frozen (SIGSTOP) as soon as it prints its end, then killed, it
    leaves an empty log and a results.db that holds the whole study."""
    from faults_util import Driver, driver_env, wait_for

    root = tmp_path / "studies"
    log = tmp_path / "driver.log"
    # On the session's Ray: what is checked is the driver's own database connections.
    driver = Driver(["run", str(_spec_file(tmp_path, "whole", num_samples=2))], driver_env(root, ray_session), log)
    try:
        wait_for("the study's end", lambda: "study whole completed" in log.read_text(), driver, timeout=600)
        os.killpg(driver.proc.pid, signal.SIGSTOP)  # it cannot close a connection from here on
        wal = root / "whole" / "results.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size
        copy = tmp_path / "copy" / "results.db"
        copy.parent.mkdir()
        shutil.copyfile(root / "whole" / "results.db", copy)  # the one file, as a user copies or mails it
    finally:
        driver.kill()
        driver.cleanup()
    assert _rows(copy, "SELECT state FROM ms_studies WHERE name = 'whole'") == [("completed",)]
    assert _rows(copy, "SELECT COUNT(*) FROM ms_trials WHERE state = 'completed'") == [(2,)]
    assert _rows(copy, "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'") == [(2,)]  # Optuna's rows too


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_results_database_is_refused(tmp_path, url, refusal):
    """It used to train the whole study and then have nothing to record it in."""
    out = refusal("run", str(_spec_file(tmp_path, "mem")), "--dir", str(tmp_path / "studies"), "--results-db", url,
                cwd=tmp_path)
    message = _one_line(out.stderr)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"--results-db (MOMENTUM_STUDY_RESULTS_DB) {url!r} is not allowed: an in-memory" in message, message
    assert "cannot hold a study" in message
    assert not (tmp_path / "studies").exists()
