"""What guards a PostgreSQL results database, on a real throwaway server (tests/pg.py), no Ray:

- `study query` runs the user's SQL in a READ ONLY transaction with a statement timeout, so a
  statement that writes is refused by the server itself, whatever shape it has (a SELECT calling
  nextval(), a data-modifying WITH), and one that runs too long is cancelled by the server;
- the advisory lock on the study's name: a second driver on the same results database (another
  study directory, as on another machine) is refused before it writes, and a driver killed with
  kill -9 leaves no lock behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text

from pg import LocalPostgres, postgres_bindir
from study.cli import main

PASSWORD = "Pw-" + os.urandom(6).hex()


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries absent (initdb/pg_ctl): run tests/setup_postgres.sh")
    server = LocalPostgres(tmp_path_factory.mktemp("pg"))
    server.start()
    try:
        url = server.create_database("results", "study", PASSWORD)
        server.psql("CREATE TABLE t (x integer); INSERT INTO t SELECT generate_series(1, 50); "
                    "CREATE SEQUENCE s; ALTER TABLE t OWNER TO study; ALTER SEQUENCE s OWNER TO study",
                    database="results")
        yield server, url
    finally:
        server.stop()


def _count(server: LocalPostgres) -> str:
    return server.psql("SELECT COUNT(*) || ' ' || (SELECT last_value FROM s) FROM t", database="results").strip()


# --- study query ---------------------------------------------------------------------------------


def test_query_on_postgres_reads(pg, capsys):
    _, url = pg
    assert main(["query", "q", "SELECT COUNT(*) AS n FROM t", "--results-db", url, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "50"]


@pytest.mark.parametrize("sql", ["DELETE FROM t", "CREATE TABLE u (y integer)",
                                 "WITH gone AS (DELETE FROM t RETURNING x) SELECT COUNT(*) FROM gone",
                                 "SELECT set_config('transaction_read_only', 'off', true), nextval('s')"])
def test_query_on_postgres_refuses_a_write(pg, capsys, sql):
    # Refused before the server runs it (psycopg2's server-side cursor takes only a query).
    server, url = pg
    before = _count(server)
    assert main(["query", "q", sql, "--results-db", url]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and PASSWORD not in err, err
    assert _count(server) == before
    assert "u" not in server.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                                  database="results").split()


@pytest.mark.parametrize("sql", [
    # Statements shaped as reads that write: only the read-only transaction stops them.
    "SELECT nextval('s')",
    "SELECT setval('s', 1000)",
])
def test_query_on_postgres_runs_in_a_read_only_transaction(pg, capsys, sql):
    server, url = pg
    before = _count(server)
    assert main(["query", "q", sql, "--results-db", url]) == 2
    err = capsys.readouterr().err
    assert "the database refused" in err and "read-only transaction" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert PASSWORD not in err
    assert _count(server) == before


def test_query_on_postgres_cannot_end_its_read_only_transaction(pg, capsys):
    server, url = pg
    before = _count(server)
    assert main(["query", "q", "COMMIT; DELETE FROM t", "--results-db", url]) == 2
    assert "more than one statement" in capsys.readouterr().err
    assert _count(server) == before


def test_query_on_postgres_is_cancelled_by_the_servers_statement_timeout(pg, capsys):
    # pg_sleep(600) returns nothing for ten minutes: only a server-side timeout ends it this side
    # of pytest's own patience, and the server says why (SQLSTATE 57014, "canceling statement").
    server, url = pg
    assert main(["query", "q", "SELECT pg_sleep(600)", "--results-db", url, "--timeout", "0.5"]) == 2
    assert "the query was stopped after 0.5 s, its time limit (--timeout raises it)" in capsys.readouterr().err
    active = server.psql("SELECT COUNT(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(600)%' "
                         "AND state = 'active'", database="results")
    assert active.strip() == "0", "the statement still runs on the server"


# --- the advisory lock ---------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from study.run.lock import StudyLock

    with StudyLock(Path(sys.argv[1]), sys.argv[2], sys.argv[3]):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin, or kills this process
""")


def _holder(study_dir: Path, name: str, url: str) -> subprocess.Popen:
    """A driver stand-in in another process (another PostgreSQL session), holding the study's lock
    from the line ``held`` on."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(study_dir), name, url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line == "held\n", f"the lock holder did not start: {line!r}, exit {proc.poll()}"
    return proc


def _advisory_locks(server: LocalPostgres) -> int:
    return int(server.psql("SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory'", database="results"))


def test_a_second_driver_on_one_postgres_results_db_is_refused_and_a_killed_one_leaves_no_lock(pg, tmp_path):
    from study.run.lock import StudyBusyError, StudyLock

    server, url = pg
    holder = _holder(tmp_path / "machine-a" / "pg-lock", "pg-lock", url)
    try:
        # Another study directory: the file lock does not see the holder, the advisory lock does.
        with pytest.raises(StudyBusyError, match="another driver on its results database"):
            with StudyLock(tmp_path / "machine-b" / "pg-lock", "pg-lock", url):
                pass
        # Another study on the same database is not held up, and its lock ends with the command
        # (this process lives on, as a notebook's would).
        with StudyLock(tmp_path / "machine-b" / "other", "other", url):
            assert _advisory_locks(server) == 2
        _wait_until(lambda: _advisory_locks(server) == 1, "the lock of a study whose command ended to go")
        holder.kill()  # kill -9: the server ends its session, and the lock with it
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    # The server notices the closed connection at its own pace: wait for the lock to go (an event
    # in pg_locks), bounded only so that a lock never released fails rather than hangs.
    _wait_until(lambda: _advisory_locks(server) == 0, "the killed holder's advisory lock to be released")
    with StudyLock(tmp_path / "machine-b" / "pg-lock", "pg-lock", url):
        assert _advisory_locks(server) == 1
    _wait_until(lambda: _advisory_locks(server) == 0, "the lock to go when its command ended")


def test_study_run_is_refused_before_it_writes_while_another_driver_holds_the_study_on_postgres(pg, tmp_path,
                                                                                                capsys):
    server, url = pg
    name = "pg-busy"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": name, "task": "addition", "config": {"updates": 4, "report_every": 2},
                                    "search": {"lr": {"type": "grid", "values": [1e-3]}},
                                    "sampler": {"type": "grid", "seed": 0}}))
    holder = _holder(tmp_path / "machine-a" / name, name, url)
    try:
        rc = main(["run", str(spec), "--dir", str(tmp_path / "machine-b"), "--results-db", url])
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "another driver on its results database" in err and PASSWORD not in err, err
    # Refused before it wrote: no study row, no Optuna study, no MLflow store of its own.
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            tables = set(c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
            if "ms_studies" in tables:
                assert c.execute(text("SELECT COUNT(*) FROM ms_studies WHERE name = :n"), {"n": name}).scalar() == 0
            if "studies" in tables:
                assert c.execute(text("SELECT COUNT(*) FROM studies WHERE study_name = :n"), {"n": name}).scalar() == 0
    finally:
        engine.dispose()
    assert not (tmp_path / "machine-b" / name / "mlflow.db").exists()


def _wait_until(condition, what: str, limit_s: float = 60) -> None:
    import time

    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
