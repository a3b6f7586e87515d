"""The real-browser test: JupyterLab in headless Chromium runs the cycle notebook, Run is clicked in the panel, and
the page must show the verified result and a rendered timeline. The static HTML report must open without console
errors."""

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.chromium import CHROMIUM, CHROMIUM_ARGS, open_page
from workbench.notebooks import NOTEBOOK_DIR, execute, export_html

pytestmark = [pytest.mark.lab, pytest.mark.browser]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path, lab_kernel):
    import papermill

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: make system-deps installs it")
    root = tmp_path / "lab"
    root.mkdir()
    papermill.execute_notebook(
        str(NOTEBOOK_DIR / "10-live-update-cycle.ipynb"),
        str(root / "cycle.ipynb"),
        parameters={"AUTO_RUN": False, "MEMFDS": 1, "MEMFD_SIZE": "8M", "SESSION": "browser-test"},
        prepare_only=True,
    )
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "WORKBENCH_DATA": str(tmp_path / "data"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg")}
    log = open(tmp_path / "jupyter.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={root}",
            "--allow-root",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyter.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield base, token
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_cycle_notebook_in_jupyterlab_click_run(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, token = jupyterlab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/lab/tree/cycle.ipynb?token={token}")
        page.wait_for_selector(".jp-Notebook", timeout=120_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        try:
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.connectionStatus"
                " === 'connected'",
                timeout=180_000,
            )
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            run_button = page.locator("button.jupyter-button", has_text="Run").first
            run_button.wait_for(timeout=600_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "before-run.png"), full_page=True)
            raise
        run_button.click()
        try:
            outcome = page.wait_for_selector(".wb-outcome b", timeout=1_800_000)
            assert outcome.inner_text() == "verified", page.inner_text(".wb-outcome")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
        finally:
            page.screenshot(path=str(tmp_path / "cycle-panel.png"), full_page=True)
        body = page.inner_text("body")
        assert "blackout" in body and "record" in body
        browser.close()


@pytest.mark.notebook
def test_html_report_opens_without_console_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "data"))
    executed = execute(NOTEBOOK_DIR / "00-tour.ipynb", tmp_path / "tour.ipynb", {"SMOKE": True})
    page_path = export_html(executed, tmp_path / "tour.html")
    with open_page() as (page, errors):
        page.goto(page_path.as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert errors == []
