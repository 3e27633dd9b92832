"""The `study` command line: run, status, resume, stop, delete, results, query, ui, report, best, evidence; submit,
logs and mlflow-server for a cluster (docs/cluster.md).

This module is the parser, the dispatch and the answer to each kind of error (one line, an exit
status); each command group lives in its own module (COMMANDS).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from rich.console import Console
from rich.markup import escape

from study.api import QueryError
from study.cli.common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, check_known
from study.errors import StudyError
from study.locations import named_study_dir, studies_root
from study.plan import rates
from study.record.database import DriverError
from study.record.results import ResultsDBError

DESCRIPTION = """The `study` command line: run, status, resume, stop, delete, results, query, ui, report, best, evidence; submit,
logs and mlflow-server for a cluster (docs/cluster.md)."""

# Each command's module, loaded when the command runs: the modules import torch, Ray (after
# study.run.local_ray) and MLflow, which `study --help` and a mistyped command never need.
COMMANDS = {
    "run": "study.cli.run:run",
    "plan": "study.cli.plan:command",
    "resume": "study.cli.run:resume",
    "status": "study.cli.inspect:status",
    "stop": "study.cli.run:stop",
    "delete": "study.cli.manage:delete",
    "results": "study.cli.inspect:results",
    "query": "study.cli.inspect:query",
    "ui": "study.cli.ui:command",
    "report": "study.report.command:report_command",
    "best": "study.cli.best:command",
    "evidence": "study.report.evidence:command",
    "submit": "study.cli.jobs:submit",
    "logs": "study.cli.jobs:logs",
    "mlflow-server": "study.cli.jobs:mlflow_server",
}


def _command(name: str) -> Callable[[argparse.Namespace, Console, Console], int]:
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def _locations_args(p: argparse.ArgumentParser, ray: bool = False) -> None:
    p.add_argument("--dir", help="studies directory (env MOMENTUM_STUDY_DIR; default ./studies)")
    p.add_argument("--results-db", help="results database URL (env MOMENTUM_STUDY_RESULTS_DB)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (env MLFLOW_TRACKING_URI)")
    if ray:
        p.add_argument("--ray-address", help="Ray cluster address (env RAY_ADDRESS; default: a local Ray)")
        p.add_argument("--storage", help="Ray Tune storage every node reaches: a shared path or s3://, gs:// "
                       "(env MOMENTUM_STUDY_STORAGE; default: the study directory)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: need an integer >= 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: need a number > 0")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="study", description=DESCRIPTION)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="validate a spec and run the study")
    p.add_argument("spec", help="path to a study spec (YAML)")
    _locations_args(p, ray=True)

    p = sub.add_parser("plan", help="what a study will do (populations, device, memory, expected time); writes nothing")
    p.add_argument("spec", help="path to a study spec (YAML)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--gpus", type=_positive_int, help="GPUs of the GPU estimate (default: this machine's, else 1)")
    p.add_argument("--gpu-memory", type=_positive_float, metavar="GB",
                   help=f"memory of each GPU of the GPU estimate, in GB (default: this machine's, else "
                        f"{rates.GPU_MEMORY / 1e9:g}, the {rates.GPU_NAME}'s)")

    p = sub.add_parser("resume", help="continue an interrupted study")
    p.add_argument("name")
    _locations_args(p, ray=True)

    p = sub.add_parser("status", help="the studies, one study's trials, or a submitted job (--job)")
    p.add_argument("name", nargs="?")
    p.add_argument("--job", help="a job id from `study submit`: its state on the cluster")
    p.add_argument("--address", help="Ray Jobs API, http://HEAD:8265 (env RAY_API_SERVER_ADDRESS)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    _locations_args(p)

    p = sub.add_parser("stop", help="stop a running study gracefully (its driver on this machine), or a submitted job (--job)")
    p.add_argument("name", nargs="?")
    p.add_argument("--job", help="a job id from `study submit`: stop it on the cluster")
    p.add_argument("--address", help="Ray Jobs API, http://HEAD:8265 (env RAY_API_SERVER_ADDRESS)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for the study (or job) to end (default 120)")
    _locations_args(p)

    p = sub.add_parser("delete", help="delete a study: results rows, Optuna study, MLflow runs, Ray Tune and study directories")
    p.add_argument("name")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    _locations_args(p)

    p = sub.add_parser("results", help="a study's trials as a table, CSV or JSON")
    p.add_argument("name")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--metrics", action="store_true", help="every metric point instead of one row per trial")
    _locations_args(p)

    p = sub.add_parser("query", help="one read-only SELECT on a study's results database")
    p.add_argument("name")
    p.add_argument("sql")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--timeout", type=float, help="stop the query after this many seconds (default 30; must be > 0)")
    p.add_argument("--max-rows", type=int, help="print at most this many rows (default 10000; 0: no limit)")
    p.add_argument("--max-bytes", help="refuse a result larger than this, e.g. 500M or 2G (default 64M; "
                   "strings and blobs by their length, other values 8 bytes)")
    _locations_args(p)

    p = sub.add_parser("ui", help="the MLflow UI on a study's store (127.0.0.1)")
    p.add_argument("name")
    p.add_argument("--port", type=int, default=5000)
    _locations_args(p)

    p = sub.add_parser("report", help="a study's paper tables, sensitivity curves and figures (Markdown, CSV, PNG)")
    p.add_argument("name")
    p.add_argument("--out", help="output directory (default: the study directory's report/)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report on the study's MLflow parent run")
    _locations_args(p)

    p = sub.add_parser("evidence", help="every report under docs/results/ made from scratch: the manifest's studies "
                       "run and reported, then the index of verdicts written (docs/reporting.md)")
    p.add_argument("--manifest", default="search_spaces/evidence.yaml", help="the studies to make (default %(default)s)")
    p.add_argument("--out", default="docs/results", help="where the reports go, one folder per study (default %(default)s)")
    p.add_argument("--dir", help="studies directory for the runs (default studies/evidence)")
    p.add_argument("--only", action="append", metavar="NAME", help="make only this study (repeatable); the index "
                   "still lists every study of the manifest")
    p.add_argument("--plan", action="store_true", help="list the studies and their expected wall time; run nothing")
    p.add_argument("--reports-only", action="store_true", help="remake the reports of the studies already made, from "
                   "their records, with this code (nothing is rerun; each report names the code its study ran on)")

    p = sub.add_parser("best", help="write a spec that reruns a study's best configuration with new seeds (or longer)")
    p.add_argument("name")
    p.add_argument("--repeats", type=_positive_int,
                   help="seeds of the rerun, all new (default 10: the mean's standard error about a third of one seed's spread)")
    p.add_argument("--updates", type=_positive_int, help="updates of the rerun (default: the study's)")
    p.add_argument("-o", "--output", metavar="PATH", help="the spec file to write (default ./NAME_best.yaml)")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    _locations_args(p)

    p = sub.add_parser("submit", help="run a study as a Ray job on a cluster; prints the job id")
    p.add_argument("spec", help="path to a study spec (YAML)")
    p.add_argument("--address", help="Ray Jobs API, http://HEAD:8265 (env RAY_API_SERVER_ADDRESS)")
    p.add_argument("--storage", help="Ray Tune storage every node reaches (shared path, s3://, gs://)")
    p.add_argument("--python", default="python", help="the cluster's Python for the job (default: python)")
    p.add_argument("--job-id", help="submission id (default: study-<name>-<random>)")
    p.add_argument("--wait", action="store_true", help="follow the job's log until it ends; exit 1 unless it succeeded")
    _locations_args(p)

    p = sub.add_parser("logs", help="a submitted job's log (the study's driver output)")
    p.add_argument("job")
    p.add_argument("--address", help="Ray Jobs API, http://HEAD:8265 (env RAY_API_SERVER_ADDRESS)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")

    p = sub.add_parser("mlflow-server", help="an MLflow tracking server for a cluster's studies")
    p.add_argument("--backend-store-uri", help="database URL, e.g. postgresql://mlflow@HOST:5432/mlflow "
                   "(env MLFLOW_BACKEND_STORE_URI; a password belongs in ~/.pgpass or the environment)")
    p.add_argument("--artifacts-destination", help="where the server keeps artifacts: a directory, s3://, gs://")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--basic-auth", action="store_true", help="MLflow's basic-auth app (users and permissions)")
    p.add_argument("--allowed-hosts", help="Host headers to accept when serving beyond 127.0.0.1")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Piped output keeps whole cells instead of rich's 80-column ellipses.
    out = Console() if sys.stdout.isatty() else Console(width=200)
    err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=200)
    try:
        if getattr(args, "name", None) is not None:
            _check_name(args)
            if not getattr(args, "job", None):
                check_known(args)
        return _command(args.command)(args, out, err)
    # Every kind (study.errors: the spec, a location, a service; a query) is a refusal before the
    # work starts: one line and exit 2. A run that fails once started ends in its own state instead.
    except (StudyError, QueryError) as exc:
        message = str(exc)
        if isinstance(exc, ResultsDBError):
            message = " ".join(message.split()) + "; check --results-db (MOMENTUM_STUDY_RESULTS_DB)"
        # escape: a path or value such as "[x]" in the message is text, not rich markup.
        err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except DriverError as exc:
        if exc.statement is not None:
            raise
        # No statement: the database could not be reached at all (before anything was written).
        reason = " ".join(str(exc.orig or exc).split())[:300]
        err.print(
            f"[bold red]error:[/] cannot connect to a database: {escape(reason)}; check --results-db "
            "(MOMENTUM_STUDY_RESULTS_DB) and --mlflow-uri (MLFLOW_TRACKING_URI)",
            markup=True, highlight=False, soft_wrap=True,
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED


def _check_name(args: argparse.Namespace) -> None:
    """NAME is a study's name (the rule of a spec's `name`), never a path, before a command looks
    anything up with it: `study delete ..` must not reach the directory above the studies."""
    named_study_dir(studies_root(args.dir), args.name)
