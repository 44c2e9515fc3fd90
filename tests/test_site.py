"""The series as a website: built with Jupyter Book, opened in Chromium.

The site is built as ``tools/build_site.sh`` builds it (``notebooks/_config.yml``,
``_toc.yml``; every notebook executed), but against the test session's small
processed demo (the data home of ``test_notebooks.py``), from a copy of
``notebooks/`` in a temporary folder. It is served on a loopback port and
every page is opened in a real Chromium with all other traffic refused.

A figure's alt text comes from its cell's metadata,
``{"mystnb": {"image": {"alt": "..."}}}`` (MyST-NB's ``render_image_options``);
an optional ``{"mystnb": {"figure": {"caption": "..."}}}`` adds a caption.
:func:`images_missing_alt` names every cell whose figures have none.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from _jupyterlab import CHROMIUM, PAGE_MS, require_browser
from test_notebooks import small_demo_home  # noqa: F401  (the same small demo, a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "notebooks"
BUILD_TIMEOUT_S = 1800
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# sphinx-thebe 0.3.1 (pinned by Jupyter Book 1.0.4) writes its inline config
# script twice into every page; the second copy throws, harmlessly (thebe is off).
KNOWN_JS_ERRORS = {"Identifier 'THEBE_JS_URL' has already been declared"}
BINDER = "https://mybinder.org/v2/gh/ketamine-nb/ketamine-nb/HEAD?urlpath=lab/tree/notebooks/"


def _toc_pages() -> list[str]:
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for c in toc["chapters"]]


def _title(text: str) -> str:
    """The text of the first ``# heading`` of a Markdown source, as a browser shows it."""
    line = next(ln for ln in text.splitlines() if ln.startswith("# "))
    return re.sub(r"[`*_]", "", line[2:]).strip()


def image_cells(nb) -> list[tuple[int, int]]:
    """``(cell index, number of image outputs)`` of every code cell that shows a figure."""
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        n = sum(1 for o in cell.get("outputs", [])
                if o.get("output_type") in ("display_data", "execute_result")
                and any(k.startswith("image/") for k in o.get("data", {})))
        if n:
            out.append((i, n))
    return out


def images_missing_alt(executed: Path) -> list[str]:
    """Every cell of an executed notebook whose figures have no alt text in its metadata.

    One line each: notebook, cell index (0-based, as nbformat counts) and the
    cell's first line, so that the cell can be found and given
    ``{"mystnb": {"image": {"alt": "..."}}}``.
    """
    nb = nbformat.read(executed, as_version=4)
    missing = []
    for i, _ in image_cells(nb):
        meta = nb.cells[i].metadata.get("mystnb", {})
        alt = meta.get("image", {}).get("alt", "") if isinstance(meta, dict) else ""
        if not str(alt).strip():
            first = nb.cells[i].source.strip().splitlines()[0]
            missing.append(f"{executed.stem}.ipynb cell {i}: {first}")
    return missing


def _jupyter_book() -> Path:
    exe = Path(sys.executable).with_name("jupyter-book")
    if not exe.is_file():
        msg = "jupyter-book is missing (pip install -e '.[site]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " (CI=true: this is an error, not a skip)")
        pytest.skip(msg)
    return exe


@pytest.fixture(scope="module")
def site(small_demo_home, tmp_path_factory):  # noqa: F811 - the imported fixture
    """Build the site once; return its html folder and the executed notebooks' folder."""
    require_browser()
    exe = _jupyter_book()
    tmp = tmp_path_factory.mktemp("site")
    book = tmp / "notebooks"
    shutil.copytree(BOOK, book, ignore=shutil.ignore_patterns(
        "_build", ".ipynb_checkpoints", "__pycache__"))
    kernels = tmp / "jupyter" / "kernels" / "python3"      # this interpreter's kernel
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python"}))
    env = dict(os.environ, KETAMINE_NB_DATA=str(small_demo_home),
               JUPYTER_PATH=str(tmp / "jupyter"),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = tmp / "build.log"
    start = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.run([str(exe), "build", str(book), "--builder", "html",
                               "--path-output", str(tmp / "out")],
                              stdout=fh, stderr=subprocess.STDOUT, env=env,
                              timeout=BUILD_TIMEOUT_S, check=False)
    (tmp / "build_seconds.txt").write_text(f"{time.monotonic() - start:.0f}\n")
    text = log.read_text()
    assert proc.returncode == 0, f"jupyter-book build failed; log {log}:\n{text[-3000:]}"
    html = tmp / "out" / "_build" / "html"
    return {"html": html, "executed": tmp / "out" / "_build" / "jupyter_execute", "log": text}


@contextlib.contextmanager
def _serve(root: Path):
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _offline(route):
    """Serve the site, refuse everything else (the CDN scripts of widgets, MathJax)."""
    if route.request.url.startswith("http://127.0.0.1:"):
        route.continue_()
    else:
        route.abort()


@pytest.fixture(scope="module")
def browser_pages(site):
    """Every page of the site, opened in Chromium: what the tests check, collected once."""
    from playwright.sync_api import sync_playwright

    pages = {}
    with _serve(site["html"]) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": 1300, "height": 900})
            ctx.route("**/*", _offline)
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            for name in _toc_pages():
                href = f"{name}.html"
                page.goto(f"{url}/{href}", timeout=PAGE_MS, wait_until="load")
                imgs = page.eval_on_selector_all(
                    ".cell_output img",
                    "els => els.map(e => ({src: e.getAttribute('src'), "
                    "alt: e.getAttribute('alt') || '', "
                    "loaded: e.complete && e.naturalWidth > 0}))")
                pages[name] = {
                    "href": href,
                    "title": page.title(),
                    "h1": page.locator("main h1").first.inner_text(),
                    "imgs": imgs,
                    "links": page.eval_on_selector_all(
                        "a[href]", "els => els.map(e => e.getAttribute('href'))"),
                    "errors": list(errors),
                }
                errors.clear()
                if name == "05_outcomes_and_model":
                    shot = REPO / "test-artifacts" / "site_05_outcomes_and_model.png"
                    shot.parent.mkdir(exist_ok=True)
                    page.screenshot(path=str(shot), full_page=False)
            # the search page: Sphinx's client-side index, as a reader types a word
            page.goto(f"{url}/search.html?q=diffusivity", timeout=PAGE_MS, wait_until="load")
            page.wait_for_function(
                "document.querySelectorAll('#search-results ul.search li').length > 0 "
                "|| /did not match|no results/i.test("
                "(document.querySelector('#search-results') || {}).textContent || '')",
                timeout=PAGE_MS)
            pages["search"] = page.eval_on_selector_all(
                "#search-results ul.search li a",
                "els => els.map(e => e.getAttribute('href'))")
        finally:
            browser.close()
    return pages


def test_the_site_has_the_whole_series():
    numbered = sorted(p.stem for p in BOOK.glob("[0-9][0-9]_*.ipynb"))
    assert _toc_pages()[1:] == numbered, "notebooks/_toc.yml must list the series in order"


def test_every_page_has_its_title(browser_pages):
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    for name in _toc_pages():
        if name.endswith("README"):
            heading = _title((BOOK / "README.md").read_text())
        else:
            nb = nbformat.read(BOOK / f"{name}.ipynb", as_version=4)
            heading = _title(next(c.source for c in nb.cells if c.cell_type == "markdown"))
        got = browser_pages[name]
        assert got["h1"].strip().rstrip("#").strip() == heading, name
        assert got["title"].startswith(heading) and config["title"] in got["title"], \
            (name, got["title"])
        errors = [e for e in got["errors"] if e not in KNOWN_JS_ERRORS]
        assert not errors, f"{name}: JavaScript errors {errors}"


def test_every_figure_is_on_its_page(site, browser_pages):
    """As many loaded images in the cell outputs as the executed notebook has figures."""
    drew_figures = 0
    for name in _toc_pages()[1:]:
        nb = nbformat.read(site["executed"] / f"{name}.ipynb", as_version=4)
        expected = sum(n for _, n in image_cells(nb))
        imgs = browser_pages[name]["imgs"]
        assert len(imgs) == expected, f"{name}: {len(imgs)} images on the page, " \
            f"{expected} figures in the executed notebook"
        assert all(i["loaded"] for i in imgs), f"{name}: images that did not load: " \
            f"{[i['src'] for i in imgs if not i['loaded']]}"
        drew_figures += expected > 0
    # every notebook but the start page and "your own data" draws figures (test_notebooks)
    assert drew_figures >= 6


def _no_alt(img: dict) -> bool:
    """Docutils writes the image's own path as alt when a cell gives none: that is none."""
    alt = img["alt"].strip()
    return not alt or alt == img["src"] or bool(re.fullmatch(r"\S+\.(png|jpe?g|gif|svg)", alt))


def test_every_figure_has_alt_text(site, browser_pages):
    without = {name: [i["src"] for i in p["imgs"] if _no_alt(i)]
               for name, p in browser_pages.items() if name != "search"}
    without = {k: v for k, v in without.items() if v}
    cells = [line for name in _toc_pages()[1:]
             for line in images_missing_alt(site["executed"] / f"{name}.ipynb")]
    assert not without and not cells, (
        "figures without alt text; give each cell {\"mystnb\": {\"image\": {\"alt\": "
        "\"...\"}}} in its metadata:\n  " + "\n  ".join(cells))


def test_search_finds_pages(browser_pages):
    hits = browser_pages["search"]
    assert hits, "searching the site for 'diffusivity' found nothing"
    assert any(h.split("?")[0].split("#")[0] == "02_tensor_and_md.html" for h in hits), hits


def test_every_page_links_to_binder(browser_pages):
    for name in _toc_pages():
        links = browser_pages[name]["links"]
        assert any(h.startswith(BINDER) for h in links), f"{name}: no Binder link"
        if not name.endswith("README"):          # the launch button opens this notebook
            assert f"{BINDER}{name}.ipynb" in links, f"{name}: no launch button for it"


def test_images_missing_alt_names_the_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# t"),
        nbformat.v4.new_code_cell("kp.plot_a();", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("kp.plot_b();", metadata={"mystnb": {"image": {"alt": "B"}}},
                                  outputs=[nbformat.v4.new_output(
                                      "display_data", data={"image/png": "iVBOR"})]),
        nbformat.v4.new_code_cell("1 + 1", outputs=[nbformat.v4.new_output(
            "execute_result", data={"text/plain": "2"}, execution_count=1)]),
    ])
    path = tmp_path / "09_x.ipynb"
    nbformat.write(nb, path)
    assert images_missing_alt(path) == ["09_x.ipynb cell 1: kp.plot_a();"]


def test_a_path_as_alt_is_no_alt():
    src = "_images/5a4f7d01.png"
    assert _no_alt({"alt": src, "src": src}) and _no_alt({"alt": " ", "src": src})
    assert not _no_alt({"alt": "Histogram of the largest FD of each session.", "src": src})
