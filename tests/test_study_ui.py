"""`study ui` in a real headless browser: the study's experiment and its trial runs are on the page.
And the servers `study ui` and `study mlflow-server` start: their store's URL never on a command
line (psutil reads every process's), a busy port refused with exit 2 before anything starts.
What the study's runs hold in MLflow is tested in tests/test_mlflow_runs.py.

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
    assert url == (f"http://study.localhost:{port}/#/experiments/{exp.experiment_id}/runs?"
                   f"viewStateShareKey=study-runs&workflowType=machine_learning")
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
    # No Assistant panel, nor its button: MLflow offers them only on localhost/127.0.0.1/::1 pages.
    assert browser.execute_script("return document.querySelectorAll('[data-assistant-ui]').length") == 0
    # The searched value, the state and the error in view without scrolling, within 1400 pixels
    # (and within the table's visible part).
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
        browser.get(f"http://study.localhost:{port}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
        WebDriverWait(browser, 60).until(
            lambda d: run.data.tags["trial_id"] in d.find_element(By.TAG_NAME, "body").text
        )
    # The Assistant check can fail: the same page on 127.0.0.1 gets MLflow's Assistant (its panel or button).
    browser.get(url.replace("study.localhost", "127.0.0.1"))
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script("return document.querySelectorAll('[data-assistant-ui]').length") > 0)


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
    assert printed.splitlines()[0].startswith(f"MLflow UI for study {quick_study.name}: http://study.localhost:"), printed
    # and the same page at 127.0.0.1, for a browser that does not resolve *.localhost
    assert printed.splitlines()[1].split(": ", 1)[1].startswith(f"http://127.0.0.1:{quick_ui['port']}/#/experiments/")
    assert f"the server's log: {log}" in printed, printed
    # Nothing of MLflow's: no warnings before the address, no request log after it.
    assert "HTTP/1.1" not in printed and "INFO" not in printed and "Warning" not in printed, printed
    assert len(printed.splitlines()) == 5, printed


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
