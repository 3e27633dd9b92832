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


def _printed_url(proc: subprocess.Popen, printed: list[str], timeout: float = 300) -> str:
    """The address `study ui` prints once its server answers (its stdout, line by line, kept in
    ``printed``)."""
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            printed.append(line)
            if "MLflow UI for study" in line:
                return line.split(": ", 1)[1].split()[0]
        elif proc.poll() is not None:
            break
    raise AssertionError(f"study ui printed no address: {''.join(printed)!r} (exit {proc.poll()})")


@pytest.fixture(scope="module")
def quick_ui(quick_study):
    """One `study ui` of the session's quick study for the tests that look at it (the browser, its
    processes' command lines): each start of the MLflow server it runs costs seconds."""
    port = _free_port()
    proc = subprocess.Popen(
        [STUDY_BIN, "ui", quick_study.name, "--dir", str(quick_study.root), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    printed: list[str] = []
    try:
        url = _printed_url(proc, printed)  # printed once the server answers
        # Keep reading its output: a full pipe would stall the server while the module's tests run.
        threading.Thread(target=lambda: printed.extend(proc.stdout), daemon=True).start()
        yield {"proc": proc, "port": port, "url": url, "printed": printed}
    finally:
        _stop(proc)


# What MLflow 3.17's GenAI layout lists in its sidebar and the model-training layout does not.
GENAI_ONLY = ("Judges", "Prompts", "Evaluation runs", "Sessions", "Agent versions", "Overview")


def _header_boxes(driver) -> dict[str, dict[str, float]]:
    """The runs table's header cells by column id (``params.`lr```), with their boxes on the page,
    and the box of the table's scrolling part (``viewport``)."""
    return driver.execute_script("""
        const out = {};
        for (const e of document.querySelectorAll('.ag-header-cell[col-id]')) {
            const r = e.getBoundingClientRect();
            out[e.getAttribute('col-id')] = {left: r.left, right: r.right, text: e.innerText};
        }
        const v = document.querySelector('.ag-body-viewport').getBoundingClientRect();
        out.viewport = {left: v.left, right: v.right, text: ''};
        return out;""")


@needs_chromium
def test_study_ui_opens_on_the_runs_table_in_the_training_layout(quick_study, quick_ui, browser, tmp_path):
    """At 1400 pixels: the model-training layout, the configurations named by their settings and
    sorted by error, the searched value, state and error in view, the parent run in its own group."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    c = MlflowClient(quick_study.mlflow_uri)
    exp = c.get_experiment_by_name(quick_study.name)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    by_error = [r.info.run_name for r in sorted(runs, key=lambda r: r.data.metrics["error"])]
    for run in runs:  # named by its settings: the optimizer, then the searched lr
        optimizer, lr = run.info.run_name.split(" ")[0], run.info.run_name.split(" lr ")[1].split(" ")[0]
        assert optimizer == run.data.params["optimizer"], run.info.run_name
        # 3 significant digits: within half a unit of the third
        assert abs(float(lr) - float(run.data.params["lr"])) <= 5e-3 * float(run.data.params["lr"]), run.info.run_name
    assert len(set(by_error)) == len(by_error)
    port, url = quick_ui["port"], quick_ui["url"]
    assert url == (f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey=study-runs"
                   f"&workflowType=machine_learning")
    browser.set_window_size(1400, 900)
    browser.get(url)
    columns = ["params.`lr`", "tags.`state`", "metrics.`error`"]

    def table_shown(d):
        body = d.find_element(By.TAG_NAME, "body").text
        return all(n in body for n in by_error) and all(c in _header_boxes(d) for c in columns)

    WebDriverWait(browser, 120).until(table_shown)
    browser.save_screenshot(str(tmp_path / "study-ui.png"))
    if os.environ.get("STUDY_UI_SCREENSHOT"):
        shutil.copy(tmp_path / "study-ui.png", os.environ["STUDY_UI_SCREENSHOT"])
    body = browser.find_element(By.TAG_NAME, "body").text
    lines = body.split("\n")
    # The model-training layout: its sidebar (Runs, Models), none of the GenAI one's entries.
    assert "Runs" in lines and "Models" in lines, lines[:20]
    assert [entry for entry in GENAI_ONLY if entry in lines] == [], lines[:30]
    # The searched value, the state and the error in view without scrolling, within 1400 pixels
    # (and within the table's visible part, beside the Assistant panel MLflow may open).
    width = browser.execute_script("return window.innerWidth")
    assert width == 1400
    boxes = _header_boxes(browser)
    for column in columns:
        box = boxes[column]
        assert boxes["viewport"]["left"] <= box["left"] and box["right"] <= min(width, boxes["viewport"]["right"]), (
            column, boxes)
    # The configurations in the order of their error, best first, in their group; the parent apart.
    assert sorted(by_error, key=body.index) == by_error, body
    trials, parents = body.index("Group: trial"), body.index("Group: parent")
    assert trials < min(body.index(n) for n in by_error) and max(body.index(n) for n in by_error) < parents, body
    assert body.find(quick_study.name, parents) > parents, body  # the parent run's row, under its group
    # The hidden columns stay hidden: a per-seed figure is one 'Columns' click away, not shown.
    assert "error/seed_0" not in body and "sampled.lr" not in body
    for run in runs:
        browser.get(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
        WebDriverWait(browser, 60).until(
            lambda d: run.data.tags["trial_id"] in d.find_element(By.TAG_NAME, "body").text
        )


def test_study_ui_prints_where_to_look_and_logs_the_server_to_the_study_directory(quick_study, quick_ui):
    import urllib.request

    log = quick_study.study_dir / "mlflow-ui.log"
    with urllib.request.urlopen(f"http://127.0.0.1:{quick_ui['port']}/health?from=test", timeout=30) as r:
        assert r.status == 200
    # The server's request log goes to the file (waited on: the server writes it after answering).
    wait_for = time.monotonic() + 60
    while "/health?from=test" not in log.read_text() and time.monotonic() < wait_for:
        time.sleep(0.2)
    assert "/health?from=test" in log.read_text()
    printed = "".join(quick_ui["printed"])
    assert printed.splitlines()[0].startswith(f"MLflow UI for study {quick_study.name}: http://127.0.0.1:"), printed
    assert f"the server's log: {log}" in printed, printed
    # Nothing of MLflow's: no warnings before the address, no request log after it.
    assert "HTTP/1.1" not in printed and "INFO" not in printed and "Warning" not in printed, printed
    assert len(printed.splitlines()) == 4, printed


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
        seen = c.get_metric_history(run.info.run_id, "lowest_error_seen")
        assert [m.step for m in seen] == [m.step for m in history]
        assert metrics["lowest_error_seen"] == min(m.value for m in history)


def test_each_configuration_has_its_seed_averaged_error_curve(quick_study):
    """error/mean_over_seeds (and error, the table's column) at each update is numpy's mean of the
    seeds' error/seed_N at that update."""
    import numpy as np

    c = MlflowClient(quick_study.mlflow_uri)
    exp = c.get_experiment_by_name(quick_study.name)
    for run in c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'"):
        seeds = sorted(k for k in run.data.metrics if k.startswith("error/seed_"))
        assert len(seeds) == 2, run.data.metrics  # the quick study's repeats
        curves = {k: {m.step: m.value for m in c.get_metric_history(run.info.run_id, k)} for k in seeds}
        mean = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "error/mean_over_seeds")}
        # One point per report, at the update it was taken (report_every 10 of 40 updates).
        assert sorted(mean) == [10, 20, 30, 40] and all(sorted(v) == sorted(mean) for v in curves.values())
        for step, value in mean.items():
            assert value == np.mean([curves[k][step] for k in seeds]), (run.info.run_name, step)
        assert {m.step: m.value for m in c.get_metric_history(run.info.run_id, "error")} == mean


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
    assert m["best_error"] == min(r.data.metrics["error"] for r in trials)  # the best configuration's result
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
    # The searched fields first, then the state and the metric, then the rest of an autoencoder's
    # paper figures (Eq. 5's mu_max and the SI scale, no RNN-only ones); in that order on the page.
    columns = ["params.`lr`", "params.`final_momentum`", "tags.`state`", "metrics.`error`",
               "metrics.`lowest_error_seen`", "params.`mu_max`", "params.`init_scale`"]
    assert view["selectedColumns"] == columns
    assert view["columnOrder"] == ["attributes.`Run Name`", *columns, "duration"]
    # The parent apart from the configurations: the table groups runs by their role.
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": tracking.ROLE_TAG}]
    assert c.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_study_made_before_the_training_layout_gets_it_on_resume(tmp_path):
    from study.record import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri)
    experiment_id = c.create_experiment("older", artifact_location=str(tmp_path / "a"))  # no kind, no view
    spec = {"name": "older", "task": "addition", "metric": "error", "mode": "min"}
    assert tracking.setup_study(uri, "older", spec, "name: older\n", str(tmp_path / "a"))[0] == experiment_id
    tags = c.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development" and tracking.VIEW_TAG in tags


def test_configurations_are_named_by_their_settings_and_told_apart_where_equal(tmp_path):
    from study.record import tracking
    from study.record.run_names import configuration_name

    assert configuration_name({"optimizer": "nag", "mu_max": 0.99, "spectral_radius": 1.1, "lr": 0.005},
                              {"mu_max": 0.99, "spectral_radius": 1.1}) == "nag mu 0.99 r 1.1"
    # A transformed search shows the value trained with; a momentum near 1 keeps its digits.
    assert configuration_name({"optimizer": "cm", "mu_0": 0.9995, "lr": 0.0031622776},
                              {"one_minus_mu_0": 0.0005, "lr": 0.0031622776}) == "cm mu0 0.9995 lr 0.00316"
    assert configuration_name({"optimizer": "nag"}, {"optimizer": "nag"}) == "nag"

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"name": "named", "task": "addition", "metric": "error", "mode": "min"}
    experiment_id, parent = tracking.setup_study(uri, "named", spec, "name: named\n", str(tmp_path / "a"))
    runs = [
        tracking.ensure_trial_run(uri, experiment_id, parent, "named", trial_id, n,
                                  {"optimizer": "nag", "mu_max": mu, "lr": 0.005}, {"mu_max": mu})
        for n, (trial_id, mu) in enumerate([("aa11-0", 0.99), ("bb22-0", 0.99), ("bb22-1", 0.9)])
    ]
    # The id only where two would be the same; a configuration found again keeps its run and name.
    assert tracking.ensure_trial_run(uri, experiment_id, parent, "named", "bb22-0", 1, {"optimizer": "nag",
                                     "mu_max": 0.99, "lr": 0.005}, {"mu_max": 0.99}) == runs[1]
    c = MlflowClient(uri)
    assert [c.get_run(r).info.run_name for r in runs] == ["nag mu 0.99", "nag mu 0.99 (bb22-0)", "nag mu 0.9"]


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
