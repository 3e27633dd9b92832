"""`study run SPEC`, `study resume NAME` and `study stop NAME`: a study's driver on this machine."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from rich.console import Console

from study.cli import jobs
from study.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, local_ray_first, locate
from study.cli.inspect import study_row
from study.locations import Locations, redact
from study.record import results
from study.record.journal import JOURNAL_FILE, Journal
from study.record.outcome import ALL_FAILED
from study.run.lock import LOCK_FILE, StudyLock, is_locked
from study.spec.model import load_spec


def run(args: argparse.Namespace, out: Console, err: Console) -> int:
    spec = load_spec(args.spec)  # before Ray, MLflow or any database is touched
    local_ray_first(args)
    from study.run import runner  # imports ray: only after local_ray_first

    loc = locate(args, spec.name)
    try:
        state = runner.run(spec, loc, err)
    except runner.StudyExistsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    return report_end(spec.name, state, out, loc)


def resume(args: argparse.Namespace, out: Console, err: Console) -> int:
    loc = locate(args, args.name)
    # A study being run is refused before its databases are opened: its driver may be in a write.
    StudyLock(loc.study_dir, args.name, loc.results_db).refuse_if_held()
    if _nothing_to_resume(args.name, loc):
        out.print(f"study {args.name} is already completed: nothing to do", highlight=False)
        return 0
    local_ray_first(args)
    from study.run import runner  # imports ray: only after local_ray_first

    state = runner.resume(args.name, loc, err)
    return report_end(args.name, state, out, loc)


def _nothing_to_resume(name: str, loc: Locations) -> bool:
    """runner.resume's early return, checked before Ray is imported: the study completed and no
    write waits in its journal."""
    if not results.sqlite_path_exists(loc.results_db):
        return False
    row = results.get_study(loc.results_db, name)
    return row is not None and row.state == "completed" and not Journal(loc.study_dir / JOURNAL_FILE).pending()


def report_end(name: str, state: str, out: Console, loc: Locations) -> int:
    """What `study run` and `study resume` print when the study's driver ends, and their exit status."""
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
        try:
            # Imported here: it loads scipy and matplotlib, which a refused run never needs.
            from study.report.verdict import study_verdict

            verdict = study_verdict(name, results_db=loc.results_db)
        except Exception as exc:  # noqa: BLE001
            out.print(f"no verdict: {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        else:
            if verdict is not None:
                out.print(verdict.best_line(), highlight=False, soft_wrap=True)
                out.print(verdict.line(), highlight=False, soft_wrap=True)
    return 0


def stop(args: argparse.Namespace, out: Console, err: Console) -> int:
    """A local study: SIGINT to the driver that holds its lock (Ray Tune's graceful stop: the
    running trials' last results are recorded, the experiment is checkpointed), then wait for the
    lock to be released. A submitted job: the Ray Jobs API's stop."""
    if args.job:
        return jobs.stop_job(args, out, err)
    if not args.name:
        err.print("[bold red]error:[/] give a study's NAME, or --job ID for a submitted job", highlight=False)
        return EXIT_BAD_INPUT
    loc = locate(args, args.name)
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
    row = study_row(args, err)
    if row is None:
        out.print(f"study {args.name} stopped", highlight=False)
        return 0
    out.print(f"study {args.name} stopped: {row['state']}, {row['finished']}/{row['num_samples']} trials finished",
              highlight=False)
    if row["state"] != "completed":
        out.print(f"continue it with: study resume {args.name}", highlight=False)
    return 0
