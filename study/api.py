"""The notebook API: a study's trials, metric points and any read-only SQL as pandas DataFrames.

    >>> from study import api
    >>> api.trials("quick")               # one row per trial, searched fields as columns  # doctest: +SKIP
    >>> api.metrics("quick")              # one row per trial, step and member  # doctest: +SKIP
    >>> api.query("quick", "SELECT ...")  # read-only SQL on the results database  # doctest: +SKIP

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

import os
from pathlib import Path
from typing import Any

import pandas as pd

from study.locations import redact, resolve, studies_root
from study.record import queries, results
from study.record.queries import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT_S, ONLY_SELECT, QueryError
from study.spec.params import field_value

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ROWS", "DEFAULT_TIMEOUT_S", "ONLY_SELECT", "QueryError",
           "metrics", "query", "results_target", "studies", "trials"]


def results_target(name: str, directory: str | None = None, results_db: str | None = None) -> str | Path:
    """The study's results database as the functions here open it: the SQLite file itself when it
    is the default one (its path may hold '#' or '?', which a URL would misread), else the URL.
    Raises QueryError when an SQLite file is not there (a read never creates one)."""
    loc = resolve(name, directory, results_db)
    default = loc.study_dir / "results.db"
    if loc.results_db == results.sqlite_url(default):
        if not default.is_file():
            raise QueryError(f"no results database for study {name!r} at {default}")
        return default
    path = queries.sqlite_file(loc.results_db)
    if path is not None:
        if not path.is_file():
            raise QueryError(f"no results database for study {name!r} at {redact(loc.results_db)}")
        return path
    return loc.results_db


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
    return queries.read(results_target(name, directory, results_db), sql, params, timeout or None, max_rows or None,
                        max_bytes or None)


def trials(name: str, directory: str | None = None, results_db: str | None = None) -> pd.DataFrame:
    """One row per trial (a configuration): state, current and best metric, Optuna number, MLflow
    run, the population that trained it (Ray trial, node, worker process), and the searched values
    under the spec's field names (a ``transform: one_minus`` field as its own value: mu_max 0.993)."""
    target = results_target(name, directory, results_db)
    queries.migrate_file(target)
    df = queries.trials(target, name)
    params = df.pop("params")
    # Under the spec's field names (mu_max, not the sampler's one_minus_mu_max); the results
    # database and Optuna keep the sampler's names, the coordinate its model is fitted in.
    searched = [dict(field_value(k, v, c) for k, v in p.items()) for p, c in zip(params, df["config"])]
    return pd.concat([df, pd.DataFrame(searched, index=df.index)], axis=1)


def metrics(name: str, directory: str | None = None, results_db: str | None = None) -> pd.DataFrame:
    """One row per trial, report step and member (member k trained with seed ``seed``)."""
    return queries.metric_points(results_target(name, directory, results_db), name)


def studies(directory: str | None = None, results_db: str | None = None) -> pd.DataFrame:
    """Every study: in one shared results DB, or in each ``<dir>/<name>/results.db``."""
    shared = results_db or os.environ.get("MOMENTUM_STUDY_RESULTS_DB")
    targets: list[str | Path] = [shared] if shared else sorted(studies_root(directory).glob("*/results.db"))
    frames = []
    for target in targets:
        try:
            frames.append(queries.studies(target))
        except QueryError:
            continue
    if not frames:
        return pd.DataFrame(columns=queries.STUDIES_COLUMNS)
    return pd.concat(frames, ignore_index=True)

