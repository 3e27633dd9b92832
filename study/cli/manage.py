"""`study delete NAME`: everything a study wrote, after a confirmation."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pyarrow.fs
from rich.console import Console

from study import api
from study.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, locate
from study.locations import LocationError, Locations, redact
from study.record import results, tracking_experiment
from study.run.lock import StudyBusyError, StudyLock, is_locked


def delete(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Removes everything a study wrote, after a confirmation: its rows and Optuna study in the
    results database, its MLflow experiment with its runs, Ray Tune's directory, the study directory."""
    loc = locate(args, args.name)
    if loc.study_dir.is_symlink():
        # rmtree would not follow it: the study's files would stay while it says "deleted".
        raise LocationError(
            f"study {args.name!r}: its directory {str(loc.study_dir)!r} is a symbolic link to "
            f"{os.path.realpath(loc.study_dir)!r}; `study delete` does not follow links: remove the link, "
            "or delete the study where it lives (--dir)"
        )
    row = results.get_study(loc.results_db, args.name) if results.sqlite_path_exists(loc.results_db) else None
    if row is None and not loc.study_dir.is_dir():
        err.print(f"[bold red]error:[/] no study named {args.name!r} in {redact(loc.results_db)} or {loc.study_dir}",
                  highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    if loc.study_dir.is_dir() and is_locked(loc.study_dir):
        raise StudyBusyError(f"study {args.name!r} is running; `study stop {args.name}` first, then delete it")
    mlflow_uri = study_mlflow_uri(loc, row.mlflow_uri if row is not None else None)
    tune_dir = _tune_dir(loc, row.tune_path if row is not None else None)
    if tune_dir and not tune_dir.rstrip("/").endswith(f"/{args.name}/tune"):
        # Every study keeps Tune's experiment in <place>/<name>/tune; a row naming another place
        # (an edited or foreign database) does not get to remove it.
        err.print(f"note: the Ray Tune directory the database names, {tune_dir}, is not <...>/{args.name}/tune; "
                  "it is left as it is", highlight=False, soft_wrap=True)
        tune_dir = None
    # An SQLite store that is not there holds no experiment, and looking must not create it.
    experiment = (None if mlflow_uri.startswith("sqlite") and not results.sqlite_path_exists(mlflow_uri)
                  else tracking_experiment.experiment_runs(mlflow_uri, args.name))
    what: list[str] = []
    if row is not None:
        trials = len(api.trials(args.name, args.dir, args.results_db))
        what.append(f"{trials} trials and the Optuna study in {redact(loc.results_db)}")
    if experiment is not None:
        what.append(f"MLflow experiment {experiment[0]} ({experiment[1]} runs) in {redact(mlflow_uri)}")
    if tune_dir and not _inside(tune_dir, loc.study_dir):
        what.append(f"Ray Tune directory {tune_dir}")
    if loc.study_dir.is_dir():
        what.append(f"the study directory {loc.study_dir}")
    out.print(f"study {args.name}: this deletes", highlight=False)
    for w in what:
        out.print(f"  {w}", highlight=False, soft_wrap=True)
    if not args.yes:
        sys.stdout.flush()
        try:
            answer = input(f"delete study {args.name}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            out.print("nothing deleted (--yes skips this question)", highlight=False)
            return EXIT_FAILED
    try:
        with StudyLock(loc.study_dir, args.name, loc.results_db):  # no driver starts it meanwhile
            if row is not None:
                results.delete_study(loc.results_db, args.name)
            if experiment is not None:
                tracking_experiment.delete_experiment(mlflow_uri, experiment[0], args.name)
            if tune_dir:
                _remove_tune_dir(tune_dir)
    except StudyBusyError:
        raise StudyBusyError(f"study {args.name!r} started running; `study stop {args.name}` first") from None
    results.forget_engine(loc.results_db)
    problems: list[str] = []
    if loc.study_dir.exists():
        shutil.rmtree(loc.study_dir, onerror=lambda _f, path, exc: problems.append(f"{path}: {exc[1]}"))
    if loc.study_dir.exists() or loc.study_dir.is_symlink():
        err.print(f"[bold red]error:[/] study {args.name}: its rows and runs are deleted, but not all of the study "
                  f"directory {loc.study_dir}: {'; '.join(problems[:3]) or 'it is still there'}",
                  highlight=False, soft_wrap=True)
        return EXIT_FAILED
    out.print(f"study {args.name} deleted", highlight=False)
    return 0


def study_mlflow_uri(loc: Locations, stored: str | None) -> str:
    """The study's MLflow store, as `study resume` finds it: the stored URI (with a password it
    was stored without, from the options), but the study directory's own store wherever the
    directory was moved, unless --mlflow-uri or MLFLOW_TRACKING_URI names another."""
    uri = loc.mlflow_uri if not stored or "***" in stored else stored
    own = loc.study_dir / "mlflow.db"
    if own.is_file() and loc.mlflow_uri == results.sqlite_url(own):
        uri = loc.mlflow_uri
    return uri


def _tune_dir(loc: Locations, stored: str | None) -> str | None:
    """Ray Tune's experiment: stored relative to the study directory, or absolute (or a URI) when it
    lives elsewhere (--storage)."""
    if not stored:
        return None
    if "://" in stored or os.path.isabs(stored):
        return stored
    return str((loc.study_dir / stored).resolve())


def _inside(path: str, directory: Path) -> bool:
    return "://" not in path and Path(path).resolve().is_relative_to(Path(directory).resolve())


def _remove_tune_dir(path: str) -> None:
    if "://" in path:
        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        fs.delete_dir(inner)
    else:
        shutil.rmtree(path, ignore_errors=True)
