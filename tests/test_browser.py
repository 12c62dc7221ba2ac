"""Every widget in a real browser: JupyterLab on 127.0.0.1 (a random token, a fresh root per
test) driven by headless Chromium (Debian's `chromium`, through Playwright).

Run alone with ``pytest -m browser``. Screenshots of each scenario go to the folder printed at
the start (``NBDURABLE_SCREENSHOTS``, else ``browser-screenshots/`` in the working directory).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import nbdurable

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("NBDURABLE_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("NBDURABLE_SCREENSHOTS", "browser-screenshots")).resolve()
LONG = 120_000  # ms: a cell that runs a map on Dask, a kernel start on a busy machine
SETTINGS = {  # JupyterLab settings of the test server: every cell in the page, no pop-ups
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
}

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lab:
    """A JupyterLab server over a fresh root holding the example notebooks."""

    def __init__(self, root: Path):
        self.root, self.token, self.port = root, secrets.token_hex(16), _free_port()
        for notebook in (ROOT / "notebooks").glob("*.ipynb"):
            shutil.copy(notebook, root)
        settings = root.parent / "settings"
        for name, value in SETTINGS.items():
            path = settings / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NBDURABLE_", "PYTEST_", "JPY_"))}
        self.output = (root.parent / "lab.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             # nothing of another session: no restored tabs, no changed settings
             f"--LabApp.workspaces_dir={root.parent / 'workspaces'}",
             f"--LabApp.user_settings_dir={root.parent / 'settings'}"],
            cwd=root, env=env, stdout=self.output, stderr=subprocess.STDOUT)
        self._wait_ready()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root.parent / "lab.log").read_text()
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("JupyterLab did not start within 120 s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.output.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; CI installs it)")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots: {SHOTS}")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM,
                                     args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def lab(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    server = Lab(root)
    yield server
    server.close()


@pytest.fixture
def page(browser, lab):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


# -- driving JupyterLab -----------------------------------------------------------------------

def open_notebook(page, lab: Lab, name: str) -> None:
    page.goto(lab.url(f"lab/tree/{name}"))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=LONG)
    page.wait_for_function("() => window.jupyterapp !== undefined")
    wait_idle(page)


_IDLE = ("() => { const w = window.jupyterapp.shell.currentWidget;"
         " const k = w && w.sessionContext && w.sessionContext.session"
         " && w.sessionContext.session.kernel; return !!k && k.status === 'idle'; }")


def wait_idle(page) -> None:
    """Until the notebook's kernel is started and idle."""
    page.wait_for_function(_IDLE, timeout=LONG)


def command(page, name: str, args: dict | None = None) -> None:
    """A JupyterLab command, as a menu or a shortcut would run it."""
    page.evaluate("([name, args]) => { window.jupyterapp.commands.execute(name, args); }",
                  [name, args or {}])  # not awaited: Run All's promise ends with the last cell


def run_all(page) -> None:
    """Clear every output and execution count, then Run All: ``wait_all_ran`` then sees this
    run's counts only."""
    command(page, "notebook:clear-all-cell-outputs")
    page.wait_for_function("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
                           ".every(e => !/\\d/.test(e.textContent))")
    command(page, "notebook:run-all-cells")


def wait_all_ran(page, timeout: int = LONG) -> None:
    """Until every code cell shows an execution count (none queued or running)."""
    page.wait_for_function(
        "() => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];"
        " return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }",
        timeout=timeout)


def restart_kernel(page) -> None:
    command(page, "kernelmenu:restart")
    page.click(".jp-Dialog button.jp-mod-accept")
    page.wait_for_selector(".jp-Dialog", state="detached")
    wait_idle(page)  # cells run after this wait for the restarted kernel anyway


def outputs_text(page) -> str:
    """What the cells printed and displayed (not their source)."""
    return "\n".join(page.locator(".jp-OutputArea").all_inner_texts())


def errors(page) -> list[str]:
    return page.locator("[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def button(page, text: str):
    return page.locator("button.jupyter-button", has_text=text).first


# -- the scenarios --------------------------------------------------------------------------------

def test_approval_waits_for_a_click_then_replays_after_a_restart(page, lab):
    open_notebook(page, lab, "02-approval.ipynb")
    run_all(page)
    approve = button(page, "approve")
    approve.wait_for(timeout=LONG)
    page.wait_for_selector("text=/left/")  # the countdown to the 24 h timeout
    shot(page, "1-approval-waiting")
    approve.click()
    wait_all_ran(page)
    text = outputs_text(page)
    assert len(re.findall(r"^published \d+ characters", text, re.M)) == 1, text
    assert not errors(page)
    shot(page, "1-approval-done")

    restart_kernel(page)  # 2. Run All again: replays, nothing waits, nothing published again
    run_all(page)
    wait_all_ran(page)
    text = outputs_text(page)
    assert "replayed" in text, text
    assert len(re.findall(r"^published \d+ characters", text, re.M)) == 1, text
    shot(page, "2-approval-replayed")
    assert "⏳ waiting for" not in text, text
    assert not errors(page)
    shot(page, "2-approval-replayed")
    sends = nbdurable.list_events("02-approval.ipynb", log=lab.root / ".nbdurable" /
                                  "log.duckdb")
    assert sends["key"].tolist() == ["approve"]
    # JupyterLab sent each cell's id (metadata.cellId): each step's attempts record its cell
    import nbformat

    from nbdurable.engine.header import step_of

    nb = nbformat.read(lab.root / "02-approval.ipynb", as_version=4)
    cells = {step_of(c.source): c.id for c in nb.cells if step_of(c.source)}
    recorded = nbdurable.sql("SELECT DISTINCT step, json_extract_string(body, '$.cell_id') AS "
                             "cell FROM events WHERE kind = 'attempt_started'",
                             log=lab.root / ".nbdurable" / "log.duckdb")
    assert dict(zip(recorded["step"], recorded["cell"], strict=True)) == cells


def test_a_reloaded_page_gets_the_waiting_cells_buttons_back(page, lab):
    """Reload the tab while a cell waits for a click (the kernel is busy): the saved notebook's
    buttons come back alive, and a click in the reloaded page ends the wait."""
    open_notebook(page, lab, "02-approval.ipynb")
    run_all(page)
    button(page, "reject").wait_for(timeout=LONG)
    command(page, "docmanager:save")  # what autosave does every 2 minutes
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    page.reload()
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=LONG)
    again = button(page, "approve")
    again.wait_for(timeout=LONG)
    shot(page, "3-reloaded-waiting")
    again.click()
    page.wait_for_selector("text=/event .approve. fired/")  # the panel in the new page updated
    log = lab.root / ".nbdurable" / "log.duckdb"
    deadline = time.monotonic() + LONG / 1000
    while _completed(log) != {"review", "publish"}:  # the cell went on, and the next one ran
        assert time.monotonic() < deadline, f"the run did not go on: {_completed(log)}"
        time.sleep(0.2)
    assert nbdurable.list_events("02-approval.ipynb", log=log)["key"].tolist() == ["approve"]
    shot(page, "3-reloaded-clicked")


def test_the_viewer_follows_a_run_and_acts_on_it(page, lab):
    (lab.root / "viewer.ipynb").write_text(_notebook(
        "%load_ext nbdurable\nimport nbdurable",
        "%%durable first\nx = 1",
        "nbdurable.view()",
        "%%durable slow\nimport time\ntime.sleep(4)\ny = x + 1"))
    open_notebook(page, lab, "viewer.ipynb")
    run_all(page)
    page.wait_for_selector(".nbdurable-steps >> text=running", timeout=LONG)
    shot(page, "4-viewer-running")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.nbdurable-steps')].some("
        "t => (t.textContent.match(/completed/g) || []).length >= 2)", timeout=LONG)
    shot(page, "4-viewer-completed")
    page.fill("input[placeholder='event key']", "ship")
    page.fill("input[placeholder='payload (JSON, optional)']", '{"n": 1}')
    button(page, "push event").click()
    page.wait_for_selector("text=/pushed `ship`/")
    page.wait_for_selector(".nbdurable-pending >> text=ship", timeout=LONG)
    page.select_option(".widget-dropdown:has(label:text-is('from step')) select", label="slow")
    button(page, "reset from step").click()
    page.wait_for_selector("text=/reset slow and every step after it/")
    button(page, "confirm reset").click()
    page.wait_for_selector("text=/reset slow:/")
    page.wait_for_selector(".nbdurable-steps >> text=reset", timeout=LONG)
    shot(page, "4-viewer-reset")


_POST = """async ([run, xsrf]) => {
    const headers = xsrf ? {"X-XSRFToken": decodeURIComponent(
        document.cookie.match(/_xsrf=([^;]+)/)[1])} : {};
    const reply = await fetch(`${window.location.pathname.split("lab")[0]}nbdurable/api/runs/`
                              + `${run}/events/from-browser`, {method: "POST", body: "1", headers});
    return [reply.status, await reply.text()];
}"""


def test_the_jupyter_extension_takes_the_browsers_session_with_xsrf(page, lab, monkeypatch):
    """Inside JupyterLab the extension's POST takes the page's login cookie, with the XSRF
    header Jupyter requires; without the header the same cookie is refused."""
    from nbdurable import settings

    log = lab.root / ".nbdurable" / "log.duckdb"  # the server's default: under its root
    monkeypatch.setenv("NBDURABLE_LOG", str(log))
    monkeypatch.setenv("NBDURABLE_RUN", "r1")
    settings.reset()
    nbdurable.once("create-the-run", lambda: None)
    open_notebook(page, lab, "01-quickstart.ipynb")  # logs in: the token sets the cookie
    status, text = page.evaluate(_POST, ["r1", False])
    assert status == 403 and "xsrf" in text.lower(), text
    status, text = page.evaluate(_POST, ["r1", True])
    assert status == 201 and json.loads(text)["key"] == "from-browser", text
    assert nbdurable.list_events("r1", log=log)["key"].tolist() == ["from-browser"]
    settings.reset()


@pytest.mark.parametrize("name", ["01-quickstart.ipynb", "04-fanout.ipynb"])
def test_example_notebooks_run_all_in_the_browser(page, lab, name):
    open_notebook(page, lab, name)
    run_all(page)
    wait_all_ran(page, timeout=300_000)
    assert not errors(page), errors(page)
    if name == "04-fanout.ipynb":  # the progress bar reached its end
        bar = page.locator(".widget-hprogress .progress-bar-success").first
        bar.wait_for()
        assert "width: 100%" in (bar.get_attribute("style") or "")
    shot(page, f"5-{name.removesuffix('.ipynb')}")


def _completed(log: Path) -> set[str]:
    steps = nbdurable.history("02-approval.ipynb", log=log)
    return set(steps[steps["status"] == "completed"]["step"])


def _notebook(*sources: str) -> str:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nbformat.writes(nb)
