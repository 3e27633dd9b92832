"""The results database: the analysis store (docs/results-db.md).

The tables (study/record/schema.py), one session helper that commits or rolls back,
Alembic migrations (study/record/migrations) applied whenever a database is opened, and idempotent
upserts keyed by (study, trial id) and (trial, step, member), so a retried or resumed trial never
writes a row twice. Table names carry the ``ms_`` prefix because Optuna's own tables (``studies``,
``trials``, ...) live in the same database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from study.errors import ServiceError
from study.record.schema import (  # noqa: F401 - the tables and states are part of this module's face
    MEMBER_STATES,
    STUDY_STATES,
    TERMINAL_TRIAL_STATES,
    TRIAL_STATES,
    Base,
    MetricPointRow,
    StudyRow,
    TrialRow,
    _now,
)

class ResultsDBError(ServiceError):
    """A results database operation failed; wraps the driver's error with what was attempted."""


VERSION_TABLE = "ms_alembic_version"


# --- opening -------------------------------------------------------------------------------------

_engines: dict[str, Engine] = {}


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def engine_for(url: str) -> Engine:
    """One engine per URL per process, migrated to the newest schema on first use."""
    if url not in _engines:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            if "///" in url and ":memory:" not in url:
                Path(url.split("///", 1)[1].split("?", 1)[0]).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 60}
        engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(engine, "connect", _sqlite_pragmas)
        try:
            migrate(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise ResultsDBError(f"results database {engine.url!r} cannot be opened: {exc}") from exc
        _engines[url] = engine
    return _engines[url]


def forget_engine(url: str) -> None:
    """Drops this process's engine for ``url`` (its SQLite file was removed, e.g. by an undone start)."""
    engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


BUSY_TIMEOUT_MS = 60_000
CHECKPOINT_WAIT_MS = 5_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    # WAL: a long `study report` or `study query` (readers) never blocks the driver's writes, and
    # the writes never block them. The mode is stored in the file, so read-only openers see it too.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


def migrate(engine: Engine) -> None:
    """Applies study/record/migrations up to head (Alembic, own version table beside Optuna's)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            # pysqlite opens no transaction before DDL, so two processes opening one new file (a
            # driver creating its study, `study results` reading it) could both find no schema and
            # both create it ("table ms_studies already exists"). BEGIN IMMEDIATE takes the write
            # lock first: the second waits (busy timeout) and then finds the schema at head.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


@contextlib.contextmanager
def session_scope(url_or_engine: str | Engine) -> Iterator[Session]:
    """The one session helper: commits on success, rolls back and raises ResultsDBError on failure."""
    engine = engine_for(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    session = sessionmaker(engine, expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        raise ResultsDBError(f"results database {engine.url!r}: {exc}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# --- writes (driver only) ------------------------------------------------------------------------


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if not math.isnan(x) else None


def _upsert(session: Session, model: type[Base], keys: dict[str, Any], values: dict[str, Any]) -> None:
    """INSERT .. ON CONFLICT(keys) DO UPDATE on SQLite and PostgreSQL; select-then-write elsewhere."""
    dialect = session.bind.dialect.name  # type: ignore[union-attr]
    table = model.__table__
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        stmt = insert(table).values(**keys, **values)
        stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_=values)
        session.execute(stmt)
        return
    row = session.execute(select(model).filter_by(**keys)).scalar_one_or_none()
    if row is None:
        session.add(model(**keys, **values))
    else:
        for k, v in values.items():
            setattr(row, k, v)


def upsert_study(url: str, **values: Any) -> int:
    with session_scope(url) as s:
        row = s.execute(select(StudyRow).where(StudyRow.name == values["name"])).scalar_one_or_none()
        if row is None:
            row = StudyRow(**values)
            s.add(row)
        else:
            for k, v in values.items():
                setattr(row, k, v)
        s.flush()
        return row.id


def set_study_state(url: str, name: str, state: str, **values: Any) -> None:
    with session_scope(url) as s:
        row = s.execute(select(StudyRow).where(StudyRow.name == name)).scalar_one()
        row.state = state
        for k, v in values.items():
            setattr(row, k, v)


def _trial(s: Session, study_id: int, trial_id: str) -> TrialRow | None:
    return s.execute(
        select(TrialRow).where(TrialRow.study_id == study_id, TrialRow.trial_id == trial_id)
    ).scalar_one_or_none()


def upsert_trial(url: str, study_id: int, trial_id: str, **values: Any) -> int:
    with session_scope(url) as s:
        row = _trial(s, study_id, trial_id)
        if row is None:
            values.setdefault("state", "pending")
            values.setdefault("params", {})
            values.setdefault("config", {})
            row = TrialRow(study_id=study_id, trial_id=trial_id, **values)
            s.add(row)
        else:
            for k, v in values.items():
                setattr(row, k, v)
        s.flush()
        return row.id


def start_trial(url: str, study_id: int, trial_id: str, started_at: dt.datetime, **values: Any) -> None:
    """A trial (re)started: a new row, or an existing one marked running again.

    Tune calls this on every start, retries and `study resume` included, so it keeps what an
    earlier start recorded: the first ``started_at``, the error message of the retry, and the
    state of a trial that already finished (Tune can resume a finished trial after a hard kill).
    """
    with session_scope(url) as s:
        row = _trial(s, study_id, trial_id)
        if row is None:
            s.add(TrialRow(study_id=study_id, trial_id=trial_id, state="running", started_at=started_at, **values))
            return
        for k, v in values.items():
            if getattr(row, k) in (None, {}, []):
                setattr(row, k, v)
        if row.state not in TERMINAL_TRIAL_STATES:
            row.state = "running"
        if row.started_at is None:
            row.started_at = started_at


def adopt_trial(url: str, study_id: int, optuna_trial_number: int, trial_id: str) -> bool:
    """Re-keys the row of an Optuna trial that a new Tune trial took over after a hard kill (see
    study/run/searcher.py: orphans); True if there was one. Its metric points stay; the new trial
    rewrites each step it reports."""
    with session_scope(url) as s:
        rows = s.execute(
            select(TrialRow).where(
                TrialRow.study_id == study_id,
                TrialRow.optuna_trial_number == optuna_trial_number,
                TrialRow.trial_id != trial_id,
            )
        ).scalars().all()
        if not rows or _trial(s, study_id, trial_id) is not None:
            return False
        for row in rows[1:]:
            s.delete(row)
        row = rows[0]
        row.trial_id = trial_id
        # Where it ran is the new population's to say (start_trial fills only empty fields).
        row.population = row.hostname = row.node_ip = row.ray_node_id = row.worker_pid = None
        return True


def report_trial(url: str, study_id: int, trial_id: str, mode: str, **values: Any) -> None:
    """One report: the row's last figures, and its best metric.

    ``best_metric_value`` is the best metric over the trial's reports while no member had
    diverged; once a member diverges the configuration has no best (None), so a study whose trials
    all diverged shows no best at all. It is kept in the row, so a resumed study goes on from it.
    ``updates_to_target`` (the step of a report that reached the target) keeps the earliest such
    step, so a report written again after a resume cannot move it later.
    """
    from study.record.outcome import better

    values = dict(values)
    reached = values.pop("updates_to_target", None)
    with session_scope(url) as s:
        row = _trial(s, study_id, trial_id)
        if row is None:
            row = TrialRow(study_id=study_id, trial_id=trial_id, state="running", params={}, config={})
            s.add(row)
        if reached is not None:
            row.updates_to_target = min(int(reached), row.updates_to_target if row.updates_to_target is not None
                                        else int(reached))
        for k, v in values.items():
            if v is not None:
                setattr(row, k, v)
        value = values.get("metric_value")
        if values.get("members_diverged"):
            row.best_metric_value = None
        elif value is not None and math.isfinite(value) and better(value, row.best_metric_value, mode):
            row.best_metric_value = value


def finish_trial(url: str, study_id: int, trial_id: str, state: str, ended_at: dt.datetime,
                 error_message: str | None = None) -> None:
    with session_scope(url) as s:
        row = _trial(s, study_id, trial_id)
        if row is None:
            row = TrialRow(study_id=study_id, trial_id=trial_id, params={}, config={})
            s.add(row)
        if row.state in TERMINAL_TRIAL_STATES and row.ended_at is not None:
            # Finished again (a trial resumed at its end, or its population stopped after one of
            # its seeds diverged): a configuration's first end is final (docs/study-specs.md).
            return
        row.state, row.ended_at = state, ended_at
        if error_message is not None:
            row.error_message = error_message
        if state == "diverged":
            row.best_metric_value = None


def record_points(url: str, trial_pk: int, step: int, members: list[dict[str, Any]]) -> None:
    """One row per (trial, step, member); writing the same report again updates in place."""
    with session_scope(url) as s:
        _points(s, trial_pk, step, members)


def record_trial_points(url: str, study_id: int, trial_id: str, step: int, members: list[dict[str, Any]]) -> None:
    """record_points for the trial (study, Ray trial id), its row created if need be."""
    with session_scope(url) as s:
        row = _trial(s, study_id, trial_id)
        if row is None:
            row = TrialRow(study_id=study_id, trial_id=trial_id, state="running", params={}, config={})
            s.add(row)
            s.flush()
        _points(s, row.id, step, members)


def _points(s: Session, trial_pk: int, step: int, members: list[dict[str, Any]]) -> None:
    for m in members:
        _upsert(
            s,
            MetricPointRow,
            {"trial_pk": trial_pk, "step": step, "member": int(m["member"])},
            {
                "seed": m.get("seed"),
                "error": _finite(m.get("error")),
                "loss": _finite(m.get("loss")),
                "mu": _finite(m.get("mu")),
                "lr": _finite(m.get("lr")),
                "status": m.get("status", "running"),
                "diverged_at": m.get("diverged_at"),
                "extra": {k: _finite(v) for k, v in (m.get("extra") or {}).items()},
                "recorded_at": _now(),
            },
        )


def delete_study(url: str, name: str) -> None:
    """Removes a study's rows (trials and points cascade) and its Optuna study, if present."""
    with session_scope(url) as s:
        row = s.execute(select(StudyRow).where(StudyRow.name == name)).scalar_one_or_none()
        if row is not None:
            s.delete(row)
    from study.run.optuna_study import delete_study as delete_optuna_study  # Optuna's owner drops its tables' rows

    delete_optuna_study(url, name)


def get_study(url: str, name: str) -> StudyRow | None:
    with session_scope(url) as s:
        return s.execute(select(StudyRow).where(StudyRow.name == name)).scalar_one_or_none()


def checkpoint(url: str) -> tuple[int, int, int] | None:
    """Moves an SQLite database's write-ahead log into the database file and empties the log
    (PRAGMA wal_checkpoint(TRUNCATE)), so that results.db alone, copied or mailed, is the whole
    study. Called when a study ends: SQLite folds the log in by itself only when the last
    connection to the file closes, which a killed driver never does and which cannot happen while
    another process (a notebook, `sqlite3`) holds the file open. Returns SQLite's (busy, log
    frames, frames checkpointed), or None for another database."""
    if not url.startswith("sqlite") or not sqlite_path_exists(url):
        return None
    with engine_for(url).connect() as conn:
        # A reader in the middle of a long query makes TRUNCATE wait for it: a few seconds, not the
        # minute the driver's writes wait (busy = 1 then: the rest lands at the next end).
        conn.exec_driver_sql(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
        try:
            busy, log, done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return int(busy), int(log), int(done)


def sqlite_path_exists(url: str) -> bool:
    """False for an SQLite file that is not there yet (so a look-up need not create it)."""
    if not url.startswith("sqlite") or ":memory:" in url or "///" not in url:
        return True
    path = url.split("///", 1)[1].split("?", 1)[0]
    if path.startswith("file:"):
        path = path[5:]
    return Path(path).exists()


# --- the driver's own queries (study/run/) --------------------------------------------------------


def study_trials(url: str, study_id: int) -> list[TrialRow]:
    """The study's configuration rows (ms_trials), oldest first."""
    with session_scope(url) as s:
        return list(s.execute(select(TrialRow).where(TrialRow.study_id == study_id).order_by(TrialRow.id)).scalars())


def pend_running_trials(url: str, study_id: int) -> None:
    """The study's configurations still running become pending: an unfinished run leaves them to
    `study resume`."""
    from sqlalchemy import update

    with session_scope(url) as s:
        s.execute(
            update(TrialRow).where(TrialRow.study_id == study_id, TrialRow.state == "running").values(state="pending")
        )


def advisory_lock(url: str, name: str) -> Any | None:
    """PostgreSQL's session advisory lock on the study's name, so that drivers on different
    machines sharing the results database run a study one at a time. Returns the connection that
    holds it (closing it releases the lock: a session's advisory locks end with it), or None when
    another session holds it."""
    import hashlib

    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(f"momentum-study:{name}".encode()).digest()[:8], "big", signed=True)
    conn = engine_for(url).connect()
    # Out of the pool: returned to it on close, the session (and the lock) would live on.
    conn.detach()
    if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
        conn.close()
        return None
    conn.commit()
    return conn
