"""`study ui` in a real headless browser: the study's experiment and its trial runs are on the page.
And the servers `study ui` and `study mlflow-server` start: their store's URL never on a command
line (psutil reads every process's), a busy port refused with exit 2 before anything starts.

The browser test needs Debian's chromium and chromium-driver and selenium
(tests/setup_browser.sh installs them)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import psutil
import pytest

from study.servers import wait_http
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


@needs_chromium
def test_study_ui_shows_the_experiment_and_its_trial_runs(quick_study, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    c = MlflowClient(quick_study.mlflow_uri)
    exp = c.get_experiment_by_name(quick_study.name)
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'trial'")
    port = _free_port()
    proc = subprocess.Popen(
        [STUDY_BIN, "ui", quick_study.name, "--dir", str(quick_study.root), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/health", proc)
        # The experiment's training-runs table (MLflow 3 opens on a GenAI overview otherwise).
        browser.get(f"{base}/#/experiments/{exp.experiment_id}/runs")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: quick_study.name in d.find_element(By.TAG_NAME, "body").text)
        # Trial runs are children of the study's parent run; expand it if the table nests them.
        names = [r.info.run_name for r in runs]

        def all_runs_visible(d):
            body = d.find_element(By.TAG_NAME, "body").text
            if all(n in body for n in names):
                return True
            # MLflow nests child runs under the parent; the run-name cell's button expands them.
            for el in d.find_elements(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']"):
                try:
                    el.click()
                except Exception:
                    pass
            return False

        wait.until(all_runs_visible)
        for run in runs:
            browser.get(f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
            WebDriverWait(browser, 60).until(
                lambda d: run.data.tags["ray_trial_id"] in d.find_element(By.TAG_NAME, "body").text
            )
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


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


def test_study_ui_keeps_the_store_url_off_the_command_line(quick_study):
    port = _free_port()
    proc = subprocess.Popen(
        [STUDY_BIN, "ui", quick_study.name, "--dir", str(quick_study.root), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        lines = _command_lines(proc)
        assert any("mlflow" in line and "server" in line for line in lines), lines
        store = quick_study.mlflow_uri.split(":///", 1)[1]  # the database file's path
        assert [line for line in lines if store in line or "mlflow.db" in line] == []
    finally:
        _stop(proc)


def test_study_ui_refuses_a_busy_port_naming_the_port_option(quick_study):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.monotonic()
        r = subprocess.run(
            [STUDY_BIN, "ui", quick_study.name, "--dir", str(quick_study.root), "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert f"port {port}" in r.stderr and "--port" in r.stderr, r.stderr
    assert "MLflow UI for study" not in r.stdout  # no URL for a server that is not there
    assert time.monotonic() - start < 30


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
