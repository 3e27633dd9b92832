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

# The name the printed address uses for the loopback server. MLflow 3's UI opens its Assistant
# panel (a third of a 1400-pixel window) by itself on a browser's first visit when the page's
# host is literally localhost, 127.0.0.1 or ::1, and the server has no switch for it; under another
# loopback name it offers no Assistant at all. Browsers resolve every *.localhost name to the
# loopback address themselves (RFC 6761; Chrome, Edge, Firefox), so this address reaches the same
# server bound to 127.0.0.1 and nothing else. The server accepts that Host header and Origin (MLflow
# refuses unknown ones against DNS rebinding) as it does the other loopback names; the 127.0.0.1 address is
# printed too, for a browser that does not resolve *.localhost.
UI_HOST = "study.localhost"


def mlflow_ui_env(uri: str, port: int) -> dict[str, str]:
    """The server's environment: the store (servers.mlflow_server_env), and the Host headers of the
    loopback names (``UI_HOST`` among them) and ``UI_HOST``'s Origin, which MLflow accepts."""
    hosts = [f"{h}:{port}" for h in (UI_HOST, "localhost", LOCALHOST, "[::1]")]
    return {**mlflow_server_env(uri), "MLFLOW_TRACKING_URI": uri, "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(hosts),
            "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": f"http://{UI_HOST}:{port}"}


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


def where_to_look(name: str, url: str, spec: dict[str, Any], log: Path, loopback_url: str | None = None) -> str:
    """What `study ui` prints: the address, what the page shows and where the server's output goes."""
    metric = spec.get("metric", "error")
    columns = [c.split("`")[1] for c in tracking.runs_view(spec)["selectedColumns"]]
    also = (f"  the same page where a browser does not resolve *.localhost: {loopback_url} (there MLflow opens "
            f"its Assistant panel on a first visit)\n") if loopback_url else ""
    return (
        f"MLflow UI for study {name}: {url}  (Ctrl+C stops it)\n{also}"
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
    url = tracking.runs_url(f"http://{UI_HOST}:{port}", experiment_id)
    loopback = tracking.runs_url(f"http://{LOCALHOST}:{port}", experiment_id)
    return serve(mlflow_ui_command(port), mlflow_ui_env(uri, port), LOCALHOST, port,
                 lambda: say(where_to_look(name, url, spec, log, loopback)), log=log)
