"""Where a study lives: the embedded defaults and the options (or environment) that replace them.

With nothing set, everything sits under one study directory ``<dir>/<name>/``: the results
database ``results.db``, the MLflow store ``mlflow.db`` with artifacts in ``mlartifacts/``, and
Ray Tune's experiment in ``tune/``. Each option points the same code elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from study.errors import LocationError
from study.record.database import hide_password
from study.record.results import sqlite_url

ENV_DIR = "MOMENTUM_STUDY_DIR"
ENV_RESULTS_DB = "MOMENTUM_STUDY_RESULTS_DB"
ENV_MLFLOW = "MLFLOW_TRACKING_URI"
ENV_RAY = "RAY_ADDRESS"
ENV_STORAGE = "MOMENTUM_STUDY_STORAGE"


@dataclass(frozen=True)
class Locations:
    root: Path
    name: str
    results_db: str
    mlflow_uri: str
    ray_address: str | None
    # Ray Tune's storage (checkpoints, experiment state): a shared filesystem path or a URI such as
    # s3://bucket/prefix that every node reaches; None keeps it in the study directory.
    storage: str | None = None

    @property
    def study_dir(self) -> Path:
        return self.root / self.name

    @property
    def tune_path(self) -> Path:
        """Ray Tune's experiment directory (absolute, as Tune requires)."""
        return self.study_dir / "tune"

    @property
    def tune_uri(self) -> str:
        """Where Tune's experiment lives: ``<storage>/<name>/tune``, else the study directory's."""
        if not self.storage:
            return str(self.tune_path.resolve())
        if "://" in self.storage:
            return f"{self.storage.rstrip('/')}/{self.name}/tune"
        return str((Path(self.storage) / self.name / "tune").resolve())

    @property
    def artifact_location(self) -> str | None:
        """Artifacts in the study's directory unless a tracking server (http, https) chooses its
        own: a database store (SQLite, PostgreSQL) has no artifact root, and MLflow's default is
        ./mlruns in whatever directory the driver was started from."""
        if not self.mlflow_uri.startswith(("http://", "https://")):
            return (self.study_dir / "mlartifacts").resolve().as_uri()
        return None


def studies_root(directory: str | os.PathLike[str] | None = None) -> Path:
    given = directory or os.environ.get(ENV_DIR) or "studies"
    try:
        return Path(given).resolve()
    except (RuntimeError, OSError) as exc:  # Python raises RuntimeError for a symbolic link loop
        raise LocationError(
            f"--dir ({ENV_DIR}) {str(given)!r} is not usable: {exc}; give a directory (or a symbolic link "
            "that ends in one)"
        ) from None


def named_study_dir(root: Path, name: str) -> Path:
    """``root/name`` for a NAME that is a study's name (study/spec/names.py), never a path; a study
    directory that is a symbolic link must stay inside ``root`` (commands read, write and delete
    what it names)."""
    from study.spec.names import name_problem

    problem = name_problem(name, "NAME")
    if problem:
        raise LocationError(f"study {problem}; a study is named, not given by its path (--dir says where studies are)")
    path = root / name
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if target == root or not target.is_relative_to(root) or not target.is_dir():
            raise LocationError(
                f"study {name!r}: its directory {str(path)!r} is a symbolic link to {str(target)!r}, "
                f"which is not a study directory inside {str(root)!r}; give --dir the directory that holds it"
            )
    return path


def resolve(
    name: str,
    directory: str | os.PathLike[str] | None = None,
    results_db: str | None = None,
    mlflow_uri: str | None = None,
    ray_address: str | None = None,
    storage: str | None = None,
) -> Locations:
    """Options first, then environment variables, then the embedded defaults. Raises
    LocationError for a name that is not a study's name or a --dir that cannot be resolved."""
    root = studies_root(directory)
    here = named_study_dir(root, name)
    return Locations(
        root=root,
        name=name,
        results_db=with_driver(results_db or os.environ.get(ENV_RESULTS_DB) or sqlite_url(here / "results.db")),
        mlflow_uri=with_driver(mlflow_uri or os.environ.get(ENV_MLFLOW) or sqlite_url(here / "mlflow.db")),
        ray_address=ray_address or os.environ.get(ENV_RAY) or None,
        storage=storage or os.environ.get(ENV_STORAGE) or None,
    )


def with_driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a bare
    ``postgresql://`` as psycopg (3), while this project installs psycopg2."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def redact(url: str | None) -> str | None:
    """A URL fit to print or store: any password replaced by ``***`` (database and HTTP URLs)."""
    if not url or "@" not in url or "://" not in url:
        return url
    try:
        return hide_password(url)
    except Exception:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
