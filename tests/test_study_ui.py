"""`study ui` in a real headless browser: the study's experiment and its trial runs are on the page.
And the servers `study ui` and `study mlflow-server` start: their store's URL never on a command
line (psutil reads every process's), a busy port refused with exit 2 before anything starts.

The browser test needs Debian's chromium and chromium-driver and selenium
(tests/setup_browser.sh installs them)."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import psutil
import pytest

from study.cluster.servers import wait_http
from mlflow.tracking import MlflowClient

from conftest import STUDY_BIN

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium: run tests/setup_browser.sh to install it"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    try:
        wait_http(url, timeout, proc)
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"study ui did not answer at {url}: {exc}") from None


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1600,1000", f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _printed_url(proc: subprocess.Popen, timeout: float = 300) -> str:
    """The address `study ui` prints once its server answers (its stdout, line by line)."""
    import select

    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen += line
            if "MLflow UI for study" in line:
                return line.split(": ", 1)[1].split()[0]
        elif proc.poll() is not None:
            break
    raise AssertionError(f"study ui printed no address: {seen!r} (exit {proc.poll()})")


@pytest.fixture(scope="module")
def quick_ui(quick_study):
    """One `study ui` of the session's quick study for the tests that look at it (the browser, its
    processes' command lines): each start of the MLflow server it runs costs seconds."""
    port = _free_port()
    proc = subprocess.Popen(
        [STUDY_BIN, "ui", quick_study.name, "--dir", str(quick_study.root), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        url = _printed_url(proc)  # printed once the server answers
        # Keep reading its output: a full pipe would stall the server while the module's tests run.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield {"proc": proc, "port": port, "url": url}
    finally:
        _stop(proc)


@needs_chromium
def test_study_ui_opens_on_the_runs_table_sorted_by_error_with_the_paper_columns(quick_study, quick_ui, browser,
                                                                                 tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    c = MlflowClient(quick_study.mlflow_uri)
    exp = c.get_experiment_by_name(quick_study.name)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    by_error = [r.info.run_name for r in sorted(runs, key=lambda r: r.data.metrics["error"])]
    port, url = quick_ui["port"], quick_ui["url"]
    assert url == f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=study-runs"
    # Wide enough for every chosen column: the table renders only the columns in view.
    browser.set_window_size(2400, 1000)
    browser.get(url)
    header = ["error", "best_error", "lr", "mu_0", "mu_max", "init_scale", "spectral_radius", "state"]

    def table_shown(d):
        body = d.find_element(By.TAG_NAME, "body").text
        return all(n in body for n in by_error) and all(f"\n{h}\n" in body for h in header)

    WebDriverWait(browser, 120).until(table_shown)
    body = browser.find_element(By.TAG_NAME, "body").text
    # The trials' rows in the order of their error, best first (the view sorts by the metric).
    assert sorted(by_error, key=body.index) == by_error, body
    # The hidden columns stay hidden: a per-seed figure is one 'Columns' click away, not shown.
    assert "error/seed_0" not in body and "sampled.lr" not in body
    browser.save_screenshot(str(tmp_path / "study-ui.png"))
    if os.environ.get("STUDY_UI_SCREENSHOT"):
        shutil.copy(tmp_path / "study-ui.png", os.environ["STUDY_UI_SCREENSHOT"])
    for run in runs:
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
        WebDriverWait(browser, 60).until(
            lambda d: run.data.tags["trial_id"] in d.find_element(By.TAG_NAME, "body").text
        )


def _command_lines(proc: subprocess.Popen) -> list[str]:
    """The command lines of ``proc`` and all its descendants (the server, its uvicorn workers)."""
    root = psutil.Process(proc.pid)
    lines = []
    for p in [root, *root.children(recursive=True)]:
        try:
            lines.append(" ".join(p.cmdline()))
        except psutil.Error:
            pass
    return lines


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_study_ui_keeps_the_store_url_off_the_command_line(quick_study, quick_ui):
    proc = quick_ui["proc"]
    _wait_http(f"http://127.0.0.1:{quick_ui['port']}/health", proc)
    lines = _command_lines(proc)
    assert any("mlflow" in line and "server" in line for line in lines), lines
    store = quick_study.mlflow_uri.split(":///", 1)[1]  # the database file's path
    assert [line for line in lines if store in line or "mlflow.db" in line] == []


def test_study_ui_refuses_a_busy_port_naming_the_port_option(quick_study):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [STUDY_BIN, "ui", quick_study.name, "--dir", str(quick_study.root), "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert f"port {port}" in r.stderr and "--port" in r.stderr, r.stderr
    assert "MLflow UI for study" not in r.stdout  # no URL for a server that is not there


def test_mlflow_server_takes_the_backend_url_from_the_environment_only(tmp_path):
    secret = "Pw-" + secrets.token_hex(6)  # unique: any hit in a command line is the URL leaking
    backend = f"sqlite:///{tmp_path}/{secret}.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_BACKEND_STORE_URI"] = backend
    port = _free_port()
    proc = subprocess.Popen(
        [STUDY_BIN, "mlflow-server", "--port", str(port), "--artifacts-destination", str(tmp_path / "artifacts")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 180, proc)
        lines = _command_lines(proc)
        assert len(lines) >= 2, lines  # `study mlflow-server` and `mlflow server` at least
        assert [line for line in lines if secret in line] == []
        assert (tmp_path / f"{secret}.db").exists()  # and the server does use that store
    finally:
        _stop(proc)


def test_mlflow_server_refuses_a_busy_port(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{tmp_path}/m.db"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([STUDY_BIN, "mlflow-server", "--port", str(port)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 2 and "--port" in r.stderr, (r.returncode, r.stderr)


# --- what the runs table and optuna-dashboard show: the quick study's records ---------------------


def test_trial_runs_carry_the_paper_figures_once_each(quick_study):
    c = MlflowClient(quick_study.mlflow_uri)
    exp = c.get_experiment_by_name(quick_study.name)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        for name in ("lr", "mu_0", "mu_max", "init_scale", "spectral_radius"):
            assert name in params, (name, params)
        assert not [k for k in params if k.startswith("sampled.")], params  # lr once, not sampled.lr too
        assert run.data.tags["state"] == "completed"
        history = c.get_metric_history(run.info.run_id, "error")
        best = c.get_metric_history(run.info.run_id, "best_error")
        assert [m.step for m in best] == [m.step for m in history]
        assert metrics["best_error"] == min(m.value for m in history)


def test_trial_runs_last_as_long_as_their_trials(quick_study):
    from sqlalchemy import create_engine, text

    c = MlflowClient(quick_study.mlflow_uri)
    engine = create_engine(quick_study.results_db)
    with engine.connect() as db:
        rows = db.execute(text("SELECT mlflow_run_id, started_at, ended_at FROM ms_trials")).all()
    engine.dispose()
    for run_id, started_at, ended_at in rows:
        info = c.get_run(run_id).info
        started_at, ended_at = (dt.datetime.fromisoformat(str(v)) for v in (started_at, ended_at))
        trial_s = (ended_at - started_at).total_seconds()
        assert abs((info.end_time - info.start_time) / 1000 - trial_s) < 1.0, (run_id, info, trial_s)


def test_the_parent_run_holds_the_study_best_and_counts(quick_study):
    c = MlflowClient(quick_study.mlflow_uri)
    exp = c.get_experiment_by_name(quick_study.name)
    parent = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'parent'")[0]
    m = parent.data.metrics
    assert (m["trials_completed"], m["trials_diverged"], m["trials_pruned"], m["trials_failed"]) == (3, 0, 0, 0)
    trials = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    assert m["best_error"] == min(r.data.metrics["best_error"] for r in trials)
    assert [a.path for a in c.list_artifacts(parent.info.run_id)] == ["spec.yaml"]
    assert parent.data.tags["state"] == "completed"


def test_optuna_names_the_objective_and_links_each_trial_to_its_runs(quick_study):
    import optuna

    c = MlflowClient(quick_study.mlflow_uri)
    study = optuna.load_study(study_name=quick_study.name, storage=quick_study.results_db)
    assert study.metric_names == ["error"]
    for t in study.trials:
        run = c.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["trial_id"] == t.user_attrs["trial_id"]
        assert run.data.tags["population"] == t.user_attrs["ray_trial_id"]
        assert run.data.tags["optuna_trial_number"] == str(t.number)


def test_setup_study_puts_the_description_on_the_parent_and_the_runs_view_on_the_experiment(tmp_path):
    import json

    from study.record import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"name": "described", "task": "curves", "metric": "error", "mode": "min",
            "description": "NAG vs CM on CURVES, Table 1's mu_max column",
            "search": {"lr": {"type": "float"}, "final_momentum": {"type": "float"}}}
    experiment_id, parent = tracking.setup_study(uri, "described", spec, "name: described\n", str(tmp_path / "a"))
    c = MlflowClient(uri)
    assert c.get_run(parent).data.tags["mlflow.note.content"] == spec["description"]
    view = json.loads(c.get_experiment(experiment_id).tags[tracking.VIEW_TAG])
    assert view["orderByKey"] == "metrics.`error`" and view["orderByAsc"] is True
    # An autoencoder: Eq. 5's mu_max and the SI scale, no RNN-only figures; searched fields too.
    assert view["selectedColumns"] == ["metrics.`error`", "metrics.`best_error`", "tags.`state`", "params.`lr`",
                                       "params.`mu_max`", "params.`init_scale`", "params.`final_momentum`"]


def test_child_runs_take_the_trials_own_start_and_end(tmp_path):
    from study.record import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"name": "timed", "task": "addition", "metric": "error", "mode": "min"}
    experiment_id, parent = tracking.setup_study(uri, "timed", spec, "name: timed\n", str(tmp_path / "a"))
    # A write that lands late (from the journal) still records when the trial ran.
    start = int(time.time() * 1000) - 600_000
    run_id = tracking.ensure_trial_run(uri, experiment_id, parent, "timed", "t1", 0, {"lr": 0.1},
                                       {"lr": 0.1, "one_minus_mu_max": 0.01}, start)
    tracking.finish_trial(uri, run_id, "completed", end_time_ms=start + 2_000)
    run = MlflowClient(uri).get_run(run_id)
    assert (run.info.start_time, run.info.end_time) == (start, start + 2_000)
    assert run.data.params == {"lr": "0.1", "sampled.one_minus_mu_max": "0.01"}


def _system_metrics(uri: str, run_id: str) -> list[str]:
    return [k for k in MlflowClient(uri).get_run(run_id).data.metrics if k.startswith("system/")]


def test_a_trial_shorter_than_the_sampling_interval_still_logs_system_metrics(tmp_path):
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from study.record import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri)
    experiment_id = c.create_experiment("short", artifact_location=str(tmp_path / "a"))
    ours, plain = (c.create_run(experiment_id).info.run_id for _ in range(2))
    for monitor in (tracking.TrialSystemMetrics(ours, sampling_interval=2, tracking_uri=uri),
                    SystemMetricsMonitor(plain, sampling_interval=2, tracking_uri=uri)):
        monitor.start()
        time.sleep(1.0)  # a trial that ends before the first interval does
        monitor.finish()
    assert "system/cpu_utilization_percentage" in _system_metrics(uri, ours)
    # MLflow's own monitor drops that sample: if this starts to fail, MLflow fixed it and
    # TrialSystemMetrics can go (study/record/tracking.py).
    assert _system_metrics(uri, plain) == []
