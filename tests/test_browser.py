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

import shutil
from pathlib import Path

import pytest
from _jupyterlab import CHROMIUM, PAGE_MS, UPDATE_MS, jupyterlab, require_browser, run_all_cells

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "tests" / "notebooks" / "explorers.ipynb"
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# Generous but bounded (ms): 2 busy cores, a cold kernel importing the package.
RENDER_MS = 240_000


@pytest.fixture(scope="module")
def jupyter_lab(processed_cohort, tmp_path_factory):
    """JupyterLab on a copy of the notebook; stopped with its kernels at the end."""
    require_browser()
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    with jupyterlab(base, root, env={"KETAMINE_NB_RESULTS": str(processed_cohort["out"])},
                    log_path=ARTIFACTS / "jupyterlab.log") as lab:
        yield lab


def _img_src(locator) -> str:
    img = locator.locator(".ketamine-nb-figure img").first
    return img.get_attribute("src") or ""


def _wait_src_change(page, css: str, old: str, timeout: int):
    page.wait_for_function(
        """([css, old]) => {
            const img = document.querySelector(css + ' .ketamine-nb-figure img');
            return img !== null && img.getAttribute('src') !== old;
        }""", arg=[css, old], timeout=timeout)


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
                run_all_cells(page, timeout_ms=RENDER_MS)
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
