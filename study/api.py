"""The notebook API: a study's trials, metric points and any read-only SQL as pandas DataFrames.

    >>> from study import api
    >>> api.trials("quick")                  # one row per trial, sampled params as columns
    >>> api.metrics("quick")                 # one row per trial, step and member
    >>> api.query("quick", "SELECT ...")     # read-only SQL on the results database

Each takes ``directory=`` / ``results_db=`` like the command line (else MOMENTUM_STUDY_DIR /
MOMENTUM_STUDY_RESULTS_DB, else ./studies/<name>/results.db).

``query`` is read-only by construction, not by inspecting the SQL: SQLite is opened with
``mode=ro`` (it cannot write or create the file) and an authorizer that allows reading only;
PostgreSQL runs the statement in a READ ONLY transaction. It stops after ``timeout`` seconds and
returns at most ``max_rows`` rows (``df.attrs["rows_cut"]`` says how many more there were); rows
are streamed, and a result of more than ``max_bytes`` is refused while it is read, so memory stays
bounded whatever the SQL asks for.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from study.record import results
from study.locations import redact, resolve, studies_root

# `study query` defaults (docs/results-db.md): --timeout, --max-rows and --max-bytes. In query()
# None lifts a limit; the command line always has a time and a byte limit.
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BYTES = 64 * 2**20
_CHUNK = 1000


class QueryError(ValueError):
    """A query that cannot run or was stopped; the message is one line."""


ONLY_SELECT = "only a single read-only SELECT statement is allowed"


def _target(name: str, directory: str | None, results_db: str | None) -> str | Path:
    """The study's results database: the SQLite file itself when it is the default one (its path
    may hold '#' or '?', which a URL would misread), else the URL."""
    loc = resolve(name, directory, results_db)
    default = loc.study_dir / "results.db"
    if loc.results_db == results.sqlite_url(default):
        if not default.is_file():
            raise QueryError(f"no results database for study {name!r} at {default}")
        return default
    path = _sqlite_file(loc.results_db)
    if path is not None:
        if not path.is_file():
            raise QueryError(f"no results database for study {name!r} at {redact(loc.results_db)}")
        return path
    return loc.results_db


def _sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except Exception:
        raise QueryError(f"--results-db {redact(url)!r} is not a database URL") from None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or ":memory:" in parsed.database:
        return None
    db = parsed.database
    if db.startswith("file:"):
        from urllib.parse import unquote, urlsplit

        db = unquote(urlsplit(db).path)
    return Path(db).resolve()


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
        path = _sqlite_file(target)
        if path is None:
            return create_engine(target, poolclass=NullPool)
        target = path
    uri = Path(target).resolve().as_uri() + "?mode=ro"

    return create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False), poolclass=NullPool
    )


def _read(
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


def query(
    name: str,
    sql: str,
    directory: str | None = None,
    results_db: str | None = None,
    *,
    params: dict[str, Any] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> pd.DataFrame:
    """Runs one statement read-only on the study's results database and returns its rows.

    Stops after ``timeout`` seconds, keeps the first ``max_rows`` rows and refuses a result of
    more than ``max_bytes`` (strings and blobs by their length, other values 8 bytes each); None
    or 0 lifts a limit. ``df.attrs["rows_cut"]`` is how many rows were left out (``rows_cut_exact``
    False: at least that many, the time limit stopped the count). ``params`` binds ``:name``
    placeholders. Errors (a typo, an attempted write, a limit reached) raise QueryError.
    """
    if not sql.strip():
        raise QueryError(f"{ONLY_SELECT}: the query is empty")
    return _read(_target(name, directory, results_db), sql, params, timeout or None, max_rows or None, max_bytes or None)


def trials(name: str, directory: str | None = None, results_db: str | None = None) -> pd.DataFrame:
    """One row per trial (a configuration): state, current and best metric, Optuna number, MLflow
    run, the population that trained it (Ray trial, node, worker process), sampled params."""
    target = _target(name, directory, results_db)
    _migrate(target)
    df = _read(
        target,
        """SELECT t.trial_id, t.optuna_trial_number, t.state, t.last_step, t.metric_value,
                  t.best_metric_value, t.objective, t.members, t.members_diverged,
                  t.mlflow_run_id, t.started_at, t.ended_at, t.population, t.hostname, t.node_ip,
                  t.worker_pid, t.params, t.config
           FROM ms_trials t JOIN ms_studies s ON s.id = t.study_id
           WHERE s.name = :name ORDER BY t.optuna_trial_number, t.trial_id""",
        {"name": name},
    )
    params = df.pop("params").map(lambda v: json.loads(v) if isinstance(v, str) else (v or {}))
    df["config"] = df["config"].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    return pd.concat([df, pd.DataFrame(list(params), index=df.index)], axis=1)


def _migrate(target: str | Path) -> None:
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


def metrics(name: str, directory: str | None = None, results_db: str | None = None) -> pd.DataFrame:
    """One row per trial, report step and member (member k trained with seed ``seed``)."""
    return _read(
        _target(name, directory, results_db),
        """SELECT t.trial_id, t.optuna_trial_number, p.step, p.member, p.seed, p.error, p.loss,
                  p.mu, p.lr, p.status, p.diverged_at, p.extra
           FROM ms_metric_points p JOIN ms_trials t ON t.id = p.trial_pk
           JOIN ms_studies s ON s.id = t.study_id
           WHERE s.name = :name ORDER BY t.optuna_trial_number, t.trial_id, p.step, p.member""",
        {"name": name},
    )


def studies(directory: str | None = None, results_db: str | None = None) -> pd.DataFrame:
    """Every study: in one shared results DB, or in each ``<dir>/<name>/results.db``."""
    sql = """SELECT s.name, s.task, s.state, s.num_samples,
                    (SELECT COUNT(*) FROM ms_trials t WHERE t.study_id = s.id
                       AND t.state IN ('completed', 'diverged', 'failed', 'pruned')) AS finished,
                    (SELECT COUNT(*) FROM ms_trials t WHERE t.study_id = s.id AND t.state = 'running') AS running,
                    CASE s.mode WHEN 'min' THEN (SELECT MIN(best_metric_value) FROM ms_trials t WHERE t.study_id = s.id)
                                ELSE (SELECT MAX(best_metric_value) FROM ms_trials t WHERE t.study_id = s.id) END AS best,
                    s.metric, s.created_at
             FROM ms_studies s ORDER BY s.created_at"""
    shared = results_db or os.environ.get("MOMENTUM_STUDY_RESULTS_DB")
    targets: list[str | Path] = [shared] if shared else sorted(studies_root(directory).glob("*/results.db"))
    frames = []
    for target in targets:
        try:
            frames.append(_read(target, sql, {}))
        except QueryError:
            continue
    if not frames:
        return pd.DataFrame(columns=["name", "task", "state", "num_samples", "finished", "running", "best", "metric", "created_at"])
    return pd.concat(frames, ignore_index=True)


def _quote(value: str) -> str:
    """An SQL string literal. Kept for callers that still build SQL; prefer ``params``."""
    return "'" + value.replace("'", "''") + "'"
