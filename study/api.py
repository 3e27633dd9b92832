"""The notebook API: a study's trials, metric points and any read-only SQL as pandas DataFrames.

    >>> from study import api
    >>> api.trials("quick")                  # one row per trial, sampled params as columns
    >>> api.metrics("quick")                 # one row per trial, step and member
    >>> api.query("quick", "SELECT ...")     # read-only SQL on the results database

Each takes ``directory=`` / ``results_db=`` like the command line (else MOMENTUM_STUDY_DIR /
MOMENTUM_STUDY_RESULTS_DB, else ./studies/<name>/results.db).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import create_engine, text

from study import results
from study.locations import resolve, studies_root

_SELECT = re.compile(r"^\s*(select|with|explain|values)\b", re.IGNORECASE)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


class QueryError(ValueError):
    pass


def _url(name: str, directory: str | None, results_db: str | None) -> str:
    url = resolve(name, directory, results_db).results_db
    if not results.sqlite_path_exists(url):
        raise QueryError(f"no results database for study {name!r} at {url}")
    return url


def read_only_engine(url: str) -> Any:
    """SQLite opened with mode=ro (the file cannot be written through it); other databases get a
    read-only transaction per query."""
    if url.startswith("sqlite") and "///" in url:
        path = Path(url.split("///", 1)[1].split("?", 1)[0]).resolve()
        return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    return create_engine(url)


def check_select(sql: str) -> str:
    """Only a single SELECT (or WITH ... SELECT) statement is let through."""
    stripped = _COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not _SELECT.match(stripped) or ";" in stripped:
        raise QueryError(
            f"only a single read-only SELECT statement is allowed, got: {sql.strip()[:80]!r}"
        )
    return stripped


def query(name: str, sql: str, directory: str | None = None, results_db: str | None = None) -> pd.DataFrame:
    """Runs one SELECT on the study's results database (read-only) and returns the rows."""
    sql = check_select(sql)
    url = _url(name, directory, results_db)
    engine = read_only_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SET TRANSACTION READ ONLY"))
            return pd.read_sql_query(text(sql), conn)
    finally:
        engine.dispose()


def trials(name: str, directory: str | None = None, results_db: str | None = None) -> pd.DataFrame:
    """One row per trial: state, current and best metric, Optuna number, MLflow run, sampled params."""
    url = _url(name, directory, results_db)
    results.engine_for(url)  # migrate before reading
    df = query(
        name,
        """SELECT t.trial_id, t.optuna_trial_number, t.state, t.last_step, t.metric_value,
                  t.best_metric_value, t.objective, t.members, t.members_diverged,
                  t.mlflow_run_id, t.started_at, t.ended_at, t.params, t.config
           FROM ms_trials t JOIN ms_studies s ON s.id = t.study_id
           WHERE s.name = :name ORDER BY t.optuna_trial_number, t.trial_id""".replace(":name", _quote(name)),
        directory,
        results_db,
    )
    import json

    params = df.pop("params").map(lambda v: json.loads(v) if isinstance(v, str) else (v or {}))
    df["config"] = df["config"].map(lambda v: json.loads(v) if isinstance(v, str) else v)
    return pd.concat([df, pd.DataFrame(list(params), index=df.index)], axis=1)


def metrics(name: str, directory: str | None = None, results_db: str | None = None) -> pd.DataFrame:
    """One row per trial, report step and member (member k trained with seed ``seed``)."""
    return query(
        name,
        """SELECT t.trial_id, t.optuna_trial_number, p.step, p.member, p.seed, p.error, p.loss,
                  p.mu, p.lr, p.status, p.diverged_at, p.extra
           FROM ms_metric_points p JOIN ms_trials t ON t.id = p.trial_pk
           JOIN ms_studies s ON s.id = t.study_id
           WHERE s.name = """
        + _quote(name)
        + " ORDER BY t.optuna_trial_number, t.trial_id, p.step, p.member",
        directory,
        results_db,
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
    import os

    shared = results_db or os.environ.get("MOMENTUM_STUDY_RESULTS_DB")
    urls = [shared] if shared else [results.sqlite_url(p) for p in sorted(studies_root(directory).glob("*/results.db"))]
    frames = []
    for url in urls:
        engine = read_only_engine(url)
        try:
            with engine.connect() as conn:
                frames.append(pd.read_sql_query(text(sql), conn))
        except Exception:
            continue
        finally:
            engine.dispose()
    if not frames:
        return pd.DataFrame(columns=["name", "task", "state", "num_samples", "finished", "running", "best", "metric", "created_at"])
    return pd.concat(frames, ignore_index=True)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
