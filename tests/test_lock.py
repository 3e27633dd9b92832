"""One driver per study (study/run/lock.py), without Ray: the lock on the study directory held by
another process (a real OS file lock, real files), refused at once with the holder named, and
released by the kernel when the holder is killed with kill -9. (The PostgreSQL advisory lock:
tests/test_postgres_guards.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from study.run.lock import LOCK_FILE, StudyBusyError, StudyLock, is_locked

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from study.run.lock import StudyLock

    with StudyLock(Path(sys.argv[1]), "s", "sqlite:///unused.db"):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin, or kills this process
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / "s"``, from its line ``held`` on."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "s")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "held\n", f"the lock holder did not start: {line!r}, exit {proc.poll()}"
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_a_second_driver_is_refused_at_once_naming_the_holder(tmp_path, holder):
    assert is_locked(tmp_path / "s")
    with pytest.raises(StudyBusyError) as err:
        with StudyLock(tmp_path / "s", "s", "sqlite:///unused.db"):
            pytest.fail("entered a study another process holds")
    message = str(err.value)
    assert "study 's' is being run or resumed by another process" in message
    assert f"(pid {holder.pid})" in message
    assert "`study run` or `study resume`" in message
    # The refused driver took nothing from the holder: its pid file still names the holder.
    assert (tmp_path / "s" / (LOCK_FILE + ".pid")).read_text() == str(holder.pid)


def test_a_driver_killed_with_kill_9_leaves_no_lock(tmp_path, holder):
    holder.kill()
    holder.wait(timeout=30)
    # The kernel dropped the lock with the process; its pid file may stay, and does not matter.
    assert not is_locked(tmp_path / "s")
    with StudyLock(tmp_path / "s", "s", "sqlite:///unused.db"):
        assert is_locked(tmp_path / "s")


def test_a_driver_that_ends_releases_the_lock_and_removes_its_pid_file(tmp_path, holder):
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    assert not is_locked(tmp_path / "s")
    assert not (tmp_path / "s" / (LOCK_FILE + ".pid")).exists()


def test_the_lock_is_released_when_the_command_raises_and_can_be_taken_again(tmp_path):
    with pytest.raises(RuntimeError, match="the study failed"):
        with StudyLock(tmp_path / "s", "s", "sqlite:///unused.db"):
            raise RuntimeError("the study failed")
    assert not is_locked(tmp_path / "s")
    with StudyLock(tmp_path / "s", "s", "sqlite:///unused.db"):
        pass


def test_a_study_never_run_is_not_locked_and_checking_creates_nothing(tmp_path):
    assert not is_locked(tmp_path / "nobody")
    assert not (tmp_path / "nobody").exists()


def test_resume_of_a_study_being_run_is_refused_before_its_database_is_opened(tmp_path, holder):
    """The running driver may be inside a write of its results DB (here: its write lock held):
    `study resume` names the running driver at once instead of waiting on the database and failing
    with "database is locked" (seen when a driver was paused mid-write)."""
    import sqlite3

    from conftest import study_in_process
    from study.record import results

    url = results.sqlite_url(tmp_path / "s" / "results.db")
    results.upsert_study(url, name="s", task="addition", metric="error", mode="min", num_samples=1, repeats=1,
                         state="running", spec_yaml="name: s\n", tune_path="tune", mlflow_uri="sqlite:///m.db")
    results.forget_engine(url)
    writer = sqlite3.connect(tmp_path / "s" / "results.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the running driver's write, in progress
    try:
        resumed = study_in_process("resume", "s", "--dir", str(tmp_path))
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert resumed.returncode == 2, resumed.stdout + resumed.stderr
    assert "study 's' is being run or resumed by another process" in resumed.stderr, resumed.stderr
    assert f"(pid {holder.pid})" in resumed.stderr
