"""A study's own Ray on this machine: private, on 127.0.0.1 only, and gone with its driver.

``study run`` without a cluster address runs on a Ray that ``start_local_ray`` starts in the
driver. Three things make it the study's own (issue #9):

- Private: ``ray.init(address="local")`` always starts a new Ray. Without an address ``ray.init``
  joins whatever ``RAY_ADDRESS`` or the last ``ray start`` names; "local" ignores both.
- Loopback only: the node's address is 127.0.0.1. Ray's gRPC servers (GCS, raylet, every worker)
  then listen on 127.0.0.1 only, and the dashboard agent, the runtime-env agent and the three
  Prometheus metrics endpoints (dashboard, autoscaler monitor, agent) bind 127.0.0.1 instead of
  0.0.0.0. Ray replaces 127.0.0.1 by the machine's network address
  (``ray._private.services.resolve_ip_for_localhost``) unless multi-node clusters are switched
  off with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, an environment variable Ray reads once, when
  ``ray`` is first imported. Importing this module sets it when ``ray`` is not imported yet; the
  study code imports this module before anything that imports Ray.
- Gone with its driver: a watchdog (``study.run.reaper``) ends every process of this Ray within a
  couple of seconds after the driver ends, ``kill -9`` included.

On a cluster none of this applies: the driver connects to the cluster's Ray (docs/cluster.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from study.run.reaper import SESSION_ENV

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

if "ray" not in sys.modules:
    os.environ[LOOPBACK_ENV] = "0"

log = logging.getLogger(__name__)

TEMP_PREFIX = "ms-ray-"
# Earlier local Rays' directories (their logs) kept for a look after the study: the newest this
# many, and any younger than TEMP_MIN_AGE_S; older ones are removed when a new local Ray starts.
TEMP_KEEP = 10
TEMP_MIN_AGE_S = 3600

# The watchdogs' pipes stay open for as long as this process lives: their end of file is the
# signal that the driver is gone.
_watchdogs: list[subprocess.Popen] = []


@dataclass(frozen=True)
class LocalRay:
    """What ``start_local_ray`` started."""

    gcs_address: str
    """``127.0.0.1:PORT``: the GCS of this Ray, reachable from this machine only."""
    session_dir: str
    """Ray's session directory (logs under ``logs/``); inside ``temp_dir``."""
    temp_dir: str
    """A directory of its own under /tmp (Ray's unix sockets need a short path); kept after the
    study, like Ray's /tmp/ray/session_*, for its logs, until ``prune_temp_dirs`` removes it."""
    watchdog_pid: int
    """The ``study.run.reaper`` process that ends this Ray's processes when the driver ends."""


def start_local_ray(
    log_to_driver: bool = False, logging_level: int = logging.WARNING, num_cpus: int | None = None
) -> LocalRay:
    """Starts a new Ray in this process for a study on this machine; never joins a running one.

    Every socket its processes listen on is on 127.0.0.1, and a watchdog ends them all within a
    couple of seconds after this process ends, however it ends. ``ray.shutdown()`` stops it as
    usual. ``log_to_driver`` and ``logging_level`` are ``ray.init``'s; ``num_cpus`` defaults to
    the machine's.

    Raises RuntimeError if Ray is already initialised here, or if ``ray`` was imported before
    this module with multi-node clusters on (see the module's docstring): Ray would then listen
    on the machine's network address, and a local study refuses to.
    """
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process; a local study starts its own")
    if ray_constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError(
            f"ray was imported before study.run.local_ray, without {LOOPBACK_ENV}=0: its local Ray would "
            "listen on this machine's network address. Import study.run.local_ray before ray."
        )
    if os.environ.get("RAY_ADDRESS"):
        log.warning("RAY_ADDRESS is set, but a study without --address runs on a local Ray of its own")

    prune_temp_dirs()
    temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir="/tmp")
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != SESSION_ENV}
    env[LOOPBACK_ENV] = "0"
    with open(os.path.join(temp_dir, "watchdog.log"), "ab") as watchdog_log:
        watchdog = subprocess.Popen(
            [sys.executable, "-m", "study.run.reaper", str(os.getpid()), token, temp_dir],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=watchdog_log,
            # -m study.run.reaper from the directory that holds the study package, installed or not.
            env=env, cwd=Path(__file__).resolve().parents[1],
            start_new_session=True,  # a signal to the driver's process group spares it
        )
    _watchdogs.append(watchdog)

    # Every process ray.init starts inherits the token, and the raylet hands it on to the workers.
    os.environ[SESSION_ENV] = token
    try:
        context = ray.init(
            address="local",
            _node_ip_address=LOOPBACK,
            include_dashboard=False,
            dashboard_host=LOOPBACK,
            _temp_dir=temp_dir,
            num_cpus=num_cpus,
            log_to_driver=log_to_driver,
            logging_level=logging_level,
        )
    finally:
        # Later children of the driver (not Ray's) must not be taken for Ray's.
        del os.environ[SESSION_ENV]
    info = context.address_info
    return LocalRay(info["gcs_address"], info["session_dir"], temp_dir, watchdog.pid)


def prune_temp_dirs(parent: str = "/tmp", keep: int = TEMP_KEEP, min_age_s: float = TEMP_MIN_AGE_S) -> list[str]:
    """Removes earlier local Rays' directories under ``parent``: those of this user beyond the
    ``keep`` most recently changed, older than ``min_age_s`` and named by no running process (a
    live Ray's watchdog carries its directory on its command line, however long the study runs).
    Ray itself never removes a ``_temp_dir``. Returns the paths removed."""
    import psutil

    now, uid = time.time(), os.getuid()
    found = []
    for path in Path(parent).glob(TEMP_PREFIX + "*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.is_dir() and not path.is_symlink() and st.st_uid == uid:
            found.append((st.st_mtime, str(path)))
    found.sort(reverse=True)
    old = [p for mtime, p in found[keep:] if now - mtime > min_age_s]
    if not old:
        return []
    named = set()
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info.get("cmdline") or []:
            named.update(p for p in old if p in arg)
    removed = [p for p in old if p not in named]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    if removed:
        log.debug("removed %d earlier local Ray directories under %s", len(removed), parent)
    return removed
