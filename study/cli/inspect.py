"""`study status [NAME]`, `study results NAME` and `study query NAME SQL`: reading a study's results
database (status --job is study/cli/jobs.py's)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from rich.console import Console

from study import api
from study.cli import jobs
from study.cli.common import EXIT_BAD_INPUT, dir_given, locate, studies_dir
from study.cli.output import cell, emit, json_value, records, table
from study.errors import LocationError
from study.locations import studies_root
from study.record import queries
from study.record.results import TERMINAL_TRIAL_STATES
from study.run.lock import is_locked


def study_row(args: argparse.Namespace, err: Console) -> dict[str, Any] | None:
    """The study's row of ms_studies (with ``finished``), or None after saying there is none."""
    row = queries.study_row(api.results_target(args.name, args.dir, args.results_db), args.name)
    if row is None:
        err.print(f"no study named {args.name!r}")
    return row


def status(args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.job:
        return jobs.job_status(args, out)
    if not args.name:
        try:
            where = studies_dir(args)
        except LocationError:
            if dir_given(args):
                raise
            # The default ./studies before the first `study run` here: nothing is mistyped.
            where = studies_root(None)
            if args.format == "table":
                out.print(f"no studies yet: {where} does not exist (`study run SPEC` creates it; --dir names "
                          "another)", highlight=False, soft_wrap=True)
                return 0
        df = api.studies(args.dir, args.results_db)
        if args.format != "table":
            emit(df, args.format, out)
        elif df.empty:
            out.print(f"no studies yet in {where or 'the results database'}", highlight=False, soft_wrap=True)
        else:
            trials = [f"{f}/{n}" + (f", {r} running" if r else "")
                      for f, n, r in zip(df["finished"], df["num_samples"], df["running"])]
            created = [cell(c)[:16] for c in df["created_at"]]  # to the minute
            shown = df.assign(finished=trials, created=created)
            out.print(table(shown[["name", "task", "state", "finished", "best", "metric", "created"]], "studies",
                            out.width, optional=("created", "task", "metric")))
        return 0
    df = api.trials(args.name, args.dir, args.results_db)
    s = study_row(args, err)
    if s is None:
        return EXIT_BAD_INPUT
    seen = seen_label(s["mode"])
    shown = df[["trial_id", "optuna_trial_number", "state", "last_step", "metric_value", "best_metric_value"]]
    shown = shown.rename(
        columns={"trial_id": "trial", "optuna_trial_number": "optuna", "last_step": "step",
                 "metric_value": s["metric"], "best_metric_value": seen}
    )
    state = s["state"]
    if state == "running" and not _driver_alive(args):
        state = "interrupted (its driver is not running: `study resume` continues it)"
    finished = int(df["state"].isin(TERMINAL_TRIAL_STATES).sum())
    best = best_configuration(df, s["mode"])
    if args.format == "json":
        sys.stdout.write(json.dumps({
            "name": args.name, "state": state, "state_reason": s["state_reason"], "metric": s["metric"],
            "finished": finished, "num_samples": int(s["num_samples"]),
            "best": None if best is None else json_value(best["metric_value"]),
            "best_trial": None if best is None else best["trial_id"],
            "trials": records(shown),
        }, separators=(",", ":")) + "\n")
        return 0
    if args.format == "csv":
        emit(shown, "csv", out)
        return 0
    out.print(table(shown, f"study {args.name}: {state}, {finished}/{s['num_samples']} trials finished", out.width,
                    optional=("optuna", seen, "step")))
    if best is not None:
        # Wrapped by rich at the terminal's width: at spaces, never inside a word.
        out.print(f"best {s['metric']}: {cell(best['metric_value'])} (trial {best['trial_id']}, the best final "
                  "result of a completed configuration, the mean over its seeds)", highlight=False)
    else:
        out.print("best: none yet (no configuration has completed)", highlight=False)
    out.print(f"{seen}: the {seen.split('_')[0]} {s['metric']} of a configuration at any of its reports, not a final "
              "result", highlight=False, style="dim")
    if s["state_reason"]:
        out.print(f"reason: {s['state_reason']}", highlight=False, soft_wrap=True)
    return 0


def seen_label(mode: str) -> str:
    """What the tables call a configuration's best value at any report (``best_metric_value``):
    "best" is kept for the best final result, as everywhere else."""
    return "highest_seen" if mode == "max" else "lowest_seen"


def best_configuration(trials: Any, mode: str) -> Any:
    """The best configuration (a row of api.trials), or None: the verdict's rule
    (study/report/verdict.py), the best final result (``metric_value``, the mean over seeds at the
    last report) of a configuration that completed with no seed diverged."""
    done = trials[(trials["state"] == "completed") & (trials["members_diverged"].fillna(0) == 0)]
    done = done.dropna(subset=["metric_value"])
    if done.empty:
        return None
    return done.loc[done["metric_value"].idxmax() if mode == "max" else done["metric_value"].idxmin()]


def _driver_alive(args: argparse.Namespace) -> bool:
    """Whether a driver holds the study's lock (only knowable for a study directory on this machine)."""
    loc = locate(args, args.name)
    if not loc.study_dir.exists():
        return True  # its driver runs elsewhere (a cluster job): trust the database
    return is_locked(loc.study_dir)


def results(args: argparse.Namespace, out: Console, err: Console) -> int:
    # The columns a narrow terminal leaves out first (CSV and JSON have every column).
    optional: tuple[str, ...] = ()
    if args.metrics:
        df = api.metrics(args.name, args.dir, args.results_db)
        if args.format == "table":
            df = df[["trial_id", "step", "member", "seed", "error", "loss", "mu", "lr", "status"]]
            df = df.rename(columns={"trial_id": "trial"})
            optional = ("loss", "mu", "lr", "member")
    else:
        df = api.trials(args.name, args.dir, args.results_db).drop(columns=["config"])
        if args.format == "table":
            s = study_row(args, err)
            metric = s["metric"] if s is not None else "value"
            seen = seen_label(s["mode"] if s is not None else "min")
            diverged = [f"{d}/{m}" for d, m in zip(df["members_diverged"], df["members"])]
            df = df.drop(columns=["mlflow_run_id", "started_at", "ended_at", "objective", "members", "members_diverged",
                                  "population", "hostname", "node_ip", "worker_pid"])
            df.insert(6, "diverged", diverged)
            # "not reached" (a finished configuration) or "not yet" (a running one), never 0 or inf;
            # a study without a target has neither column.
            if all(_missing(t) for t in df["target"]):
                df = df.drop(columns=["target", "updates_to_target"])
            else:
                df["updates_to_target"] = [
                    "" if _missing(t) else (str(int(u)) if not _missing(u) else
                                            "not reached" if state in TERMINAL_TRIAL_STATES else "not yet")
                    for t, u, state in zip(df["target"], df["updates_to_target"], df["state"])]
            df = df.rename(columns={"trial_id": "trial", "optuna_trial_number": "optuna", "last_step": "step",
                                    "metric_value": metric, "best_metric_value": seen,
                                    "updates_to_target": "to_target"})
            # Time to target goes first where the terminal is narrow: CSV and JSON always have it.
            optional = ("target", "to_target", "optuna", seen, "step", "diverged")
    emit(df, args.format, out, f"study {args.name}", optional)
    return 0


def _missing(v: Any) -> bool:
    """None or NaN (how a NULL comes out of a pandas column)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def query(args: argparse.Namespace, out: Console, err: Console) -> int:
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
    emit(df, args.format, out)
    if df.attrs.get("rows_cut"):
        err.print(
            f"showed the first {len(df)} rows; {'' if df.attrs.get('rows_cut_exact', True) else 'at least '}"
            f"{df.attrs['rows_cut']} more were cut (--max-rows N; 0: no limit)",
            highlight=False,
        )
    return 0


def _size(text: str, option: str) -> int:
    """A byte count: digits with an optional K, M or G (powers of 1024), more than 0."""
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
