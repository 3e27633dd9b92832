"""A cluster's commands (docs/cluster.md): `study submit SPEC`, `study logs JOB`, `study status --job`,
`study stop --job` and `study mlflow-server`."""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd
from rich.console import Console
from rich.table import Table

from study.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, serving
from study.cli.output import cell, emit
from study.cluster import jobs as cluster
from study.cluster.servers import mlflow_server_command, mlflow_server_env, printable, serve
from study.locations import redact


def job_status(args: argparse.Namespace, out: Console) -> int:
    info = cluster.job_info(args.job, args.address)
    if args.format != "table":
        emit(pd.DataFrame([info]), args.format, out)
        return 0
    table = Table(title=f"job {info['job_id']}: {info['status']}", show_header=False)
    for key, value in info.items():
        table.add_row(key, cell(value))
    out.print(table)
    if info["study"]:
        out.print(f"trials: study status {info['study']} (with the cluster's --results-db / --dir)")
    return 0


def stop_job(args: argparse.Namespace, out: Console, err: Console) -> int:
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


def submit(args: argparse.Namespace, out: Console, err: Console) -> int:
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


def logs(args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.follow:
        for chunk in cluster.follow_logs(args.job, args.address):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.write(cluster.logs(args.job, args.address))
    return 0


def mlflow_server(args: argparse.Namespace, out: Console, err: Console) -> int:
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
    return serving(lambda: serve(cmd, mlflow_server_env(backend), args.host, args.port, ready), "the MLflow server", err)
