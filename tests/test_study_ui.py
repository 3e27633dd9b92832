"""`study ui` in a real headless browser: the study's experiment and its trial runs are on the page.

Needs Debian's chromium and chromium-driver and selenium (tests/setup_browser.sh installs them)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

import pytest

from study.servers import wait_http
from mlflow.tracking import MlflowClient

from conftest import STUDY_BIN

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
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
