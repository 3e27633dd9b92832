"""The watchdog of a study's local Ray: when the driver goes, so does every process of its Ray.

Ray's agents and workers notice a dead driver only when they next poll the raylet or the GCS,
10-60 s after a ``kill -9`` (issue #9). ``study.run.local_ray.start_local_ray`` therefore starts this
module as ``python -m study.run.reaper DRIVER_PID TOKEN TEMP_DIR`` in a session of its own, with a pipe from
the driver on its stdin, before it starts Ray.

Which processes are that Ray's: those ``ray.init`` started inherit ``TOKEN`` in the environment
variable ``MOMENTUM_STUDY_RAY_SESSION``, and the raylet hands it on to every worker it spawns.
The agents' environment cannot be read back (their process titles overwrite it), so while the
driver lives the watchdog also records, twice a second, the descendants of every process with
the token: the process tree, recorded before the driver's death reparents it. Another Ray on the
machine, another study's included, has neither the token nor an ancestor with it.

When the pipe reaches end of file (the kernel closes it however the driver ends, SIGKILL
included) or the driver's pid is no longer running, the watchdog ends every recorded process and
every process with the token (SIGTERM, then SIGKILL after a second) and exits. After a normal
``ray.shutdown()`` they are gone already, and it exits at once.

This module imports only the standard library and psutil, so it starts in a fraction of a second.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

import psutil

SESSION_ENV = "MOMENTUM_STUDY_RAY_SESSION"


def _running(proc: psutil.Process) -> bool:
    # A killed process stays a zombie until its parent reaps it; it is gone for our purposes.
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _has_token(proc: psutil.Process, token: str) -> bool:
    try:
        return proc.environ().get(SESSION_ENV) == token
    except (psutil.Error, OSError):
        return False  # gone, a zombie, another user's, or a title written over its environment


def _descendants(procs: set[psutil.Process]) -> set[psutil.Process]:
    found = set(procs)
    for proc in procs:
        try:
            found.update(proc.children(recursive=True))
        except psutil.Error:
            pass
    return found


def _names_dir(proc: psutil.Process, directory: str | None) -> bool:
    """Whether the process's command line names this Ray's own temporary directory (the agents
    are started with ``--session-dir`` or ``--temp-dir`` inside it)."""
    if not directory:
        return False
    try:
        return any(directory in arg for arg in proc.cmdline())
    except (psutil.Error, OSError):
        return False


def session_processes(token: str, directory: str | None = None) -> set[psutil.Process]:
    """Every live process on the machine with ``token`` in its environment or, for an agent
    started in the last moments before the driver died (before the watchdog recorded it), with
    this Ray's temporary ``directory`` on its command line; and their descendants."""
    me = os.getpid()
    return _descendants({p for p in psutil.process_iter()
                         if p.pid != me and (_has_token(p, token) or _names_dir(p, directory))})


class Tracker:
    """The driver's Ray processes, as the driver's process tree shows them while it lives."""

    def __init__(self, driver: psutil.Process, token: str):
        self.driver, self.token = driver, token
        self.seen: dict[psutil.Process, bool] = {}  # process -> has the token
        self.processes: set[psutil.Process] = set()

    def update(self) -> None:
        # One scan of /proc per call (children() builds the parent map once); a process's token
        # is read once. A process is Ray's if it or an ancestor below the driver has the token.
        try:
            children = self.driver.children(recursive=True)
        except psutil.Error:
            return
        by_pid = {p.pid: p for p in children}
        parent: dict[int, int] = {}
        for proc in children:
            if proc not in self.seen:
                self.seen[proc] = _has_token(proc, self.token)
            try:
                parent[proc.pid] = proc.ppid()
            except psutil.Error:
                pass
        for proc in children:
            ancestor: psutil.Process | None = proc
            while ancestor is not None:
                if self.seen.get(ancestor):
                    self.processes.add(proc)
                    break
                ancestor = by_pid.get(parent.get(ancestor.pid, -1))


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil refuses a pid that was reused meanwhile
        except psutil.Error:
            pass


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _running(p)]
    return alive


def end_session(token: str, recorded: set[psutil.Process] = frozenset(), grace_s: float = 1.0,
                rounds: int = 5, directory: str | None = None) -> int:
    """SIGTERM, then SIGKILL, to the recorded processes, those with ``token`` and their
    descendants; repeated while a dying raylet still spawns workers. Returns how many it signalled."""
    ended = 0
    for _ in range(rounds):
        live = {p for p in recorded if _running(p)}
        procs = [p for p in _descendants(live) | session_processes(token, directory) if _running(p)]
        if not procs:
            break
        ended += len(procs)
        _signal_all(procs, signal.SIGTERM)
        alive = _wait_gone(procs, grace_s)
        _signal_all(alive, signal.SIGKILL)
        _wait_gone(alive, 1.0)
    return ended


def wait_for_driver(driver_pid: int, token: str, poll_s: float = 0.5) -> set[psutil.Process]:
    """Returns, once the driver has ended, the Ray processes recorded meanwhile. The driver has
    ended at end of file on stdin (the driver's pipe) or, should a forked child of the driver
    still hold the pipe open, when its pid is no longer running."""
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return set()
    tracker = Tracker(driver, token)
    fd = sys.stdin.fileno()
    while _running(driver):
        tracker.update()
        readable, _, _ = select.select([fd], [], [], poll_s)
        if readable and not os.read(fd, 4096):
            break
    return tracker.processes


def main(argv: list[str]) -> int:
    driver_pid, token = int(argv[0]), argv[1]
    directory = argv[2] if len(argv) > 2 else None  # this Ray's own temporary directory
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl+C meant for the driver is not for us
    recorded = wait_for_driver(driver_pid, token)
    n = end_session(token, recorded, directory=directory)
    if n:
        print(f"study.run.reaper: driver {driver_pid} gone; ended {n} processes of its Ray", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
