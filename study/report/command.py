"""`study report NAME [--out DIR] [--no-mlflow]`: the command line's side of study.report."""

from __future__ import annotations

import argparse
from typing import Any

EXIT_BAD_INPUT = 2


def report_command(args: argparse.Namespace, out: Any, err: Any) -> int:
    from study.report.build import build_report, log_to_mlflow

    try:
        rep = build_report(args.name, args.dir, args.results_db, args.out)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    out.print(f"report for study {args.name}: {rep.out_dir / 'report.md'} ({len(rep.files)} files)",
              highlight=False, soft_wrap=True)
    for line in rep.verdicts:
        out.print(f"finding: {line}", highlight=False, soft_wrap=True)
    for note in rep.notes:
        out.print(f"note: {note}", highlight=False, soft_wrap=True)
    if args.no_mlflow:
        return 0
    try:
        run_id = log_to_mlflow(rep, args.mlflow_uri)
    except Exception as exc:  # noqa: BLE001 - the files are written; say why MLflow did not get them
        err.print(f"[bold red]error:[/] report written, but not logged to MLflow: {exc}", markup=True,
                  highlight=False, soft_wrap=True)
        return 1
    out.print(f"logged as artifacts report/ of MLflow parent run {run_id}", highlight=False, soft_wrap=True)
    return 0
