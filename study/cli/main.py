"""The `study` command line: run, status, resume, stop, delete, results, query, ui, report; submit,
logs and mlflow-server for a cluster (docs/cluster.md)."""

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

    from study.cli.plan import add_parser as add_plan

    add_plan(sub)

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
    from study.cluster.jobs import ClusterError
    from study.locations import LocationError
    from study.record.results import ResultsDBError
    from study.spec.model import SpecError

    try:
        if getattr(args, "name", None) is not None:
            _check_name(args)
        return COMMANDS[args.command](args, out, err)
    except (SpecError, QueryError, ResultsDBError, ClusterError, LocationError) as exc:
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


def _check_name(args: argparse.Namespace) -> None:
    """NAME is a study's name (the rule of a spec's `name`), never a path, before a command looks
    anything up with it: `study delete ..` must not reach the directory above the studies."""
    from study.locations import named_study_dir, studies_root

    named_study_dir(studies_root(args.dir), args.name)


def _loc(args: argparse.Namespace, name: str):
    from study.locations import resolve

    return resolve(
        name, args.dir, args.results_db, args.mlflow_uri, getattr(args, "ray_address", None), getattr(args, "storage", None)
    )


def _local_ray_first(args: argparse.Namespace) -> None:
    """Without a cluster address the study starts its own Ray on 127.0.0.1, which needs
    study.run.local_ray imported before ray (it sets what Ray reads at import). With an address the
    driver joins the cluster under the machine's own address, so nothing is set."""
    if not (getattr(args, "ray_address", None) or os.environ.get("RAY_ADDRESS")):
        import study.run.local_ray  # noqa: F401


def cmd_run(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.spec.model import load_spec

    spec = load_spec(args.spec)  # before Ray, MLflow or any database is touched
    _local_ray_first(args)
    from study.run import runner

    loc = _loc(args, spec.name)
    try:
        state = runner.run(spec, loc, err)
    except runner.StudyExistsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    return _report_end(spec.name, state, out, loc)


def cmd_resume(args: argparse.Namespace, out: Console, err: Console) -> int:
    loc = _loc(args, args.name)
    if _nothing_to_resume(args.name, loc):
        out.print(f"study {args.name} is already completed: nothing to do", highlight=False)
        return 0
    _local_ray_first(args)
    from study.run import runner

    state = runner.resume(args.name, loc, err)
    return _report_end(args.name, state, out, loc)


def _nothing_to_resume(name: str, loc) -> bool:
    """runner.resume's early return, checked before Ray is imported: the study completed and no
    write waits in its journal."""
    from study.record import results
    from study.record.journal import JOURNAL_FILE, Journal

    if not results.sqlite_path_exists(loc.results_db):
        return False
    row = results.get_study(loc.results_db, name)
    return row is not None and row.state == "completed" and not Journal(loc.study_dir / JOURNAL_FILE).pending()


def _report_end(name: str, state: str, out: Console, loc) -> int:
    from study.record import results
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
        from study.record.outcome import ALL_FAILED

        out.print(f"study {name} failed: {reason or 'see the log above'}", highlight=False, soft_wrap=True)
        if not (reason or "").startswith(ALL_FAILED):  # the reason says what to do then
            out.print(f"continue it with: study resume {name}", highlight=False)
        return EXIT_FAILED
    out.print(f"study {name} {state}" + (f": {reason}" if reason else ""), highlight=False, soft_wrap=True)
    out.print(f"  results database: {redact(loc.results_db)}", highlight=False, soft_wrap=True)
    out.print(f"  MLflow store:     {redact(loc.mlflow_uri)}", highlight=False, soft_wrap=True)
    out.print(f"  Ray Tune results: {loc.tune_uri}", highlight=False, soft_wrap=True)
    out.print(
        f"  next: study status {name} | study results {name} --format csv | study report {name} | study ui {name}",
        highlight=False, soft_wrap=True,
    )
    if state == "completed":
        # The best configuration and the one-line verdict (study/report/verdict.py); the study's outcome
        # is recorded already, so a verdict that cannot be computed only says why.
        from study.report.verdict import study_verdict

        try:
            verdict = study_verdict(name, results_db=loc.results_db)
        except Exception as exc:  # noqa: BLE001
            out.print(f"no verdict: {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        else:
            if verdict is not None:
                out.print(verdict.best_line(), highlight=False, soft_wrap=True)
                out.print(verdict.line(), highlight=False, soft_wrap=True)
    return 0


def _table(df, title: str | None = None) -> Table:
    """A compact table: no outer edge or column rules, so it fits 80 columns; cells fold instead of
    ending in an ellipsis, so nothing printed is cut."""
    from rich import box

    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left")
    for col in df.columns:
        numeric = df[col].dtype.kind in "iuf"
        table.add_column(str(col), justify="right" if numeric else "left", overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(v) -> str:
    """A value as a table shows it: floats to 4 significant digits (whole numbers as integers),
    times to the second. CSV and JSON keep every digit."""
    import datetime as dt
    import math

    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(v):,} bytes>"  # a blob is not read in a table (CSV and JSON carry every byte)
    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f"):
        v = float(v)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, str) and len(v) >= 19 and v[4] == "-" and v[10] in " T" and v[13] == ":":
        return v[:19].replace("T", " ")  # an ISO time from the database, to the second
    return str(v)


def _json_value(v):
    """Every digit of a float (Python's repr, which reads back to the same float); NaN as null and
    the infinities as the strings "inf" and "-inf" (JSON has no number for them)."""
    import datetime as dt
    import math

    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f"):
        v = float(v)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if hasattr(v, "item"):  # numpy integers and booleans
        return v.item()
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if v is None or isinstance(v, (str, int, bool, list, dict)):
        return v
    return str(v)


def _records(df) -> list[dict]:
    return [{str(k): _json_value(v) for k, v in zip(df.columns, row)} for row in df.itertuples(index=False)]


def cmd_status(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import api

    if args.job:
        return _job_status(args, out)
    if not args.name:
        df = api.studies(args.dir, args.results_db)
        if args.format != "table":
            _emit(df, args.format, out)
        elif df.empty:
            out.print("no studies yet")
        else:
            trials = [f"{f}/{n}" + (f", {r} running" if r else "")
                      for f, n, r in zip(df["finished"], df["num_samples"], df["running"])]
            created = [_cell(c)[:16] for c in df["created_at"]]  # to the minute
            shown = df.assign(finished=trials, created=created)
            out.print(_table(shown[["name", "task", "state", "finished", "best", "metric", "created"]], "studies"))
        return 0
    df = api.trials(args.name, args.dir, args.results_db)
    s = _study_row(args, "state, state_reason, num_samples, metric", err)
    if s is None:
        return EXIT_BAD_INPUT
    shown = df[["trial_id", "optuna_trial_number", "state", "last_step", "metric_value", "best_metric_value"]]
    shown = shown.rename(
        columns={"trial_id": "trial", "optuna_trial_number": "optuna", "last_step": "step",
                 "metric_value": s["metric"], "best_metric_value": "best"}
    )
    state = s["state"]
    if state == "running" and not _driver_alive(args):
        state = "interrupted (its driver is not running: `study resume` continues it)"
    finished = int(df["state"].isin(["completed", "diverged", "failed", "pruned"]).sum())
    best = shown.dropna(subset=["best"])
    if not best.empty:
        best = best.loc[best["best"].idxmin() if _mode(args) == "min" else best["best"].idxmax()]
    if args.format == "json":
        import json

        sys.stdout.write(json.dumps({
            "name": args.name, "state": state, "state_reason": s["state_reason"], "metric": s["metric"],
            "finished": finished, "num_samples": int(s["num_samples"]),
            "best": None if len(best) == 0 else _json_value(best["best"]),
            "best_trial": None if len(best) == 0 else best["trial"],
            "trials": _records(shown),
        }, separators=(",", ":")) + "\n")
        return 0
    if args.format == "csv":
        _emit(shown, "csv", out)
        return 0
    out.print(_table(shown, f"study {args.name}: {state}, {finished}/{s['num_samples']} trials finished"))
    if len(best):
        out.print(f"best {s['metric']}: {_cell(best['best'])} (trial {best['trial']})", highlight=False)
    if s["state_reason"]:
        out.print(f"reason: {s['state_reason']}", highlight=False, soft_wrap=True)
    return 0


def _mode(args: argparse.Namespace) -> str:
    from study import api

    df = api.query(args.name, "SELECT mode FROM ms_studies WHERE name = :name", args.dir, args.results_db,
                   params={"name": args.name})
    return "max" if not df.empty and df.iloc[0]["mode"] == "max" else "min"


def _driver_alive(args: argparse.Namespace) -> bool:
    """Whether a driver holds the study's lock (only knowable for a study directory on this machine)."""
    from study.run.lock import is_locked

    loc = _loc(args, args.name)
    if not loc.study_dir.exists():
        return True  # its driver runs elsewhere (a cluster job): trust the database
    return is_locked(loc.study_dir)


def cmd_stop(args: argparse.Namespace, out: Console, err: Console) -> int:
    """A local study: SIGINT to the driver that holds its lock (Ray Tune's graceful stop: the
    running trials' last results are recorded, the experiment is checkpointed), then wait for the
    lock to be released. A submitted job: the Ray Jobs API's stop."""
    import signal
    import time

    from study.run.lock import LOCK_FILE, is_locked

    if args.job:
        return _stop_job(args, out, err)
    if not args.name:
        err.print("[bold red]error:[/] give a study's NAME, or --job ID for a submitted job", highlight=False)
        return EXIT_BAD_INPUT
    loc = _loc(args, args.name)
    if not loc.study_dir.is_dir():
        err.print(f"[bold red]error:[/] no study {args.name!r} at {loc.study_dir}; a submitted study is "
                  "stopped with --job ID --address ...", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    if not is_locked(loc.study_dir):
        out.print(f"study {args.name} is not running: nothing to stop", highlight=False)
        return 0
    try:
        pid = int((loc.study_dir / (LOCK_FILE + ".pid")).read_text().strip())
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        pid = None  # it ended between the two looks
    except (OSError, ValueError) as exc:
        err.print(f"[bold red]error:[/] study {args.name} is running, but its driver cannot be signalled "
                  f"({exc}); is it on another machine?", highlight=False, soft_wrap=True)
        return EXIT_FAILED
    if pid is not None:
        out.print(f"study {args.name}: asked its driver (pid {pid}) to stop; waiting up to {args.timeout:g} s "
                  "for it to record its trials and end", highlight=False, soft_wrap=True)
        sys.stdout.flush()
        deadline = time.monotonic() + args.timeout
        while is_locked(loc.study_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        if is_locked(loc.study_dir):
            err.print(f"study {args.name}: its driver (pid {pid}) is still running after {args.timeout:g} s; "
                      f"`study stop {args.name}` again stops it without Ray Tune's last checkpoint",
                      highlight=False, soft_wrap=True)
            return EXIT_FAILED
    row = _study_row(args, "state, num_samples, (SELECT COUNT(*) FROM ms_trials t WHERE t.study_id = ms_studies.id "
                     "AND t.state IN ('completed', 'diverged', 'failed', 'pruned')) AS finished", err)
    if row is None:
        out.print(f"study {args.name} stopped", highlight=False)
        return 0
    out.print(f"study {args.name} stopped: {row['state']}, {row['finished']}/{row['num_samples']} trials finished",
              highlight=False)
    if row["state"] != "completed":
        out.print(f"continue it with: study resume {args.name}", highlight=False)
    return 0


def _stop_job(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.cluster import jobs as cluster

    info = cluster.job_info(args.job, args.address)
    if not cluster.stop(args.job, args.address):
        out.print(f"job {args.job} is not running ({info['status']}): nothing to stop", highlight=False)
        return 0
    out.print(f"job {args.job}: stop requested; waiting up to {args.timeout:g} s", highlight=False)
    sys.stdout.flush()
    status = cluster.wait(args.job, args.address, timeout_s=args.timeout, poll_s=1)
    out.print(f"job {args.job} {status}", highlight=False)
    if info["study"]:
        out.print(f"continue it with: study resume {info['study']} (with the cluster's --results-db / --dir)",
                  highlight=False)
    return 0 if status in ("STOPPED", "SUCCEEDED", "FAILED") else EXIT_FAILED


def cmd_delete(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Removes everything a study wrote, after a confirmation: its rows and Optuna study in the
    results database, its MLflow experiment with its runs, Ray Tune's directory, the study directory."""
    import shutil

    from study.record import results
    from study.run.lock import StudyLock, StudyBusyError, is_locked
    from study.locations import LocationError, redact

    loc = _loc(args, args.name)
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
    mlflow_uri = _study_mlflow_uri(loc, row.mlflow_uri if row is not None else None)
    tune_dir = _tune_dir(loc, row.tune_path if row is not None else None)
    if tune_dir and not tune_dir.rstrip("/").endswith(f"/{args.name}/tune"):
        # Every study keeps Tune's experiment in <place>/<name>/tune; a row naming another place
        # (an edited or foreign database) does not get to remove it.
        err.print(f"note: the Ray Tune directory the database names, {tune_dir}, is not <...>/{args.name}/tune; "
                  "it is left as it is", highlight=False, soft_wrap=True)
        tune_dir = None
    experiment = _mlflow_experiment(mlflow_uri, args.name)
    what: list[str] = []
    if row is not None:
        from study import api

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
                _delete_mlflow_experiment(mlflow_uri, experiment[0], args.name)
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


def _study_mlflow_uri(loc, stored: str | None) -> str:
    """The study's MLflow store, as `study resume` finds it: the stored URI (with a password it
    was stored without, from the options), but the study directory's own store wherever the
    directory was moved, unless --mlflow-uri or MLFLOW_TRACKING_URI names another."""
    from study.record import results

    uri = loc.mlflow_uri if not stored or "***" in stored else stored
    own = loc.study_dir / "mlflow.db"
    if own.is_file() and loc.mlflow_uri == results.sqlite_url(own):
        uri = loc.mlflow_uri
    return uri


def _tune_dir(loc, stored: str | None) -> str | None:
    """Ray Tune's experiment: stored relative to the study directory, or absolute (or a URI) when it
    lives elsewhere (--storage)."""
    if not stored:
        return None
    if "://" in stored or os.path.isabs(stored):
        return stored
    return str((loc.study_dir / stored).resolve())


def _inside(path: str, directory) -> bool:
    from pathlib import Path

    return "://" not in path and Path(path).resolve().is_relative_to(Path(directory).resolve())


def _mlflow_experiment(uri: str, name: str) -> tuple[str, int] | None:
    """(experiment id, number of runs) of the study's MLflow experiment, or None."""
    from study.record import results

    if uri.startswith("sqlite") and not results.sqlite_path_exists(uri):
        return None
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=50_000)
    return exp.experiment_id, len(runs)


def _delete_mlflow_experiment(uri: str, experiment_id: str, name: str) -> None:
    """Deletes the runs and the experiment. MLflow keeps deleted experiments (until `mlflow gc`)
    and their names with them: renamed first, the name is free for a new study."""
    import uuid

    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    for run in c.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=50_000):
        c.delete_run(run.info.run_id)
    c.rename_experiment(experiment_id, f"{name} (deleted {uuid.uuid4().hex[:8]})")
    c.delete_experiment(experiment_id)


def _remove_tune_dir(path: str) -> None:
    import shutil

    if "://" in path:
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        fs.delete_dir(inner)
    else:
        shutil.rmtree(path, ignore_errors=True)


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
    """CSV and JSON with every digit (pandas writes floats as repr); a table rounded to be read."""
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        import json

        sys.stdout.write(json.dumps(_records(df), separators=(",", ":")) + "\n")
    else:
        out.print(_table(df, title))


def cmd_results(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import api

    if args.metrics:
        df = api.metrics(args.name, args.dir, args.results_db)
        if args.format == "table":  # what fits 80 columns; CSV and JSON have every column
            df = df[["trial_id", "step", "member", "seed", "error", "loss", "mu", "lr", "status"]]
            df = df.rename(columns={"trial_id": "trial"})
    else:
        df = api.trials(args.name, args.dir, args.results_db).drop(columns=["config"])
        if args.format == "table":
            s = _study_row(args, "metric", err)
            metric = s["metric"] if s is not None else "value"
            diverged = [f"{d}/{m}" for d, m in zip(df["members_diverged"], df["members"])]
            df = df.drop(columns=["mlflow_run_id", "started_at", "ended_at", "objective", "members", "members_diverged",
                                  "population", "hostname", "node_ip", "worker_pid"])
            df.insert(6, "diverged", diverged)
            df = df.rename(columns={"trial_id": "trial", "optuna_trial_number": "optuna", "last_step": "step",
                                    "metric_value": metric, "best_metric_value": "best"})
    _emit(df, args.format, out, f"study {args.name}")
    return 0


def cmd_query(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study import api

    import math

    timeout = api.DEFAULT_TIMEOUT_S if args.timeout is None else args.timeout
    max_rows = api.DEFAULT_MAX_ROWS if args.max_rows is None else args.max_rows
    if not (timeout > 0 and math.isfinite(timeout)):
        # A query without a time limit can run forever (a recursive WITH never ends), and SQLite
        # then gives Ctrl-C no chance either: every query has one.
        raise api.QueryError(f"--timeout={args.timeout!r} is not allowed: need a number of seconds > 0 "
                             f"(default {api.DEFAULT_TIMEOUT_S:g}); every query has a time limit")
    if max_rows < 0:
        raise api.QueryError(f"--max-rows={args.max_rows!r} is not allowed: need a count >= 0 (0: no limit)")
    max_bytes = api.DEFAULT_MAX_BYTES if args.max_bytes is None else _size(args.max_bytes, "--max-bytes")
    df = api.query(args.name, args.sql, args.dir, args.results_db, timeout=timeout, max_rows=max_rows,
                   max_bytes=max_bytes)
    _emit(df, args.format, out)
    if df.attrs.get("rows_cut"):
        err.print(
            f"showed the first {len(df)} rows; {'' if df.attrs.get('rows_cut_exact', True) else 'at least '}"
            f"{df.attrs['rows_cut']} more were cut (--max-rows N; 0: no limit)",
            highlight=False,
        )
    return 0


def _size(text: str, option: str) -> int:
    """A byte count: digits with an optional K, M or G (powers of 1024), more than 0."""
    from study import api

    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (t[:-1], t[-1]) if t and t[-1] in "KMG" else (t, "")
    try:
        value = int(float(number) * units[unit]) if number else 0
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise api.QueryError(f"{option}={text!r} is not allowed: need a size > 0 in bytes, or with K, M or G "
                             f"(default {api.DEFAULT_MAX_BYTES // 2**20}M)")
    return value


def cmd_ui(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.record import tracking
    from study.spec.model import load_spec
    from study.cli.ui import is_server, run_ui, without_login

    row = _study_row(args, "mlflow_uri, mlflow_experiment_id, spec_yaml", err)
    if row is None:
        return EXIT_BAD_INPUT
    stored = row["mlflow_uri"]
    # A study on a tracking server: its (redacted) address is all `study ui` needs to name it.
    uri = args.mlflow_uri or (stored if is_server(stored) else _study_mlflow_uri(_loc(args, args.name), stored))
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

    return _serving(lambda: run_ui(args.name, uri, experiment_id, spec, args.port, say), "the MLflow UI", err)


def _serving(start, what: str, err: Console) -> int:
    """Runs a server until it ends: a busy port is bad input (exit 2), a server that did not start exit 1."""
    from study.cluster.servers import PortBusy

    try:
        return start()
    except PortBusy as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return EXIT_BAD_INPUT
    except RuntimeError as exc:
        err.print(f"[bold red]error:[/] {what} did not start: {exc}", highlight=False)
        return EXIT_FAILED


def _job_status(args: argparse.Namespace, out: Console) -> int:
    from study.cluster import jobs as cluster

    info = cluster.job_info(args.job, args.address)
    if args.format != "table":
        import pandas as pd

        _emit(pd.DataFrame([info]), args.format, out)
        return 0
    table = Table(title=f"job {info['job_id']}: {info['status']}", show_header=False)
    for key, value in info.items():
        table.add_row(key, _cell(value))
    out.print(table)
    if info["study"]:
        out.print(f"trials: study status {info['study']} (with the cluster's --results-db / --dir)")
    return 0


def cmd_submit(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.cluster import jobs as cluster

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
    from study.cluster import jobs as cluster

    if args.follow:
        for chunk in cluster.follow_logs(args.job, args.address):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.write(cluster.logs(args.job, args.address))
    return 0


def cmd_mlflow_server(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.locations import redact
    from study.cluster.servers import mlflow_server_command, mlflow_server_env, printable, serve

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

    # The backend's URL, password included, in the server's environment, not its argv.
    return _serving(lambda: serve(cmd, mlflow_server_env(backend), args.host, args.port, ready), "the MLflow server", err)


def cmd_report(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.report.command import report_command

    return report_command(args, out, err)


def cmd_plan(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.cli.plan import command

    return command(args, out, err)


COMMANDS = {
    "run": cmd_run,
    "plan": cmd_plan,
    "resume": cmd_resume,
    "status": cmd_status,
    "stop": cmd_stop,
    "delete": cmd_delete,
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
