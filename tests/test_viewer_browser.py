"""The 3D brain viewer in a real browser: JupyterLab + Chromium (software WebGL) + Playwright.

JupyterLab runs as a subprocess on a free loopback port with a random token,
on a notebook written here: it builds the viewer test's results
(``tests/test_viewer.py``: known ΔMD maps on the template grid), shows
``brain_viewer`` and an ``outcome_explorer`` sharing one ``RegionState``.
Chromium (Debian's ``/usr/bin/chromium``, WebGL through SwiftShader) runs
the notebook; the test checks that NiiVue's canvas is not blank, that it
changes when the threshold is typed into the slider, that picking a region
changes the viewer's table and the linked explorer's, that a click in the
view reports the position, region and value back to the kernel, and that no
widget failed to render. With WebGL switched off (``--disable-3d-apis``) the
2D slice viewer takes the view's place, with one line saying why. The
standalone page (``viewer_html``) is opened too, with the network blocked.
Screenshots go to the test's temporary folder and to ``/tmp/viewer_shots``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from _jupyterlab import CHROMIUM, PAGE_MS, UPDATE_MS, jupyterlab, require_browser, run_all_cells

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TESTS = Path(__file__).resolve().parent
#: SwiftShader gives WebGL2 without a GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SHOTS = Path("/tmp/viewer_shots")
RENDER_MS = 300_000


def _shot(page_or_locator, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page_or_locator.screenshot(path=path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / path.name)
    return path


def _pixels(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    return (mpimg.imread(path)[..., :3] * 255).astype(np.uint8)


def _not_blank(path: Path) -> bool:
    """More than 2 % of the canvas is neither its background nor one flat colour."""
    px = _pixels(path).reshape(-1, 3)
    lit = (px.max(axis=1) > 40).mean()
    return lit > 0.02 and len(np.unique(px, axis=0)) > 50


def _differs(a: Path, b: Path) -> float:
    pa, pb = _pixels(a), _pixels(b)
    if pa.shape != pb.shape:
        return 1.0
    return float((np.abs(pa.astype(int) - pb.astype(int)).max(axis=-1) > 30).mean())


NOTEBOOK_CELLS = [
    "import sys\nsys.path.insert(0, {tests!r})\nfrom test_viewer import make_viewer_results\n"
    "from ketamine_nb.widgets import RegionState, brain_viewer, outcome_explorer\n"
    "res = make_viewer_results({out!r})",
    "state = RegionState(['BA10_L', 'BA10_R', 'amygdala_L'])\n"
    "v = brain_viewer(res, map='mean_delta_md', arm='both', region='BA10_L', "
    "region_state=state, height=380)\nv",
    "oe = outcome_explorer(res, region_state=state)\noe",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on the viewer notebook; stopped with its kernels at the end."""
    require_browser()
    import nbformat

    base = tmp_path_factory.mktemp("viewerlab")
    root = base / "root"
    root.mkdir()
    out = base / "derivatives"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c.format(tests=str(TESTS), out=str(out)))
                for c in NOTEBOOK_CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, root / "viewer.ipynb")
    with jupyterlab(base, root) as running:
        yield running


def _wait_canvas(canvas, tmp_path, name, *, timeout_s=120.0, unlike=None) -> Path:
    """Screenshot the canvas until it is not blank (and differs from ``unlike``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        shot = _shot(canvas, tmp_path, name)
        if _not_blank(shot) and (unlike is None or _differs(shot, unlike) > 0.002):
            return shot
        if time.monotonic() > deadline:
            return shot
        time.sleep(2.0)


def test_viewer_renders_thresholds_and_follows_the_region(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    where = f"(screenshots in {tmp_path} and {SHOTS}; JupyterLab log: {lab['log']})"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1200})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{lab['url']}/lab/tree/viewer.ipynb?token={lab['token']}",
                      wait_until="domcontentloaded", timeout=PAGE_MS)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=PAGE_MS)
            try:
                run_all_cells(page, timeout_ms=RENDER_MS)
                page.wait_for_selector(".ketamine-nb-viewer canvas", timeout=RENDER_MS)
                page.wait_for_selector(".ketamine-nb-outcome .ketamine-nb-figure img",
                                       timeout=RENDER_MS)
            finally:
                _shot(page, tmp_path, "viewer_page")
            assert page.get_by_text("Error displaying widget").count() == 0, where
            assert page.get_by_text("WebGL2 is not available").count() == 0, where
            viewer = page.locator(".ketamine-nb-viewer").first
            viewer.scroll_into_view_if_needed()
            canvas = viewer.locator("canvas").first
            before = _wait_canvas(canvas, tmp_path, "viewer_canvas_before")
            assert _not_blank(before), f"the NiiVue canvas is blank {where}"

            # the threshold, typed into the slider's readout as a user would
            readout = viewer.locator(".widget-hslider", has_text="Threshold").locator(
                ".widget-readout").first
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("0.1")
            page.keyboard.press("Enter")
            low = _wait_canvas(canvas, tmp_path, "viewer_canvas_threshold_low", unlike=before)
            assert _differs(before, low) > 0.002, f"threshold did not change the view {where}"

            # another region: the viewer's table and the linked explorer's follow
            table = viewer.locator(".ketamine-nb-table").first
            outcome = page.locator(".ketamine-nb-outcome").first
            assert "amygdala_L" not in table.inner_text(), where
            select = viewer.locator(".widget-dropdown", has_text="Region").locator(
                "select").first
            select.select_option(label="amygdala_L")
            page.wait_for_function(
                """() => document.querySelector('.ketamine-nb-viewer .ketamine-nb-table')
                       .innerText.includes('amygdala_L')""", timeout=UPDATE_MS)
            page.wait_for_function(
                """() => document.querySelector('.ketamine-nb-outcome .ketamine-nb-table')
                       .innerText.includes('amygdala_L')""", timeout=UPDATE_MS)
            region = _wait_canvas(canvas, tmp_path, "viewer_canvas_region", unlike=low)
            assert _differs(low, region) > 0.0005, f"the highlight did not move {where}"
            # a click in the axial view: ipyniivue reports the position to the kernel
            box = canvas.bounding_box()
            page.mouse.click(box["x"] + 0.11 * box["width"], box["y"] + 0.40 * box["height"])
            page.wait_for_function(
                """() => document.querySelector('.ketamine-nb-viewer-info')
                       .innerText.includes('mm MNI')""", timeout=UPDATE_MS)
            info = viewer.locator(".ketamine-nb-viewer-info").inner_text()
            assert "value" in info or "outside" in info, f"{info} {where}"
            _shot(viewer, tmp_path, "viewer_widget_after")
            _shot(outcome, tmp_path, "outcome_linked_after")
            _shot(page, tmp_path, "viewer_page_after")
            assert page.get_by_text("Error displaying widget").count() == 0, where
            assert not [e for e in errors if "widget" in e.lower()], f"{errors} {where}"
        finally:
            browser.close()


def test_without_webgl_the_slice_viewer_takes_over(lab, tmp_path):
    """Chromium with WebGL switched off: the probe reports it and the 2D viewer shows."""
    from playwright.sync_api import sync_playwright

    where = f"(screenshots in {tmp_path} and {SHOTS}; JupyterLab log: {lab['log']})"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-dev-shm-usage",
                                          "--disable-3d-apis", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1200})
            page.goto(f"{lab['url']}/lab/tree/viewer.ipynb?token={lab['token']}",
                      wait_until="domcontentloaded", timeout=PAGE_MS)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=PAGE_MS)
            try:
                run_all_cells(page, timeout_ms=RENDER_MS)
                page.wait_for_selector(".ketamine-nb-viewer-fallback", timeout=RENDER_MS)
                page.wait_for_selector(".ketamine-nb-viewer .ketamine-nb-slices "
                                       ".ketamine-nb-figure img", timeout=RENDER_MS)
            finally:
                _shot(page, tmp_path, "viewer_no_webgl_page")
            viewer = page.locator(".ketamine-nb-viewer").first
            assert "WebGL2 is not available" in viewer.inner_text(), where
            _shot(viewer, tmp_path, "viewer_no_webgl")
            assert page.get_by_text("Error displaying widget").count() == 0, where
        finally:
            browser.close()


def test_standalone_page_renders_offline(tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright
    from test_viewer import make_viewer_results

    from ketamine_nb.widgets.viewer import viewer_html

    res = make_viewer_results(tmp_path / "derivatives")
    page_path = tmp_path / "viewer.html"
    page_path.write_text(viewer_html(res, map="t", region="BA10_L", threshold=0.5),
                         encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1300, "height": 800})
            ctx.route("http*://**", lambda route: route.abort())  # offline: no network at all
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri(), timeout=PAGE_MS)
            page.wait_for_function("document.body.dataset.ready === '1'", timeout=RENDER_MS)
            canvas = page.locator("#view canvas").first
            before = _wait_canvas(canvas, tmp_path, "standalone_before")
            assert _not_blank(before)
            page.locator("#threshold").evaluate(
                "el => { el.value = el.max * 0.8; el.dispatchEvent(new Event('input')); }")
            after = _wait_canvas(canvas, tmp_path, "standalone_threshold", unlike=before)
            assert _differs(before, after) > 0.002
            page.select_option("#region", "amygdala_L")
            assert "amygdala_L" in page.locator("#table").inner_text()
            _shot(page, tmp_path, "standalone_page")
            assert not errors, errors
        finally:
            browser.close()
