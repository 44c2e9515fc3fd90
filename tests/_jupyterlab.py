"""A real JupyterLab for the browser tests: started, driven by Chromium, stopped with its kernels.

Shared by ``test_browser.py`` (the explorers) and ``test_viewer_browser.py``
(the 3D viewer). JupyterLab runs as a subprocess on a free loopback port with
a random token; its config, runtime, settings and workspaces are kept apart
from the user's, and a kernelspec for this very interpreter (the one that has
ketamine_nb installed) is found first on ``JUPYTER_PATH``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SERVER_START_S = 120
PAGE_MS = 120_000
UPDATE_MS = 90_000


def require_browser() -> None:
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


def _kernels(pid: int) -> list:
    """Every process below ``pid`` (kernels start their own sessions, so not one group).

    psutil (a dependency of dask.distributed) walks /proc; a psutil.Process
    remembers its start time, so a later kill never hits a reused pid.
    """
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def jupyterlab(base: Path, root: Path, *, env: dict | None = None, log_path: Path | None = None):
    """Run JupyterLab on ``root`` until the block ends; yield ``url``, ``token``, ``log``.

    ``base`` holds the Jupyter folders; ``env`` adds variables (the notebook's
    inputs). At the end the server is shut down and every kernel it started
    (still the same process) is killed.
    """
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
    full_env = dict(os.environ)
    full_env.update({
        "JUPYTER_PATH": str(base / "data"),
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(base / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    })
    log_path = log_path or base / "jupyterlab.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")  # noqa: SIM115 - closed in finally
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {proc.returncode}; log: {log_path}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}",  # noqa: S310
                                            timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s; "
                            f"log: {log_path}")
            time.sleep(0.5)
        yield {"url": url, "token": token, "proc": proc, "log": log_path}
    finally:
        kernels = _kernels(proc.pid)         # the kernels, before the server forgets them
        if proc.poll() is None:
            try:
                req = urllib.request.Request(f"{url}/api/shutdown?token={token}",
                                             method="POST")
                urllib.request.urlopen(req, timeout=10)  # noqa: S310 - loopback only
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for k in kernels:
            with contextlib.suppress(Exception):     # gone already, or not ours any more
                if k.is_running():                   # same pid and start time
                    k.kill()
        log.close()


def run_all_cells(page, *, timeout_ms: int) -> None:
    """Run > Run All Cells, as a user would, once the kernel is idle.

    A click that lands while the notebook is still connecting to its kernel
    is lost, so the click is repeated (at most three times) until the first
    code cell shows that it ran (``[*]`` or ``[1]``).
    """
    page.locator("#jp-main-statusbar", has_text="Idle").wait_for(timeout=timeout_ms)
    prompt = page.locator(".jp-CodeCell .jp-InputPrompt").first
    for _ in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function("el => /\\[(\\*|\\d+)\\]/.test(el.textContent)",
                                   arg=prompt.element_handle(), timeout=30_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: click again
            continue
    raise AssertionError("Run > Run All Cells did not start the cells")
