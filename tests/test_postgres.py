"""PostgreSQL as the results database and Optuna storage, and `study mlflow-server` on it: a real
PostgreSQL server (Debian's binaries, tests/setup_postgres.sh) started in a temp dir on 127.0.0.1,
a real MLflow tracking server, a tiny study tracking to both over the network; and the check that
the database password appears nowhere the study writes or prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy import create_engine, text

from conftest import STUDY_BIN, quick_spec
from pg import LocalPostgres, postgres_bindir
from study.cluster.servers import free_port, wait_http

pytestmark = pytest.mark.skipif(
    postgres_bindir() is None,
    reason="PostgreSQL server binaries absent (initdb/pg_ctl): run tests/setup_postgres.sh",
)

PASSWORD = "Pw-" + os.urandom(6).hex()  # unique, so a hit anywhere is a leak and nothing else


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    server = LocalPostgres(tmp_path_factory.mktemp("pg"))
    server.start()
    try:
        yield {
            "results": server.create_database("results", "study", PASSWORD),
            "mlflow": server.create_database("mlflow", "mlflow", PASSWORD + "m"),
            "server": server,
        }
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    port = free_port()
    artifacts = tmp_path_factory.mktemp("mlartifacts")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_BACKEND_STORE_URI"] = postgres["mlflow"]  # from the environment, not the command line
    log = open(tmp_path_factory.mktemp("mlflow-log") / "server.log", "w+")
    proc = subprocess.Popen(
        [STUDY_BIN, "mlflow-server", "--artifacts-destination", str(artifacts), "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout_s=180, proc=proc)
        yield {"uri": f"http://127.0.0.1:{port}", "artifacts": artifacts, "log": log}
    finally:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def pg_study(postgres, mlflow_server, tmp_path_factory):
    """A 2-trial study with --results-db on PostgreSQL (a password in the URL) and --mlflow-uri on
    the tracking server, run by the command line as a user would."""
    tmp = tmp_path_factory.mktemp("pg-study")
    started = time.time()
    spec_path = tmp / "pg.yaml"
    spec_path.write_text(yaml.safe_dump(quick_spec("pg-test", num_samples=2, repeats=2)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOMENTUM_STUDY_", "MLFLOW_", "RAY_"))}
    env.update(MOMENTUM_STUDY_DIR=str(tmp / "studies"), MOMENTUM_STUDY_SYSTEM_METRICS_INTERVAL="1")
    # A password in the tracking URI too (the server ignores it; a real one would check it).
    secret_uri = mlflow_server["uri"].replace("http://", f"http://study:{PASSWORD}t@")
    run = subprocess.run(
        [STUDY_BIN, "run", str(spec_path), "--results-db", postgres["results"], "--mlflow-uri", secret_uri],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    status = subprocess.run(
        [STUDY_BIN, "status", "pg-test", "--results-db", postgres["results"]],
        env=env, capture_output=True, text=True, timeout=120,
    )
    again = subprocess.run(
        [STUDY_BIN, "run", str(spec_path), "--results-db", postgres["results"], "--mlflow-uri", mlflow_server["uri"]],
        env=env, capture_output=True, text=True, timeout=300,
    )
    return {"run": run, "status": status, "again": again, "tmp": tmp, "started": started}


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    from study.record import results

    return ScriptDirectory(str(Path(results.__file__).with_name("migrations"))).get_current_head()


def test_study_on_postgres_records_trials_and_optuna_storage(postgres, pg_study):
    engine = create_engine(postgres["results"])
    with engine.connect() as c:
        assert c.execute(text("SELECT state FROM ms_studies WHERE name='pg-test'")).scalar() == "completed"
        trials = c.execute(text("SELECT state, members, hostname, ray_node_id FROM ms_trials")).all()
        points = c.execute(text("SELECT COUNT(*) FROM ms_metric_points")).scalar()
        version = c.execute(text("SELECT version_num FROM ms_alembic_version")).scalar()
    engine.dispose()
    assert [t.state for t in trials] == ["completed", "completed"]
    assert all(t.members == 2 and t.hostname and t.ray_node_id for t in trials)
    assert points == 2 * 2 * 4  # trials x members x reports
    assert version == _head_revision()  # every migration applied, on PostgreSQL too
    ot = optuna.load_study(study_name="pg-test", storage=postgres["results"])
    assert [t.state for t in ot.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert "pg-test" in pg_study["status"].stdout and "2/2 trials" in pg_study["status"].stdout


def test_trials_log_to_the_tracking_server_over_http(mlflow_server, pg_study):
    c = MlflowClient(mlflow_server["uri"])
    exp = c.get_experiment_by_name("pg-test")
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(c.get_metric_history(r.info.run_id, "error") for r in runs)
    # The parent's spec.yaml artifact went through the server to its artifact store.
    parent = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'parent'")[0]
    assert [a.path for a in c.list_artifacts(parent.info.run_id)] == ["spec.yaml"]
    assert list(mlflow_server["artifacts"].rglob("spec.yaml"))


def test_the_database_password_appears_nowhere(postgres, mlflow_server, pg_study):
    # The command's output: the run, `status`, and the refused second run (whose error names the DB).
    outputs = [pg_study[k].stdout + pg_study[k].stderr for k in ("run", "status", "again")]
    assert pg_study["again"].returncode == 2 and "already exists" in outputs[2]
    assert "***" in outputs[2]
    for out in outputs:
        assert PASSWORD not in out

    # Every row of every table of the results database (ours and Optuna's), as text.
    engine = create_engine(postgres["results"])
    with engine.connect() as c:
        tables = c.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        assert "ms_trials" in tables and "trials" in tables
        for table in tables:
            for row in c.execute(text(f'SELECT * FROM "{table}"')):
                assert PASSWORD not in json.dumps([str(v) for v in row]), table
    engine.dispose()

    # MLflow: every run's params and tags, and the experiment's tags.
    client = MlflowClient(mlflow_server["uri"])
    exp = client.get_experiment_by_name("pg-test")
    assert PASSWORD not in json.dumps(exp.tags)
    for run in client.search_runs([exp.experiment_id]):
        assert PASSWORD not in json.dumps(run.data.params) + json.dumps(run.data.tags)

    # Nor the MLflow server's log (it was given its database URL through the environment).
    mlflow_server["log"].seek(0)
    assert PASSWORD + "m" not in mlflow_server["log"].read()
    # Every file the study wrote: the study directory (spec.yaml, Tune's experiment state, its
    # pickled tuner, searcher and callbacks, checkpoints) and the local Ray's session directory
    # (logs, worker output), byte for byte. The password of either URL is nowhere.
    leak = PASSWORD.encode()
    roots = [pg_study["tmp"] / "studies"]
    roots += [p for p in Path("/tmp").glob("ms-ray-*") if p.stat().st_mtime >= pg_study["started"]]
    roots += [p for p in Path("/tmp/ray").glob("session_*") if p.is_dir() and p.stat().st_mtime >= pg_study["started"]]
    checked = 0
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 50_000_000:
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                checked += 1
                assert leak not in data, path
    assert checked > 10


def test_local_postgres_refuses_tcp_logins_without_the_password(postgres):
    import psycopg2

    server = postgres["server"]
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(host="127.0.0.1", port=server.port, user="study", password="wrong", dbname="results")


def test_mlflow_server_command_binds_to_localhost_by_default():
    from study.cluster.servers import mlflow_server_command, printable

    cmd = mlflow_server_command("/srv/artifacts", basic_auth=True)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert ["--app-name", "basic-auth"] == cmd[cmd.index("--app-name"):cmd.index("--app-name") + 2]
    assert "--backend-store-uri" not in cmd  # the database URL travels in the environment
    assert printable(["x", "postgresql://u:secret@db/mlflow"]) == "x postgresql://u:***@db/mlflow"
    assert sys.executable == cmd[0]


def test_study_ui_points_at_the_tracking_server(postgres, mlflow_server, pg_study):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOMENTUM_STUDY_", "MLFLOW_"))}
    r = subprocess.run([STUDY_BIN, "ui", "pg-test", "--results-db", postgres["results"]],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    shown = mlflow_server["uri"].replace("http://", "http://study:***@")  # the stored URI, redacted
    assert shown in r.stdout and "tracks to the MLflow server" in r.stdout
    # Where to look there: the study's runs table, in the view the study stored on the server.
    exp = MlflowClient(mlflow_server["uri"]).get_experiment_by_name("pg-test")
    assert f"{mlflow_server['uri']}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=study-runs" in r.stdout
    assert "mlflow.sharedViewState.study-runs" in exp.tags
    assert PASSWORD not in r.stdout + r.stderr
