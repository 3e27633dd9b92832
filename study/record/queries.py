"""Reads of the results database: every SELECT the command line, the notebook API and the reports
run, by name, and the read-only runner of a user's own SQL (``study query``, ``api.query``).

A user's SQL is read-only by construction, not by inspecting it: SQLite is opened with ``mode=ro``
(it cannot write or create the file) and an authorizer that allows reading only; PostgreSQL runs
the statement in a READ ONLY transaction. It stops after ``timeout`` seconds and returns at most
``max_rows`` rows (``df.attrs["rows_cut"]`` says how many more there were); rows are streamed, and a
result of more than ``max_bytes`` is refused while it is read, so memory stays bounded whatever the
SQL asks for.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from study.locations import redact
from study.record import database, results

# `study query` defaults (docs/results-db.md): --timeout, --max-rows and --max-bytes. In read()
# None lifts a limit; the command line always has a time and a byte limit.
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BYTES = 64 * 2**20
_CHUNK = 1000


class QueryError(ValueError):
    """A query that cannot run or was stopped; the message is one line."""


ONLY_SELECT = "only a single read-only SELECT statement is allowed"


def sqlite_file(url: str) -> Path | None:
    """The SQLite file a results-database URL names (None for another database)."""
    try:
        return database.sqlite_file(url)
    except Exception:
        raise QueryError(f"--results-db {redact(url)!r} is not a database URL") from None


# SQLite authorizer actions a SELECT needs; anything else (writes, ATTACH, pragmas that set, ...)
# is refused with "not authorized". mode=ro already stops writes to the file itself.
_SQLITE_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_SQLITE_READ_PRAGMAS = {
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "database_list", "collation_list", "function_list", "compile_options",
}


def _sqlite_authorizer(action: int, arg1: Any, arg2: Any, db: Any, trigger: Any) -> int:
    if action in _SQLITE_READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and str(arg1).lower() in _SQLITE_READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def read_only_engine(target: str | Path) -> Any:
    """SQLite opened with mode=ro through a percent-encoded file: URI (so '#' and '?' in a directory
    name stay part of the path; the file is never created); other databases as their URL."""
    if isinstance(target, str):
        path = sqlite_file(target)
        if path is None:
            return create_engine(target, poolclass=NullPool)
        target = path
    uri = Path(target).resolve().as_uri() + "?mode=ro"

    return create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False), poolclass=NullPool
    )


def read(
    target: str | Path,
    sql: str,
    params: dict[str, Any] | None = None,
    timeout: float | None = None,
    max_rows: int | None = None,
    max_bytes: int | None = None,
) -> pd.DataFrame:
    """Runs one statement read-only; ``params`` binds :name placeholders (our own SQL), else the
    SQL goes to the driver as it is (a user's SQL: a ':' or ';' inside a string literal is data).

    Rows are fetched a few at a time (as many as the byte budget leaves room for, at the size of
    the largest row so far); the time limit is checked between fetches as well as inside SQLite."""
    shown = redact(str(target))
    engine = read_only_engine(target)
    cut, cut_exact = 0, True
    deadline = time.monotonic() + timeout if timeout else None
    size, largest = 0, 0  # largest 0: no row seen yet, so the first fetch is one row
    try:
        with engine.connect() as conn:
            dialect = engine.dialect.name
            if dialect == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                if timeout:
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
                if params is None and _statements(sql) > 1:
                    raise QueryError(f"{ONLY_SELECT}: this is more than one statement; remove the extra ';'")
            elif dialect == "sqlite":
                raw: Any = conn.connection.dbapi_connection
                # Set here, after SQLAlchemy's own set-up queries on the connection.
                raw.set_authorizer(_sqlite_authorizer)
                if deadline is not None:
                    raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
                if max_bytes:
                    # No string or blob over the budget is ever built, in the result or on the way
                    # (SQLite answers "string or blob too big"): one value cannot pass the limit.
                    raw.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(1, min(max_bytes, 2**31 - 1)))
            # Rows come as fetched: a server-side cursor on PostgreSQL; SQLite steps its cursor
            # row by row anyway.
            conn = conn.execution_options(stream_results=True)
            result = conn.execute(text(sql), params) if params is not None else conn.exec_driver_sql(sql)
            if not result.returns_rows:
                raise QueryError(f"{ONLY_SELECT}: this statement returns no rows")
            columns = list(result.keys())
            rows: list[Any] = []
            while max_rows is None or len(rows) < max_rows:
                _check_time(deadline, timeout)
                want = _fetch_size(max_bytes, size, largest)
                if max_rows is not None:
                    want = min(want, max_rows - len(rows))
                chunk = result.fetchmany(want)
                for row in chunk:
                    n = _row_bytes(row)
                    size, largest = size + n, max(largest, n)
                if max_bytes and size > max_bytes:
                    raise QueryError(
                        f"the query's result passed its byte limit: {_bytes(size)} in {len(rows) + len(chunk):,} rows "
                        f"read, the limit is {_bytes(max_bytes)} (--max-bytes raises it; --max-rows or a narrower "
                        "SELECT keeps the result smaller)"
                    )
                rows.extend(chunk)
                if len(chunk) < want:
                    break
            else:
                # Count what is cut without keeping it, as many at a time as the byte budget
                # holds; the time limit may stop the count.
                try:
                    while True:
                        if deadline is not None and time.monotonic() > deadline:
                            cut_exact = False
                            break
                        chunk = result.fetchmany(_fetch_size(max_bytes, 0, largest))
                        if not chunk:
                            break
                        cut += len(chunk)
                        largest = max([largest, *(_row_bytes(r) for r in chunk)])
                except DBAPIError:
                    cut_exact = False
            result.close()
    except QueryError:
        raise
    except DBAPIError as exc:
        raise QueryError(_explain(exc, timeout, shown, max_bytes)) from None
    except SQLAlchemyError as exc:
        raise QueryError(f"results database {shown}: {_one_line(exc)}") from None
    finally:
        engine.dispose()
    df = pd.DataFrame.from_records([tuple(r) for r in rows], columns=columns, coerce_float=True)
    df.attrs["rows_cut"] = cut
    df.attrs["rows_cut_exact"] = cut_exact
    df.attrs["max_rows"] = max_rows
    return df


def _fetch_size(max_bytes: int | None, size: int, largest: int) -> int:
    """How many rows to fetch next: as many of the largest row so far as the byte budget has room
    for (at least one, at most _CHUNK)."""
    if not max_bytes:
        return _CHUNK
    if not largest:
        return 1
    return max(1, min(_CHUNK, (max_bytes - size) // largest))


def _row_bytes(row: Any) -> int:
    """What a row holds, in bytes: its strings and blobs by their length, anything else 8."""
    return sum(len(v) if isinstance(v, (str, bytes, bytearray, memoryview)) else 8 for v in row)


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit} ({n:,} bytes)"
    return f"{n:,} bytes"


def _check_time(deadline: float | None, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise QueryError(_stopped(timeout))


def _stopped(timeout: float | None) -> str:
    return f"the query was stopped after {timeout:g} s, its time limit (--timeout raises it)"


def _explain(exc: DBAPIError, timeout: float | None, shown: str, max_bytes: int | None = None) -> str:
    orig = exc.orig
    message = _one_line(orig if orig is not None else exc)
    if exc.statement is None:
        return f"--results-db {shown}: cannot connect: {message}"
    lowered = message.lower()
    if timeout and ("interrupted" in lowered or "statement timeout" in lowered or "canceling statement" in lowered):
        return _stopped(timeout)
    if max_bytes and "too big" in lowered:
        return (
            f"the query's result passed its byte limit: it holds (or builds) a value over {_bytes(max_bytes)}, "
            "the limit (--max-bytes raises it)"
        )
    if any(w in lowered for w in ("readonly", "read-only", "read only", "not authorized", "authorization denied")):
        return f"{ONLY_SELECT}: the database refused this statement ({message})"
    if "one statement at a time" in lowered:
        return f"{ONLY_SELECT}: this is more than one statement; remove the extra ';'"
    return f"the query failed: {message}"


def _one_line(exc: Any) -> str:
    return " ".join(str(exc).split())[:500]


def _statements(sql: str) -> int:
    """How many statements a PostgreSQL string holds: ';' outside quotes, dollar quotes and comments
    ends one (psycopg2 would run them all, and a COMMIT would end the read-only transaction)."""
    count, i, n, pending = 0, 0, len(sql), False
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = i + 1
            while j < n and not (sql[j] == c and (j + 1 >= n or sql[j + 1] != c)):
                j += 2 if sql[j] == c else 1
            i, pending = j + 1, True
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c == "$":
            end_tag = sql.find("$", i + 1)
            tag = sql[i : end_tag + 1] if end_tag > 0 else ""
            if tag and (tag == "$$" or tag[1:-1].isidentifier()):
                close = sql.find(tag, end_tag + 1)
                i = n if close < 0 else close + len(tag)
            else:
                i += 1
            pending = True
        elif c == ";":
            count += pending
            pending = False
            i += 1
        else:
            pending = pending or not c.isspace()
            i += 1
    return count + pending




# --- named queries -------------------------------------------------------------------------------

_TRIALS = """SELECT t.trial_id, t.optuna_trial_number, t.state, t.last_step, t.metric_value,
                    t.best_metric_value, t.target, t.updates_to_target, t.objective, t.members, t.members_diverged,
                    t.mlflow_run_id, t.started_at, t.ended_at, t.population, t.hostname, t.node_ip,
                    t.worker_pid, t.params, t.config
             FROM ms_trials t JOIN ms_studies s ON s.id = t.study_id
             WHERE s.name = :name ORDER BY t.optuna_trial_number, t.trial_id"""

_METRIC_POINTS = """SELECT t.trial_id, t.optuna_trial_number, p.step, p.member, p.seed, p.error, p.loss,
                           p.mu, p.lr, p.status, p.diverged_at, p.extra
                    FROM ms_metric_points p JOIN ms_trials t ON t.id = p.trial_pk
                    JOIN ms_studies s ON s.id = t.study_id
                    WHERE s.name = :name ORDER BY t.optuna_trial_number, t.trial_id, p.step, p.member"""

_FINISHED = f"t.state IN ({', '.join(repr(s) for s in results.TERMINAL_TRIAL_STATES)})"
# A study's best is the best result (metric_value: the study metric at the last report, the mean
# over seeds) of a configuration that completed with no seed diverged: the verdict's best.
_COMPLETED = "t.state = 'completed' AND COALESCE(t.members_diverged, 0) = 0"

_STUDIES = f"""SELECT s.name, s.task, s.state, s.num_samples,
                      (SELECT COUNT(*) FROM ms_trials t WHERE t.study_id = s.id AND {_FINISHED}) AS finished,
                      (SELECT COUNT(*) FROM ms_trials t WHERE t.study_id = s.id AND t.state = 'running') AS running,
                      CASE s.mode
                          WHEN 'min' THEN (SELECT MIN(metric_value) FROM ms_trials t WHERE t.study_id = s.id AND {_COMPLETED})
                          ELSE (SELECT MAX(metric_value) FROM ms_trials t WHERE t.study_id = s.id AND {_COMPLETED})
                      END AS best,
                      s.metric, s.created_at
               FROM ms_studies s ORDER BY s.created_at"""
STUDIES_COLUMNS = ["name", "task", "state", "num_samples", "finished", "running", "best", "metric", "created_at"]

# Every column of the study's row (a database from before a migration lacks the newer ones) and
# how many of its configurations finished.
_STUDY_ROW = f"""SELECT s.*, (SELECT COUNT(*) FROM ms_trials t WHERE t.study_id = s.id AND {_FINISHED}) AS finished
                 FROM ms_studies s WHERE s.name = :name"""


def migrate_file(target: str | Path) -> None:
    """Brings an older results database to the newest schema before reading it; an SQLite file is
    opened by its path, so a '#' or '?' in a directory name cannot send it to another file."""
    if isinstance(target, Path):
        engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(target, timeout=60), poolclass=NullPool)
        try:
            results.migrate(engine)
        finally:
            engine.dispose()
    else:
        results.engine_for(target)


def trials(target: str | Path, name: str) -> pd.DataFrame:
    """A study's configurations (``ms_trials``), one row each, ``params`` and ``config`` decoded."""
    df = read(target, _TRIALS, {"name": name})
    df["params"] = df["params"].map(lambda v: json.loads(v) if isinstance(v, str) else (v or {}))
    df["config"] = df["config"].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    return df


def metric_points(target: str | Path, name: str) -> pd.DataFrame:
    """A study's metric points, one row per configuration, report step and member."""
    return read(target, _METRIC_POINTS, {"name": name})


def studies(target: str | Path) -> pd.DataFrame:
    """Every study in one results database, with its finished and running configurations and best."""
    return read(target, _STUDIES, {})


def study_row(target: str | Path, name: str) -> dict[str, Any] | None:
    """The study's row of ``ms_studies`` as a dict, with ``finished`` (its configurations in a
    terminal state), or None if there is no such study. Read with `study query`'s limits."""
    df = read(target, _STUDY_ROW, {"name": name}, DEFAULT_TIMEOUT_S, DEFAULT_MAX_ROWS, DEFAULT_MAX_BYTES)
    return None if df.empty else df.iloc[0].to_dict()


def study_with_trials(url: str, name: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The study's row, its configurations and their metric points, through the ORM (what
    study/report/data.py builds its frames from); None if there is no such study."""
    with results.session_scope(url) as s:
        study = s.execute(select(results.StudyRow).where(results.StudyRow.name == name)).scalar_one_or_none()
        if study is None:
            return None
        trial_rows: list[dict[str, Any]] = []
        point_rows: list[dict[str, Any]] = []
        for t in study.trials:
            trial_rows.append(
                {
                    "trial_pk": t.id,
                    "trial_id": t.trial_id,
                    "optuna_trial_number": t.optuna_trial_number,
                    "state": t.state,
                    "params": dict(t.params or {}),
                    "config": dict(t.config or {}),
                    "members": t.members,
                    "members_diverged": t.members_diverged,
                    "last_step": t.last_step,
                    "error_message": t.error_message,
                    "target": t.target,
                    "updates_to_target": t.updates_to_target,
                }
            )
            for p in t.points:
                point_rows.append(
                    {
                        "trial_id": t.trial_id,
                        "step": p.step,
                        "member": p.member,
                        "seed": p.seed,
                        "error": p.error,
                        "loss": p.loss,
                        "mu": p.mu,
                        "lr": p.lr,
                        "status": p.status,
                        "diverged_at": p.diverged_at,
                        "extra": dict(p.extra or {}),
                    }
                )
        info = {
            "name": study.name, "task": study.task, "metric": study.metric, "mode": study.mode, "state": study.state,
            "spec_yaml": study.spec_yaml, "mlflow_uri": study.mlflow_uri,
            "mlflow_parent_run_id": study.mlflow_parent_run_id, "code_version": study.code_version,
            "created_at": study.created_at, "updated_at": study.updated_at,
        }
    return info, trial_rows, point_rows
