"""The results database: the analysis store (docs/results-db.md).

Typed SQLAlchemy 2 models with their constraints, one session helper that commits or rolls back,
Alembic migrations (study/migrations) applied whenever a database is opened, and idempotent
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

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

TRIAL_STATES = ("pending", "running", "completed", "diverged", "failed", "pruned")
STUDY_STATES = ("running", "interrupted", "completed", "failed")
MEMBER_STATES = ("running", "completed", "diverged")
VERSION_TABLE = "ms_alembic_version"


class ResultsDBError(RuntimeError):
    """A results database operation failed; wraps the driver's error with what was attempted."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def _states(column: str, states: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(s) for s in states)})"


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "ms_studies"
    __table_args__ = (
        UniqueConstraint("name", name="uq_ms_studies_name"),
        CheckConstraint(_states("state", STUDY_STATES), name="ck_ms_studies_state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(40))
    metric: Mapped[str] = mapped_column(String(40))
    mode: Mapped[str] = mapped_column(String(3))
    num_samples: Mapped[int] = mapped_column(Integer)
    repeats: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12))
    spec_yaml: Mapped[str] = mapped_column(Text)
    tune_path: Mapped[str] = mapped_column(Text)
    mlflow_uri: Mapped[str] = mapped_column(Text)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64))
    mlflow_parent_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now, onupdate=_now)

    trials: Mapped[list["TrialRow"]] = relationship(back_populates="study", cascade="all, delete-orphan")


class TrialRow(Base):
    __tablename__ = "ms_trials"
    __table_args__ = (
        UniqueConstraint("study_id", "trial_id", name="uq_ms_trials_study_trial"),
        CheckConstraint(_states("state", TRIAL_STATES), name="ck_ms_trials_state"),
        Index("ix_ms_trials_study_state", "study_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("ms_studies.id", ondelete="CASCADE"))
    # Ray Tune's trial id: stable across retries and `study resume`.
    trial_id: Mapped[str] = mapped_column(String(64))
    optuna_trial_number: Mapped[int | None] = mapped_column(Integer)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12))
    # The sampled values, under the sampler's names (e.g. one_minus_mu_max).
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The full training config after trainables.parse_config, defaults included.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    members: Mapped[int] = mapped_column(Integer, default=1)
    members_diverged: Mapped[int] = mapped_column(Integer, default=0)
    last_step: Mapped[int | None] = mapped_column(Integer)
    # The study metric at the last report (mean over members) and the best so far.
    metric_value: Mapped[float | None] = mapped_column(Float)
    best_metric_value: Mapped[float | None] = mapped_column(Float)
    # What the searcher was told: the metric, or +inf (mode min) / -inf (max) once a member diverged.
    objective: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # Where the trial process last reported from (migration 0002): host, IP and Ray node id.
    hostname: Mapped[str | None] = mapped_column(String(255))
    node_ip: Mapped[str | None] = mapped_column(String(64))
    ray_node_id: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[StudyRow] = relationship(back_populates="trials")
    points: Mapped[list["MetricPointRow"]] = relationship(back_populates="trial", cascade="all, delete-orphan")


class MetricPointRow(Base):
    """One member's figures at one report step (docs/results-db.md)."""

    __tablename__ = "ms_metric_points"
    __table_args__ = (
        UniqueConstraint("trial_pk", "step", "member", name="uq_ms_metric_points_trial_step_member"),
        CheckConstraint(_states("status", MEMBER_STATES), name="ck_ms_metric_points_status"),
        CheckConstraint("member >= 0 AND step >= 0", name="ck_ms_metric_points_nonneg"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_pk: Mapped[int] = mapped_column(ForeignKey("ms_trials.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    member: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[float | None] = mapped_column(Float)
    loss: Mapped[float | None] = mapped_column(Float)
    mu: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(10))
    diverged_at: Mapped[int | None] = mapped_column(Integer)
    extra: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now, onupdate=_now)

    trial: Mapped[TrialRow] = relationship(back_populates="points")


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
        migrate(engine)
        _engines[url] = engine
    return _engines[url]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def migrate(engine: Engine) -> None:
    """Applies study/migrations up to head (Alembic, own version table beside Optuna's)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as conn:
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


def upsert_trial(url: str, study_id: int, trial_id: str, **values: Any) -> int:
    with session_scope(url) as s:
        row = s.execute(
            select(TrialRow).where(TrialRow.study_id == study_id, TrialRow.trial_id == trial_id)
        ).scalar_one_or_none()
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


def record_points(url: str, trial_pk: int, step: int, members: list[dict[str, Any]]) -> None:
    """One row per (trial, step, member); writing the same report again updates in place."""
    with session_scope(url) as s:
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


def get_study(url: str, name: str) -> StudyRow | None:
    with session_scope(url) as s:
        return s.execute(select(StudyRow).where(StudyRow.name == name)).scalar_one_or_none()


def sqlite_path_exists(url: str) -> bool:
    """False for an SQLite file that is not there yet (so a look-up need not create it)."""
    if not url.startswith("sqlite") or ":memory:" in url or "///" not in url:
        return True
    path = url.split("///", 1)[1].split("?", 1)[0]
    if path.startswith("file:"):
        path = path[5:]
    return Path(path).exists()
