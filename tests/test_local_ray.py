"""A study's local Ray (study.run.local_ray): on 127.0.0.1 only, its own even beside a running
`ray start` cluster, and gone within seconds of its driver's `kill -9` (issue #9).

Each test runs a real driver, a small Python process that calls start_local_ray, runs two tasks
and sleeps, and inspects its processes with psutil. A `ray start --head` cluster (one CPU, its
own ports, temp dir and token, on 127.0.0.1) runs beside it for the whole module, and its
processes are ended by pid in teardown: `ray stop` would end every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from study.cluster.servers import free_port

RAY_BIN = str(Path(sys.executable).with_name("ray"))
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}  # the last: 127.0.0.1 on an IPv6 socket

DRIVER = """
import json, os, sys, time
from study.run.local_ray import start_local_ray
import ray

local = start_local_ray(num_cpus=1)

@ray.remote
def pid():
    return os.getpid()

workers = ray.get([pid.remote() for _ in range(2)])
print(json.dumps({"pid": os.getpid(), "workers": workers, **local.__dict__}), flush=True)
time.sleep(float(sys.argv[1]))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MOMENTUM_STUDY_"))}
    env.update(RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _gone_within(proc: psutil.Process | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while proc is not None and _running(proc) and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc is None or not _running(proc)


def _tree(roots: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for proc in roots:
        try:
            found += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            pass
    return found


def _listening(procs: list[psutil.Process]) -> list[tuple[str, str, int]]:
    sockets = []
    for proc in procs:
        try:
            sockets += [(proc.name(), c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    return sockets


@pytest.fixture(scope="module")
def other_ray():
    """A `ray start --head` cluster that a bare ray.init() would join: RAY_ADDRESS names it."""
    token = secrets.token_hex(32)
    # Without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, `ray start` turns 127.0.0.1 into this
    # machine's network address; this cluster stays on loopback like everything in these tests.
    env = _env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    temp_dir = tempfile.mkdtemp(prefix="msl-", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    try:
        subprocess.run(
            [RAY_BIN, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
            env=env, check=True, capture_output=True, text=True, timeout=120,
        )
        # `ray start` daemonises its processes; those that name the temp dir, with the agents their
        # raylet started (whose process titles hide their command lines).
        roots = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
        yield {"gcs": f"127.0.0.1:{port}", "token": token, "temp_dir": temp_dir, "processes": _tree(roots)}
    finally:
        roots = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
        procs = _tree(roots)
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def _driver(other_ray: dict):
    """A driver on start_local_ray with the other cluster in RAY_ADDRESS and its token at hand."""
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "120"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=_env(RAY_ADDRESS=other_ray["gcs"], RAY_AUTH_TOKEN=other_ray["token"], RAY_AUTH_MODE="token"),
    )
    info = None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "the driver did not start Ray within 120 s"
        line = proc.stdout.readline()
        assert line, f"the driver exited with {proc.wait()} before starting Ray"
        info = json.loads(line)
        info["proc"] = proc
        time.sleep(1)  # the agents' servers come up after ray.init returns
        yield info
    finally:
        proc.kill()
        proc.wait()
        if info:
            _gone_within(_pid(info["watchdog_pid"]), 15)
            shutil.rmtree(info["temp_dir"], ignore_errors=True)


@pytest.fixture(scope="module")
def running_driver(other_ray):
    """One driver for the tests that only look at it."""
    with _driver(other_ray) as info:
        yield info


@pytest.fixture
def driver(other_ray):
    """A driver of its own, for a test that kills it."""
    with _driver(other_ray) as info:
        yield info


def _pid(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _ray_processes(info: dict) -> list[psutil.Process]:
    """The driver's Ray: its descendants but the watchdog (its own session, not the driver's child
    in Ray's sense, though it is one in the process tree)."""
    return [p for p in _tree([psutil.Process(info["pid"])]) if p.pid != info["watchdog_pid"]]


def test_every_listening_socket_of_the_local_ray_is_on_loopback(running_driver):
    driver = running_driver
    procs = _ray_processes(driver)
    names = {p.name() for p in procs if _running(p)}
    assert {"gcs_server", "raylet"} <= names, names
    sockets = _listening(procs)
    gcs_port = int(driver["gcs_address"].rsplit(":", 1)[1])
    assert any(name == "gcs_server" and port == gcs_port for name, _, port in sockets), sockets
    assert len(sockets) >= 6, sockets  # GCS, raylet (2), workers, agents: there is something to check
    assert [s for s in sockets if s[1] not in LOOPBACK] == []
    assert driver["gcs_address"].startswith("127.0.0.1:")


def test_local_ray_does_not_join_a_running_cluster(running_driver, other_ray):
    driver = running_driver
    assert driver["gcs_address"] != other_ray["gcs"]
    assert not driver["session_dir"].startswith(other_ray["temp_dir"])
    assert driver["session_dir"].startswith(driver["temp_dir"])
    # The driver started a GCS and a raylet of its own.
    names = {p.name() for p in _ray_processes(driver)}
    assert {"gcs_server", "raylet"} <= names, names


def test_killed_driver_leaves_no_ray_process_and_spares_other_rays(driver, running_driver, other_ray):
    procs = _ray_processes(driver)
    workers = {p.pid for p in procs} & set(driver["workers"])
    assert len(procs) >= 6 and workers == set(driver["workers"]), [p.name() for p in procs]
    # Two other Rays: the `ray start` cluster and another study's local Ray.
    others = [p for p in other_ray["processes"] + _ray_processes(running_driver) if _running(p)]
    assert [p.name() for p in others].count("raylet") == 2, [p.name() for p in others]

    start = time.monotonic()
    driver["proc"].send_signal(signal.SIGKILL)
    driver["proc"].wait()
    left = procs
    while left and time.monotonic() - start < 15:
        time.sleep(0.2)
        left = [p for p in left if _running(p)]
    gone_after = time.monotonic() - start
    assert left == [], f"after {gone_after:.1f}s: {[(p.pid, p.name()) for p in left]}"
    assert gone_after < 8, gone_after
    assert all(_running(p) for p in others), [(p.pid, p.name()) for p in others if not _running(p)]
    assert _gone_within(_pid(driver["watchdog_pid"]), 5)


def test_watchdog_exits_with_a_driver_that_ends_normally(other_ray):
    proc = subprocess.run([sys.executable, "-c", DRIVER, "0"], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    try:
        assert _gone_within(_pid(info["watchdog_pid"]), 10)
        assert all(_running(p) for p in other_ray["processes"])
    finally:
        shutil.rmtree(info["temp_dir"], ignore_errors=True)


def test_earlier_local_ray_directories_are_pruned_but_recent_and_live_ones_kept(tmp_path):
    """A new local Ray removes earlier ones' directories beyond the newest few, unless recent or
    still named by a running process (a long study's watchdog)."""
    now = time.time()
    dirs = []
    ages = [600, 1200, 1800, 7200, 7300, 7400, 7500, 7600]  # s: ms-ray-0 the newest, 0-2 within the hour
    for i, age in enumerate(ages):
        d = tmp_path / f"ms-ray-{i:08d}"
        (d / "session_x" / "logs").mkdir(parents=True)
        (d / "session_x" / "logs" / "raylet.out").write_text("log\n")
        os.utime(d, (now - age, now - age))
        dirs.append(d)
    (tmp_path / "ms-ray-notadir").write_text("x")  # a file of that name is not touched
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", f"--temp-dir={dirs[5]}"])
    try:
        prune = ("import json, sys; from study.run.local_ray import prune_temp_dirs; "
                 "print(json.dumps(prune_temp_dirs(sys.argv[1], keep=2, min_age_s=3600)))")
        out = subprocess.run([sys.executable, "-c", prune, str(tmp_path)], capture_output=True, text=True,
                             timeout=60, cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 0, out.stderr
    finally:
        live.kill()
        live.wait()
    removed = sorted(json.loads(out.stdout.strip().splitlines()[-1]))
    # Kept: the two newest (0, 1), one beyond them but within the hour (2), one a running process names (5).
    assert removed == sorted(str(d) for d in (dirs[3], dirs[4], dirs[6], dirs[7]))
    assert [d.exists() for d in dirs] == [True, True, True, False, False, True, False, False]
    assert (tmp_path / "ms-ray-notadir").is_file()
