"""Fixtures of the real-browser tests: Debian's Chromium driven by Playwright, a JupyterLab server.

Run them with ``.venv/bin/python -m pytest -m browser tests/browser`` after
``apt-get install -y chromium`` and ``.venv/bin/pip install -e ".[browser]"`` (README, "Tests in
a real browser"). Playwright never downloads a browser here: it starts ``/usr/bin/chromium``
(``$MOE_LAB_CHROMIUM`` chooses another) through ``executable_path``, with the flags Chromium needs
on a machine without network.

JupyterLab runs on 127.0.0.1, on a free port, with a random token, serving a temporary copy of
the notebooks (a run never writes into ``notebooks/``), with its own settings: every cell in the
DOM (no windowing, so the tests can read any cell), no autosave, no news fetched. It is stopped
at the end of the session, kernels included.

Screenshots land in ``$MOE_LAB_SCREENSHOTS`` when it is set (to look at by eye), else in
pytest's temporary folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
CHROMIUM_FLAGS = [
    # what Chromium needs here (no sandbox as root, no GPU) and, with the network closed, no
    # background connections (they fail, many at a time, and slow the start)
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension:plugin": {"autosave": False},
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
SERVER_START_TIMEOUT_S = 120
CELL_TIMEOUT_MS = 300_000  # a whole notebook's "Run All" on a busy 2-core machine


def chromium_path() -> str:
    path = os.environ.get("MOE_LAB_CHROMIUM", "/usr/bin/chromium")
    if not Path(path).is_file():
        pytest.fail(
            f"no Chromium at {path}: install Debian's (apt-get install -y chromium) or set"
            " MOE_LAB_CHROMIUM to a Chromium binary"
        )
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Chromium, headless, driven by Playwright (pip install -e ".[browser]")."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail('Playwright is not installed: .venv/bin/pip install -e ".[browser]"')
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("MOE_LAB_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: where it is and how to get in."""

    url: str
    token: str
    root: Path

    def notebook_url(self, name: str) -> str:
        # a fresh workspace per page, so that no tab of an earlier test is restored
        workspace = f"t{secrets.token_hex(4)}"
        return f"{self.url}/lab/workspaces/{workspace}/tree/{name}?reset&token={self.token}"


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 with a random port and token, serving copies of the notebooks."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root, settings = base / "root", base / "settings"
    root.mkdir()
    for notebook in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"):
        shutil.copy(notebook, root)  # without jupytext.toml: nothing is paired or written back
    for plugin, values in LAB_SETTINGS.items():
        path = settings / (plugin.replace(":", "/") + ".jupyterlab-settings")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(24)
    log = (base / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",  # CI runs as root
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={base / 'workspaces'}",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: kernel and cell state
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(base / "runtime")},
        start_new_session=True,  # its own process group: stopped with its kernels at the end
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited: {(base / 'jupyterlab.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {url} in {SERVER_START_TIMEOUT_S} s")
                time.sleep(0.25)
        yield Lab(url=url, token=token, root=root)
    finally:
        _stop(server)
        log.close()


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to JupyterLab's process group (it shuts its kernels down), then SIGKILL."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)


@pytest.fixture
def open_notebook(browser, jupyterlab) -> Iterator[Any]:
    """``open_notebook(name)``: a page with the notebook open in JupyterLab, all cells run."""
    contexts = []

    def open_and_run(name: str) -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(jupyterlab.notebook_url(name))
        page.wait_for_function(
            "name => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            " return w && w.sessionContext && w.context.path === name; }",
            arg=name,
            timeout=120_000,
        )
        page.evaluate(
            "async () => { const w = window.jupyterapp.shell.currentWidget;"
            " await w.context.ready; await w.sessionContext.ready; }"
        )
        # Run > Run All Cells; the command resolves when every cell has run
        finished = page.evaluate(
            "() => window.jupyterapp.commands.execute('notebook:run-all-cells')"
        )
        assert finished, f"{name}: Run All did not finish"
        # Every code cell has an execution count. Read from the notebook's model, not from the
        # prompts: a cell whose source starts hidden (the exercises' solutions) has no prompt.
        page.wait_for_function(
            "() => window.jupyterapp.shell.currentWidget.content.widgets"
            ".filter(cell => cell.model.type === 'code')"
            ".every(cell => Number.isInteger(cell.model.executionCount))",
            timeout=CELL_TIMEOUT_MS,
        )
        return page

    yield open_and_run
    for context in contexts:
        context.close()
