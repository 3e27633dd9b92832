"""`study ui`: MLflow's own server (UI + REST) on a study's store, bound to 127.0.0.1.

The store's URL goes to the server in its environment (``servers.mlflow_server_env``), never on
its command line."""

from __future__ import annotations

import sys


def mlflow_ui_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The `mlflow server` command line; artifacts are served from where the runs recorded them."""
    return [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
