"""`study ui NAME`: MLflow's own server (UI + REST) on a study's store, bound to 127.0.0.1, opened on
the study's runs table.

The address printed is the experiment's training-runs table in MLflow's model-training layout
(MLflow 3 opens a bare experiment on its GenAI overview) through the view study/record/tracking.py
stores with the experiment: one row per configuration sorted by the study's metric, the parent run
in a group of its own, with the searched values, the state and the metric as the first columns.
The server's output goes to ``mlflow-ui.log`` in the study's directory, so the terminal shows the
address only. The store's URL goes to the server in its environment
(``servers.mlflow_server_env``), never on its command line; study/cluster/servers.py's ``serve`` starts
and stops it, as it does ``study mlflow-server``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from rich.console import Console

from study.cli.common import EXIT_BAD_INPUT, locate, serving
from study.cli.inspect import study_row
from study.cli.manage import study_mlflow_uri
from study.cluster.servers import LOCALHOST, PortBusy, mlflow_server_env, port_is_free, serve
from study.locations import redact
from study.record import tracking, tracking_experiment
from study.spec.model import load_spec

# In the study's directory: MLflow's warnings and request log, kept off the terminal.
SERVER_LOG = "mlflow-ui.log"


def command(args: argparse.Namespace, out: Console, err: Console) -> int:
    row = study_row(args, err)
    if row is None:
        return EXIT_BAD_INPUT
    stored = row["mlflow_uri"]
    # A study on a tracking server: its (redacted) address is all `study ui` needs to name it.
    uri = args.mlflow_uri or (stored if is_server(stored) else study_mlflow_uri(locate(args, args.name), stored))
    experiment_id = str(row["mlflow_experiment_id"])
    if is_server(uri):
        out.print(f"study {args.name} tracks to the MLflow server {redact(uri)}; open it there: "
                  f"{tracking.runs_url(without_login(uri), experiment_id)}", highlight=False, soft_wrap=True)
        return 0
    spec = load_spec(row["spec_yaml"]).model_dump(mode="json")

    def say(text: str) -> None:
        out.print(text, highlight=False, soft_wrap=True)
        sys.stdout.flush()

    log = locate(args, args.name).study_dir / SERVER_LOG
    return serving(lambda: run_ui(args.name, uri, experiment_id, spec, args.port, say, log), "the MLflow UI", err)


def mlflow_ui_command(port: int, host: str = LOCALHOST) -> list[str]:
    """The `mlflow server` command line; artifacts are served from where the runs recorded them."""
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]


def is_server(uri: str) -> bool:
    """Whether a tracking URI names a tracking server (http[s]://) rather than a store."""
    return not uri.startswith(("sqlite:", "file:", "postgresql", "mysql")) and "://" in uri


def without_login(url: str) -> str:
    """A server's address without any user:password (the browser asks for the login)."""
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def where_to_look(name: str, url: str, spec: dict[str, Any], log: Path) -> str:
    """What `study ui` prints: the address, what the page shows and where the server's output goes."""
    metric = spec.get("metric", "error")
    columns = [c.split("`")[1] for c in tracking.runs_view(spec)["selectedColumns"]]
    return (
        f"MLflow UI for study {name}: {url}  (Ctrl+C stops it)\n"
        f"  the runs table: one row per configuration, named by its settings, sorted by {metric}; "
        f"columns {', '.join(columns)} ('Columns' adds more)\n"
        f"  the parent run {name!r}, in a group of its own: the study's description, spec.yaml, its best {metric} "
        f"and configurations per state; a configuration's run: every parameter, its curves "
        f"({metric}/{tracking.SEED_MEAN} beside each seed's), system metrics\n"
        f"  the server's log: {log}"
    )


def run_ui(name: str, uri: str, experiment_id: str, spec: dict[str, Any], port: int,
           say: Callable[[str], None], log: Path) -> int:
    """Stores the runs view, starts the server (its output to ``log``), says where to look once it
    answers, serves until Ctrl+C. Raises servers.PortBusy for a busy port, RuntimeError for a server
    that never answers."""
    if not port_is_free(LOCALHOST, port):
        raise PortBusy(f"port {port} on {LOCALHOST} is in use; choose another with --port")
    try:
        tracking_experiment.store_runs_view(uri, experiment_id, spec)
    except tracking_experiment.StoreRefused as exc:
        raise RuntimeError(f"study {name}'s MLflow experiment {experiment_id} is not in {redact(uri)} "
                           f"({exc}); name its store with --mlflow-uri") from None
    url = tracking.runs_url(f"http://{LOCALHOST}:{port}", experiment_id)
    env = {**mlflow_server_env(uri), "MLFLOW_TRACKING_URI": uri}
    return serve(mlflow_ui_command(port), env, LOCALHOST, port, lambda: say(where_to_look(name, url, spec, log)),
                 log=log)
