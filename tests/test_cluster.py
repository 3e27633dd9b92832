"""`study submit` / `status --job` / `logs` against a real two-node Ray cluster on 127.0.0.1.

The cluster is started with `ray start` (a head and a worker, one CPU each, token authentication
on, ports and temp dirs of its own) once for this module, and its processes are ended by pid in
teardown: `ray stop` would end every Ray on the machine, the other tests' included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import STUDY_BIN, quick_spec
from study.cluster import jobs as cluster
from study.cluster.servers import free_port

RAY_BIN = str(Path(sys.executable).with_name("ray"))


def _ray_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MOMENTUM_STUDY_", "MLFLOW_"))}
    # The job's driver runs `python -m study.cli`: the venv's python, as after `source .venv/bin/activate`.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", MOMENTUM_STUDY_SYSTEM_METRICS_INTERVAL="1")
    return env


def _ours(temp_dirs: list[str]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if any(d in cmd for d in temp_dirs) and proc.pid != os.getpid():
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A head (resource head_node) and a worker (resource worker_node) with token auth."""
    import tempfile

    token = secrets.token_hex(32)
    env = _ray_env(token)
    # Short temp dirs: Ray's unix socket paths must stay under ~107 characters.
    head_tmp = tempfile.mkdtemp(prefix="msh-", dir="/tmp")
    worker_tmp = tempfile.mkdtemp(prefix="msw-", dir="/tmp")
    gcs, dash = free_port(), free_port()
    common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]

    def agent_ports() -> list[str]:
        # Ray's agents default to fixed ports (52365, ...) that the suite's own Ray may hold already:
        # then the head's job agent cannot start ("No available agent to submit job").
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    try:
        subprocess.run(
            [RAY_BIN, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             "--resources=" + json.dumps({"head_node": 1}), f"--temp-dir={head_tmp}", *common, *agent_ports()],
            env=env, check=True, capture_output=True, text=True, timeout=180,
        )
        subprocess.run(
            [RAY_BIN, "start", f"--address=127.0.0.1:{gcs}", "--resources=" + json.dumps({"worker_node": 1}),
             f"--temp-dir={worker_tmp}", *common, *agent_ports()],
            env=env, check=True, capture_output=True, text=True, timeout=180,
        )
        yield {"address": f"http://127.0.0.1:{dash}", "gcs": f"127.0.0.1:{gcs}", "token": token, "env": env}
    finally:
        # kill -9 at once, with every descendant (a worker retitled `ray::...` no longer names the
        # temp dir): nothing of this throwaway cluster needs an orderly shutdown, and after SIGTERM
        # one of its processes outlived a 15 s grace period in every run (teardown 16-17 s).
        procs = _ours([head_tmp, worker_tmp])
        for p in list(procs):
            try:
                procs += p.children(recursive=True)
            except psutil.Error:
                pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=30)
        for d in (head_tmp, worker_tmp):
            shutil.rmtree(d, ignore_errors=True)


def _study(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([STUDY_BIN, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _wait_job(job_id: str, address: str, env: dict[str, str], timeout: float = 420) -> str:
    """The job's end state, asked of Ray's own Jobs client in this process: a `study status --job`
    process per poll cost a second or two of the CPU the job runs on. What `study status --job`
    prints is checked once, after."""
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(address, headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value)
        time.sleep(1)
    return "TIMEOUT"


def _points(db: Path) -> int:
    """The metric points in a results DB (read-only: never creates the file), 0 before it has any."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT COUNT(*) FROM ms_metric_points").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0  # not created (or migrated) yet


def test_submitted_study_runs_trials_on_both_nodes(two_nodes, tmp_path):
    studies, storage = tmp_path / "studies", tmp_path / "shared-storage"
    spec = quick_spec("cluster-test", num_samples=2, max_concurrent_trials=2)
    spec_path = tmp_path / "cluster.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = two_nodes["env"]

    r = _study(["submit", str(spec_path), "--address", two_nodes["address"], "--dir", str(studies),
                "--storage", str(storage)], env)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[-1]
    assert job_id.startswith("study-cluster-test-")

    state = _wait_job(job_id, two_nodes["address"], env)
    logs = _study(["logs", job_id, "--address", two_nodes["address"]], env)
    assert logs.returncode == 0, logs.stderr
    assert state == "SUCCEEDED", logs.stdout[-4000:]
    assert "study cluster-test completed" in logs.stdout
    follow = _study(["logs", job_id, "--address", two_nodes["address"], "--follow"], env)
    assert follow.returncode == 0 and "study cluster-test completed" in follow.stdout

    status = _study(["status", "--job", job_id, "--address", two_nodes["address"]], env)
    assert f"job {job_id}: SUCCEEDED" in status.stdout
    assert "cluster-test" in status.stdout and "python -m study.cli run spec.yaml" in status.stdout

    # Per trial, the node it ran on: one trial on each one-CPU node.
    q = _study(["query", "cluster-test", "--dir", str(studies), "--format", "json",
                "SELECT trial_id, state, hostname, node_ip, ray_node_id FROM ms_trials"], env)
    assert q.returncode == 0, q.stderr
    rows = json.loads(q.stdout)
    assert len(rows) == 2 and {row["state"] for row in rows} == {"completed"}
    assert all(row["node_ip"] and row["hostname"] for row in rows), rows

    node_ids = {row["ray_node_id"] for row in rows}
    assert len(node_ids) == 2, rows
    nodes = subprocess.run(
        [sys.executable, "-c", "import json, ray; ray.init(address=%r, logging_level='ERROR'); "
         "print(json.dumps({n['NodeID']: sorted(n['Resources']) for n in ray.nodes() if n['Alive']}))"
         % two_nodes["gcs"]],
        env=env, capture_output=True, text=True, timeout=120,
    )
    resources = json.loads(nodes.stdout.strip().splitlines()[-1])
    assert {name for nid in node_ids for name in resources[nid] if name.endswith("_node")} == {"head_node", "worker_node"}

    # Checkpoints went to the shared storage, not the job's temporary working directory.
    assert (storage / "cluster-test" / "tune").is_dir()
    assert list((storage / "cluster-test" / "tune").glob("trial_*/checkpoint_*"))


def test_submit_without_the_clusters_token_is_refused_clearly(two_nodes, tmp_path):
    env = {k: v for k, v in two_nodes["env"].items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text(yaml.safe_dump(quick_spec("no-token")))
    r = _study(["submit", str(spec_path), "--address", two_nodes["address"]], env)
    assert r.returncode == 2
    assert "Authentication" in r.stderr or "token" in r.stderr
    assert two_nodes["token"] not in r.stdout + r.stderr


def test_token_is_read_from_the_token_file(two_nodes, tmp_path, monkeypatch):
    path = tmp_path / "auth_token"
    path.write_text(two_nodes["token"] + "\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert cluster.auth_token() == two_nodes["token"]
    with pytest.raises(cluster.ClusterError, match="no job"):
        cluster.job_info("no-such-job", two_nodes["address"])


def test_credentials_travel_in_the_environment_not_the_entrypoint():
    env = cluster.job_env(results_db="postgresql+psycopg2://u:hunter2@db:5432/r", storage="s3://b/p")
    assert env["MOMENTUM_STUDY_RESULTS_DB"].endswith("@db:5432/r")
    assert env["MOMENTUM_STUDY_STORAGE"] == "s3://b/p"
    assert "hunter2" not in cluster.entrypoint()
    runtime = cluster.runtime_env(Path("/tmp"), env)
    assert {Path(p).name for p in runtime["py_modules"]} == {"study", "trainables"}
    assert "__pycache__" in runtime["excludes"]


def test_jobs_address_needs_an_http_address(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    with pytest.raises(cluster.ClusterError, match="--address"):
        cluster.jobs_address(None)
    assert cluster.jobs_address("head:8265") == "http://head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert cluster.jobs_address(None) == "http://head:8265"


def test_study_stop_ends_a_submitted_study_gracefully(two_nodes, tmp_path):
    """`study stop --job`: Ray's job supervisor sends SIGINT (cluster.job_env), Tune stops the
    trials gracefully, and the study ends interrupted with its trials recorded, ready to resume."""
    studies = tmp_path / "studies"
    spec = quick_spec("cluster-stop", num_samples=2, max_concurrent_trials=2)
    spec["config"]["updates"] = 5000
    spec["config"]["report_every"] = 50
    spec_path = tmp_path / "stop.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = two_nodes["env"]
    r = _study(["submit", str(spec_path), "--address", two_nodes["address"], "--dir", str(studies),
                "--storage", str(tmp_path / "storage")], env)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 300
    while _points(studies / "cluster-stop" / "results.db") == 0:
        assert time.monotonic() < deadline, "the submitted study never reported"
        time.sleep(0.5)
    stop = _study(["stop", "--job", job_id, "--address", two_nodes["address"]], env, timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _wait_job(job_id, two_nodes["address"], env) == "STOPPED"
    status = _study(["status", "--job", job_id, "--address", two_nodes["address"]], env)
    assert f"job {job_id}: STOPPED" in status.stdout, status.stdout + status.stderr
    q = _study(["query", "cluster-stop", "--dir", str(studies), "--format", "json",
                "SELECT state, state_reason FROM ms_studies"], env)
    row = json.loads(q.stdout)[0]
    assert row["state"] == "interrupted", row  # recorded by the driver itself, not left "running"
    assert "study resume cluster-stop" in (row["state_reason"] or "")
