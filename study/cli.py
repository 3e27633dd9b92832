"""The `study` command line: run, status, resume, results, query, ui; submit, logs and
mlflow-server for a cluster (docs/cluster.md)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _locations_args(p: argparse.ArgumentParser, ray: bool = False) -> None:
    p.add_argument("--dir", help="studies directory (env MOMENTUM_STUDY_DIR; default ./studies)")
    p.add_argument("--results-db", help="results database URL (env MOMENTUM_STUDY_RESULTS_DB)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (env MLFLOW_TRACKING_URI)")
    if ray:
        p.add_argument("--ray-address", help="Ray cluster address (env RAY_ADDRESS; default: a local Ray)")
        p.add_argument("--storage", help="Ray Tune storage every node reaches: a shared path or s3://, gs:// "
                       "(env MOMENTUM_STUDY_STORAGE; default: the study directory)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="study", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="validate a spec and run the study")
    p.add_argument("spec", help="path to a study spec (YAML)")
    _locations_args(p, ray=True)

    p = sub.add_parser("resume", help="continue an interrupted study")
    p.add_argument("name")
    _locations_args(p, ray=True)

    p = sub.add_parser("status", help="the studies, one study's trials, or a submitted job (--job)")
    p.add_argument("name", nargs="?")
    p.add_argument("--job", help="a job id from `study submit`: its state on the cluster")
    p.add_argument("--address", help="Ray Jobs API, http://HEAD:8265 (env RAY_API_SERVER_ADDRESS)")
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
    p.add_argument("--timeout", type=float, help="stop the query after this many seconds (default 30; 0: no limit)")
    p.add_argument("--max-rows", type=int, help="print at most this many rows (default 10000; 0: no limit)")
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
    from rich.markup import escape
    from sqlalchemy.exc import DBAPIError

    from study.api import QueryError
    from study.cluster import ClusterError
    from study.results import ResultsDBError
    from study.spec import SpecError

    try:
        return COMMANDS[args.command](args, out, err)
    except (SpecError, QueryError, ResultsDBError, ClusterError) as exc:
        message = str(exc)
        if isinstance(exc, ResultsDBError):
            message = " ".join(message.split()) + "; check --results-db (MOMENTUM_STUDY_RESULTS_DB)"
        # escape: a path or value such as "[x]" in the message is text, not rich markup.
        err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except DBAPIError as exc:
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


def _loc(args: argparse.Namespace, name: str):
    from study.locations import resolve

    return resolve(
        name, args.dir, args.results_db, args.mlflow_uri, getattr(args, "ray_address", None), getattr(args, "storage", None)
    )


def cmd_run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.spec import load_spec

    spec = load_spec(args.spec)  # before Ray, MLflow or any database is touched
    import study.local_ray  # noqa: F401  (before ray: a local Ray on 127.0.0.1 only)
    from study import runner

    loc = _loc(args, spec.name)
    try:
        state = runner.run(spec, loc, err)
    except runner.StudyExistsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    return _report_end(spec.name, state, out, loc)


def cmd_resume(args: argparse.Namespace, out: Console, err: Console) -> int:
    import study.local_ray  # noqa: F401  (before ray: a local Ray on 127.0.0.1 only)
    from study import runner

    loc = _loc(args, args.name)
    state = runner.resume(args.name, loc, err)
    return _report_end(args.name, state, out, loc)


def _report_end(name: str, state: str, out: Console, loc) -> int:
    from study import results
    from study.locations import redact

    try:
        row = results.get_study(loc.results_db, name)
        reason = row.state_reason if row is not None else None
    except Exception:
        reason = None
    if state == "interrupted":
        out.print(f"study {name} interrupted: {reason or ''}", highlight=False, soft_wrap=True)
        out.print(f"continue it with: study resume {name}", highlight=False)
        return EXIT_INTERRUPTED
    if state == "failed":
        out.print(f"study {name} failed: {reason or 'see the log above'}", highlight=False, soft_wrap=True)
        out.print(f"continue it with: study resume {name}", highlight=False)
        return EXIT_FAILED
    out.print(f"study {name} {state}", highlight=False)
    out.print(f"  results database: {redact(loc.results_db)}", highlight=False, soft_wrap=True)
    out.print(f"  MLflow store:     {redact(loc.mlflow_uri)}", highlight=False, soft_wrap=True)
    out.print(f"  Ray Tune results: {loc.tune_uri}", highlight=False, soft_wrap=True)
    out.print(
        f"  next: study status {name} | study results {name} --format csv | study report {name} | study ui {name}",
        highlight=False, soft_wrap=True,
    )
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

    if args.job:
        return _job_status(args, out)
    if not args.name:
        df = api.studies(args.dir, args.results_db)
        if df.empty:
            out.print("no studies yet")
        else:
            out.print(_table(df, "studies"))
        return 0
    df = api.trials(args.name, args.dir, args.results_db)
    s = _study_row(args, "state, state_reason, num_samples, metric", err)
    if s is None:
        return EXIT_BAD_INPUT
    shown = df[["trial_id", "optuna_trial_number", "state", "last_step", "metric_value", "best_metric_value"]]
    shown = shown.rename(
        columns={"optuna_trial_number": "optuna", "last_step": "step", "metric_value": s["metric"], "best_metric_value": "best"}
    )
    state = s["state"]
    if state == "running" and not _driver_alive(args):
        state = "interrupted (its driver is not running: `study resume` continues it)"
    finished = int(df["state"].isin(["completed", "diverged", "failed", "pruned"]).sum())
    out.print(_table(shown, f"study {args.name}: {state}, {finished}/{s['num_samples']} trials finished"))
    if s["state_reason"]:
        out.print(f"reason: {s['state_reason']}", highlight=False, soft_wrap=True)
    return 0


def _driver_alive(args: argparse.Namespace) -> bool:
    """Whether a driver holds the study's lock (only knowable for a study directory on this machine)."""
    from study.lock import is_locked

    loc = _loc(args, args.name)
    if not loc.study_dir.exists():
        return True  # its driver runs elsewhere (a cluster job): trust the database
    return is_locked(loc.study_dir)


def _study_row(args: argparse.Namespace, columns: str, err: Console):
    """The study's row of ms_studies (the given columns), or None after saying there is none."""
    from study import api

    df = api.query(
        args.name, f"SELECT {columns} FROM ms_studies WHERE name = :name", args.dir, args.results_db,
        params={"name": args.name},
    )
    if df.empty:
        err.print(f"no study named {args.name!r}")
        return None
    return df.iloc[0]


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

    timeout = api.DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout
    max_rows = api.DEFAULT_MAX_ROWS if args.max_rows is None else args.max_rows
    if not timeout >= 0:
        raise api.QueryError(f"--timeout={args.timeout!r} is not allowed: need seconds >= 0 (0: no limit)")
    if max_rows < 0:
        raise api.QueryError(f"--max-rows={args.max_rows!r} is not allowed: need a count >= 0 (0: no limit)")
    df = api.query(args.name, args.sql, args.dir, args.results_db, timeout=timeout, max_rows=max_rows)
    _emit(df, args.format, out)
    if df.attrs.get("rows_cut"):
        err.print(
            f"showed the first {len(df)} rows; {'' if df.attrs.get('rows_cut_exact', True) else 'at least '}"
            f"{df.attrs['rows_cut']} more were cut (--max-rows N; 0: no limit)",
            highlight=False,
        )
    return 0


def cmd_ui(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import tracking
    from study.servers import PortBusy
    from study.spec import load_spec
    from study.ui import is_server, run_ui, without_login

    row = _study_row(args, "mlflow_uri, mlflow_experiment_id, spec_yaml", err)
    if row is None:
        return EXIT_BAD_INPUT
    uri = args.mlflow_uri or _study_mlflow_uri(_loc(args, args.name), row["mlflow_uri"])
    experiment_id = str(row["mlflow_experiment_id"])
    if is_server(uri):
        from study.locations import redact

        out.print(f"study {args.name} tracks to the MLflow server {redact(uri)}; open it there: "
                  f"{tracking.runs_url(without_login(uri), experiment_id)}", highlight=False, soft_wrap=True)
        return 0
    spec = load_spec(row["spec_yaml"]).model_dump(mode="json")

    def say(text: str) -> None:
        out.print(text, highlight=False, soft_wrap=True)
        sys.stdout.flush()

    try:
        return run_ui(args.name, uri, experiment_id, spec, args.port, say)
    except PortBusy as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        err.print(f"[bold red]error:[/] the MLflow UI did not start: {exc}", highlight=False)
        return EXIT_FAILED


def _job_status(args: argparse.Namespace, out: Console) -> int:
    from study import cluster

    info = cluster.job_info(args.job, args.address)
    table = Table(title=f"job {info['job_id']}: {info['status']}", show_header=False)
    for key, value in info.items():
        table.add_row(key, _cell(value))
    out.print(table)
    if info["study"]:
        out.print(f"trials: study status {info['study']} (with the cluster's --results-db / --dir)")
    return 0


def cmd_submit(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import cluster

    env = cluster.job_env(args.dir, args.results_db, args.mlflow_uri, args.storage)
    job_id = cluster.submit(args.spec, args.address, env, args.job_id, args.python)
    print(job_id)
    sys.stdout.flush()
    err.print(f"follow it with: study status --job {job_id} --address ...; study logs {job_id} --follow")
    if not args.wait:
        return 0
    for chunk in cluster.follow_logs(job_id, args.address):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    status = cluster.wait(job_id, args.address)
    err.print(f"job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_logs(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import cluster

    if args.follow:
        for chunk in cluster.follow_logs(args.job, args.address):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.write(cluster.logs(args.job, args.address))
    return 0


def cmd_mlflow_server(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.locations import redact
    from study.servers import PortBusy, mlflow_server_command, mlflow_server_env, printable, serve

    backend = args.backend_store_uri or os.environ.get("MLFLOW_BACKEND_STORE_URI")
    if not backend:
        err.print("[bold red]error:[/] --backend-store-uri (or MLFLOW_BACKEND_STORE_URI) is required", highlight=False)
        return EXIT_BAD_INPUT
    cmd = mlflow_server_command(
        args.artifacts_destination, args.host, args.port, args.workers, args.basic_auth, args.allowed_hosts
    )
    err.print(printable(cmd), highlight=False, soft_wrap=True)

    def ready() -> None:
        err.print(f"MLflow tracking server on http://{args.host}:{args.port} (backend {redact(backend)})",
                  highlight=False)

    try:
        # The backend's URL, password included, in the server's environment, not its argv.
        return serve(cmd, mlflow_server_env(backend), args.host, args.port, ready)
    except PortBusy as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        err.print(f"[bold red]error:[/] the MLflow server did not start: {exc}", highlight=False)
        return EXIT_FAILED


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
    "submit": cmd_submit,
    "logs": cmd_logs,
    "mlflow-server": cmd_mlflow_server,
}


if __name__ == "__main__":
    sys.exit(main())
