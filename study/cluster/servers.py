"""The shared services of a multi-node study: an MLflow tracking server and PostgreSQL.

``study mlflow-server`` wraps ``mlflow server`` with a database backend (PostgreSQL on a cluster)
and a proxied artifact store, bound to 127.0.0.1 unless told otherwise; trials on every node log
to it over HTTP. The database URL reaches the server in its environment, never on its command
line. Production runs PostgreSQL managed or containerised (deploy/); the tests start a throwaway
one with tests/pg.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

from study.errors import LocationError
from study.locations import redact

LOCALHOST = "127.0.0.1"


def mlflow_server_command(
    artifacts_destination: str | None = None,
    host: str = LOCALHOST,
    port: int = 5000,
    workers: int = 1,
    basic_auth: bool = False,
    allowed_hosts: str | None = None,
) -> list[str]:
    """``mlflow server`` with a proxied artifact store; its database comes from ``mlflow_server_env``.

    With ``--serve-artifacts`` clients upload artifacts through the server (mlflow-artifacts:/),
    so nodes need no access to the artifact store itself. ``basic_auth`` runs MLflow's
    ``basic-auth`` app: clients then give MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
    """
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
        "--serve-artifacts",
    ]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination]
    if basic_auth:
        cmd += ["--app-name", "basic-auth"]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def mlflow_server_env(backend_store_uri: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``mlflow server``: ``environ`` (default: ours) with the backend store.

    The database URL, password included, travels in MLFLOW_BACKEND_STORE_URI (``mlflow server``
    reads its ``--backend-store-uri`` from there) and never on the command line, which every user
    of the machine can read (``ps``, /proc/PID/cmdline); the environment is readable only by the
    server's user. MLflow hands it on to its uvicorn workers in their environment too.
    """
    return {**(os.environ if environ is None else environ), "MLFLOW_BACKEND_STORE_URI": backend_store_uri}


def printable(cmd: list[str]) -> str:
    """A command line with any URL's password hidden."""
    return " ".join(redact(a) or "" for a in cmd)


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (SO_REUSEADDR, as uvicorn and most
    servers bind, so a port in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port that was free a moment ago, for tests and ``LocalPostgres``.

    Racy by nature (bind, close, then the server binds): another process can take the port in
    between. It stays for throwaway servers that need their port before they start: PostgreSQL's
    ``-p`` takes no 0, and with ``mlflow server --port 0`` the port would have to be fished out of
    the server's log. Servers for users listen on the port the user names.
    """
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 120, proc: subprocess.Popen | None = None) -> None:
    """Polls ``url`` until it answers 200 (or the process died, or the timeout).

    Hand-written: it must also stop as soon as the server's process exits, which a generic retry
    (urllib3's ``Retry``, tenacity) knows nothing of; the rest is a dozen lines of the standard
    library.
    """
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:  # refused, reset, timed out, or an HTTP error status
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


class PortBusy(LocationError):
    """A port already in use: the place to serve on, not the server, is what must change (exit 2)."""


def serve(cmd: list[str], env: dict[str, str], host: str, port: int, on_ready: Callable[[], None],
          ready_timeout_s: float = 300, log: Path | None = None) -> int:
    """Runs a server command (``mlflow server``) in the foreground until it exits or Ctrl+C; the
    one start and stop of ``study ui`` and ``study mlflow-server``.

    Refuses a busy port before starting anything (PortBusy: ``mlflow server`` on a busy port waits
    and then exits 0 without ever serving); calls ``on_ready`` once ``/health`` answers, so an
    address is printed only when it works; a server that exits or never answers is stopped and
    reported (RuntimeError). MLflow has no public Python API that starts its server (``mlflow
    server`` is the supported way), so it runs as a child process. With ``log`` its output (MLflow's
    start-up warnings, a line per HTTP request) goes to that file, overwritten, instead of ours.
    """
    if not port_is_free(host, port):
        raise PortBusy(f"port {port} on {host} is in use; choose another with --port")
    probe = LOCALHOST if host in ("0.0.0.0", "::", "") else host
    output = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        output = open(log, "wb")  # the server writes to it until it stops
    proc = subprocess.Popen(cmd, env=env, stdout=output, stderr=subprocess.STDOUT if output else None)
    _stop_on_sigterm()
    try:
        try:
            wait_http(f"http://{probe}:{port}/health", ready_timeout_s, proc)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{exc}{f'; its output is in {log}' if log else ''}") from None
        on_ready()
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
        if output is not None:
            output.close()


def _stop_on_sigterm() -> None:
    """SIGTERM (kill, a service manager) ends the server as Ctrl+C does, instead of leaving it
    running without its parent."""
    import signal
    import threading

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

