"""The `study` command line: run, status, resume, results, query, ui."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _locations_args(p: argparse.ArgumentParser, ray: bool = False) -> None:
    p.add_argument("--dir", help="studies directory (env MOMENTUM_STUDY_DIR; default ./studies)")
    p.add_argument("--results-db", help="results database URL (env MOMENTUM_STUDY_RESULTS_DB)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (env MLFLOW_TRACKING_URI)")
    if ray:
        p.add_argument("--ray-address", help="Ray cluster address (env RAY_ADDRESS; default: a local Ray)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="study", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="validate a spec and run the study")
    p.add_argument("spec", help="path to a study spec (YAML)")
    _locations_args(p, ray=True)

    p = sub.add_parser("resume", help="continue an interrupted study")
    p.add_argument("name")
    _locations_args(p, ray=True)

    p = sub.add_parser("status", help="the studies, or one study's trials")
    p.add_argument("name", nargs="?")
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
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Piped output keeps whole cells instead of rich's 80-column ellipses.
    out = Console() if sys.stdout.isatty() else Console(width=200)
    err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=200)
    from study.api import QueryError
    from study.results import ResultsDBError
    from study.spec import SpecError

    try:
        return COMMANDS[args.command](args, out, err)
    except (SpecError, QueryError, ResultsDBError) as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED


def _loc(args: argparse.Namespace, name: str):
    from study.locations import resolve

    return resolve(name, args.dir, args.results_db, args.mlflow_uri, getattr(args, "ray_address", None))


def cmd_run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.spec import load_spec

    spec = load_spec(args.spec)  # before Ray, MLflow or any database is touched
    from study import runner

    loc = _loc(args, spec.name)
    try:
        state = runner.run(spec, loc, err)
    except runner.StudyExistsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    return _report_end(spec.name, state, out)


def cmd_resume(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import runner

    state = runner.resume(args.name, _loc(args, args.name), err)
    return _report_end(args.name, state, out)


def _report_end(name: str, state: str, out: Console) -> int:
    if state == "interrupted":
        out.print(f"study {name} interrupted; continue it with: study resume {name}")
        return EXIT_INTERRUPTED
    out.print(f"study {name} {state}")
    return 0


def _table(df, title: str | None = None) -> Table:
    table = Table(title=title)
    for col in df.columns:
        table.add_column(str(col))
    for row in df.itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.5g}"
    if v is None:
        return ""
    return str(v)


def cmd_status(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import api

    if not args.name:
        df = api.studies(args.dir, args.results_db)
        if df.empty:
            out.print("no studies yet")
        else:
            out.print(_table(df, "studies"))
        return 0
    df = api.trials(args.name, args.dir, args.results_db)
    state = api.query(
        args.name,
        f"SELECT state, num_samples, metric FROM ms_studies WHERE name = {api._quote(args.name)}",
        args.dir,
        args.results_db,
    )
    if state.empty:
        err.print(f"no study named {args.name!r}")
        return EXIT_BAD_INPUT
    s = state.iloc[0]
    shown = df[["trial_id", "optuna_trial_number", "state", "last_step", "metric_value", "best_metric_value"]]
    shown = shown.rename(
        columns={"optuna_trial_number": "optuna", "last_step": "step", "metric_value": s["metric"], "best_metric_value": "best"}
    )
    out.print(_table(shown, f"study {args.name}: {s['state']}, {len(df)}/{s['num_samples']} trials"))
    return 0


def _emit(df, fmt: str, out: Console, title: str | None = None) -> None:
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso", default_handler=str) + "\n")
    else:
        out.print(_table(df, title))


def cmd_results(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import api

    if args.metrics:
        df = api.metrics(args.name, args.dir, args.results_db)
    else:
        df = api.trials(args.name, args.dir, args.results_db).drop(columns=["config"])
        if args.format == "table":
            df = df.drop(columns=["mlflow_run_id", "started_at", "ended_at", "objective"])
    _emit(df, args.format, out, f"study {args.name}")
    return 0


def cmd_query(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import api

    _emit(api.query(args.name, args.sql, args.dir, args.results_db), args.format, out)
    return 0


def cmd_ui(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import api
    from study.ui import mlflow_ui_command

    df = api.query(
        args.name,
        f"SELECT mlflow_uri, mlflow_experiment_id FROM ms_studies WHERE name = {api._quote(args.name)}",
        args.dir,
        args.results_db,
    )
    if df.empty:
        err.print(f"no study named {args.name!r}")
        return EXIT_BAD_INPUT
    uri = args.mlflow_uri or df.iloc[0]["mlflow_uri"]
    if not uri.startswith(("sqlite:", "file:", "postgresql", "mysql")) and "://" in uri:
        out.print(f"study {args.name} tracks to the MLflow server {uri}; open it there "
                  f"(experiment {df.iloc[0]['mlflow_experiment_id']})")
        return 0
    cmd = mlflow_ui_command(uri, args.port)
    out.print(f"MLflow UI for study {args.name}: http://127.0.0.1:{args.port}/#/experiments/"
              f"{df.iloc[0]['mlflow_experiment_id']}  (Ctrl+C stops it)")
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=20)
        return 0


def cmd_report(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.report.command import report_command

    return report_command(args, out, err)


COMMANDS = {
    "run": cmd_run,
    "resume": cmd_resume,
    "status": cmd_status,
    "results": cmd_results,
    "query": cmd_query,
    "ui": cmd_ui,
    "report": cmd_report,
}


if __name__ == "__main__":
    sys.exit(main())
