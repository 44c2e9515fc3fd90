"""The explorers in a real browser: JupyterLab + Chromium driven by Playwright.

JupyterLab runs as a subprocess on a free loopback port with a random token,
on a copy of ``tests/notebooks/explorers.ipynb``; the notebook reads the small
processed cohort from ``KETAMINE_NB_RESULTS``. Chromium (Debian's
``/usr/bin/chromium``) opens the notebook, runs all cells from the Run menu,
picks another region in the rendered dropdowns and checks that the figure and
the table change and that no widget failed to render. Screenshots go to
``test-artifacts/browser/`` (gitignored).

Without ``/usr/bin/chromium`` (or Playwright) the tests are skipped, except
under ``CI=true``, where that is a failure.
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
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "tests" / "notebooks" / "explorers.ipynb"
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# Generous but bounded waits (ms): 2 busy cores, a cold kernel importing the package.
SERVER_START_S = 120
PAGE_MS = 120_000
RENDER_MS = 240_000
UPDATE_MS = 90_000


def _require_browser():
    """Skip without a browser, but fail under CI=true (tools/test.sh installs one there)."""
    problems = []
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is missing (pip install -e '.[test]')")
    if problems:
        msg = "browser test needs a browser: " + "; ".join(problems)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI=true: this is an error, not a skip)")
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (kernels start their own sessions, so not one group)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _start_time(pid: int):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def _get(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
        return r.status, r.read()


@pytest.fixture(scope="module")
def jupyter_lab(processed_cohort, tmp_path_factory):
    """JupyterLab on a copy of the notebook; stopped with its kernels at the end."""
    _require_browser()
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    # A kernelspec for this very interpreter (the one that has ketamine_nb installed),
    # found first on JUPYTER_PATH; config, runtime, settings and workspaces kept apart
    # from the user's.
    kdir = base / "data" / "kernels" / "python3"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))
    labconfig = base / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    # no "news" prompt (it would fetch announcements from the network)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update({
        "KETAMINE_NB_RESULTS": str(processed_cohort["out"]),
        "JUPYTER_PATH": str(base / "data"),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "PYTHONUNBUFFERED": "1",
    })
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "jupyterlab.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {proc.returncode}; log: {log_path}")
            try:
                status, _ = _get(f"{base_url}/api/status?token={token}")
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s; "
                            f"log: {log_path}")
            time.sleep(0.5)
        yield {"url": base_url, "token": token, "proc": proc, "log": log_path,
               "seen": seen}
    finally:
        # Remember the kernels (their own sessions: not in the server's process group).
        for pid in _descendants(proc.pid):
            seen[pid] = _start_time(pid)
        if proc.poll() is None:
            try:
                req = urllib.request.Request(f"{base_url}/api/shutdown?token={token}",
                                             method="POST")
                urllib.request.urlopen(req, timeout=10)  # noqa: S310 - loopback only
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid, started in seen.items():
            if started is not None and _start_time(pid) == started:  # still the same process
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        log.close()


def _img_src(locator) -> str:
    img = locator.locator(".ketamine-nb-figure img").first
    return img.get_attribute("src") or ""


def _wait_src_change(page, css: str, old: str, timeout: int):
    page.wait_for_function(
        """([css, old]) => {
            const img = document.querySelector(css + ' .ketamine-nb-figure img');
            return img !== null && img.getAttribute('src') !== old;
        }""", arg=[css, old], timeout=timeout)


def _run_all_cells(page):
    """Run > Run All Cells, as a user would, once the kernel is idle.

    A click that lands while the notebook is still connecting to its kernel
    is lost, so the click is repeated (at most three times) until the first
    code cell shows that it ran (``[*]`` or ``[1]``).
    """
    page.locator("#jp-main-statusbar", has_text="Idle").wait_for(timeout=RENDER_MS)
    prompt = page.locator(".jp-CodeCell .jp-InputPrompt").first
    for _ in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(
                "el => /\\[(\\*|\\d+)\\]/.test(el.textContent)", arg=prompt.element_handle(),
                timeout=30_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: click again
            continue
    raise AssertionError("Run > Run All Cells did not start the cells")


def test_explorers_render_and_follow_the_region_dropdown(jupyter_lab):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shots = {name: ARTIFACTS / f"{name}.png" for name in (
        "outcome_before", "outcome_after", "roi_before", "roi_after", "page")}
    where = f"(screenshots in {ARTIFACTS}; JupyterLab log: {jupyter_lab['log']})"
    url = f"{jupyter_lab['url']}/lab/tree/explorers.ipynb?token={jupyter_lab['token']}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="domcontentloaded", timeout=PAGE_MS)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=PAGE_MS)
            try:
                _run_all_cells(page)
                page.wait_for_selector(".ketamine-nb-outcome .ketamine-nb-figure img",
                                       timeout=RENDER_MS)
                page.wait_for_selector(".ketamine-nb-roi .ketamine-nb-figure img",
                                       timeout=RENDER_MS)
            finally:
                page.screenshot(path=shots["page"], full_page=True)
            assert page.get_by_text("Error displaying widget").count() == 0, where

            for name, region in (("outcome", "amygdala_L"), ("roi", "hippocampus_R")):
                css = f".ketamine-nb-{name}"
                box = page.locator(css).first
                box.scroll_into_view_if_needed()
                box.screenshot(path=shots[f"{name}_before"])
                before_src = _img_src(box)
                before_table = box.locator(".ketamine-nb-table").inner_text()
                assert before_src.startswith("data:image/png"), where
                assert region not in before_table, where
                select = box.locator(".widget-dropdown select").first  # region: first control
                assert region in select.locator("option").all_inner_texts(), where
                select.select_option(label=region)
                _wait_src_change(page, css, before_src, UPDATE_MS)
                page.wait_for_function(
                    """([css, region]) => document.querySelector(css + ' .ketamine-nb-table')
                           .innerText.includes(region)""", arg=[css, region],
                    timeout=UPDATE_MS)
                box.screenshot(path=shots[f"{name}_after"])
                after_src = _img_src(box)
                after_table = box.locator(".ketamine-nb-table").inner_text()
                assert after_src != before_src, f"{name}: the figure did not change {where}"
                assert region in after_table, f"{name}: the table did not change {where}"
                assert shots[f"{name}_before"].read_bytes() != shots[f"{name}_after"].read_bytes()
            page.screenshot(path=shots["page"], full_page=True)
            assert page.get_by_text("Error displaying widget").count() == 0, where
            assert not [e for e in errors if "widget" in e.lower()], f"{errors} {where}"
        finally:
            browser.close()
