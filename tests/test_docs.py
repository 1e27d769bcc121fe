"""The docs site: built offline by `mkdocs build`, every stage page and exported function in it, rendered in a browser.

The build executes the notebooks (cached in `_proc/executed/`), so a fresh clone pays for it once."""
import functools
import http.server
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import LIFECYCLE, chromium, launch_chromium, wait_for

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["index"] + sorted(re.sub(r"^\d+_", "", p.stem) for p in (ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "The site, built from the repository's notebooks with `mkdocs build` into a temporary folder."
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def exported_names():
    "Every public function and class each module exports (`__all__`), by module."
    import inspect

    from mllifecycle._modidx import d

    modules = {module: importlib.import_module(module) for module in d["syms"]}
    return {name: [n for n in module.__all__ if inspect.isfunction(getattr(module, n)) or inspect.isclass(getattr(module, n))]
            for name, module in modules.items()}


@pytest.mark.slow
def test_every_notebook_has_a_page_with_its_prose_and_outputs(site):
    for page in PAGES:
        assert (site / f"{page}.html").is_file(), page
    for page in ("data", "train", "validate", "deploy", "monitor", "report"):
        html = (site / f"{page}.html").read_text(encoding="utf-8")
        assert 'class="jp-RenderedImage' in html or "data:image/png;base64," in html, f"{page}: no figure"
        assert "#| export" not in html and "#| hide" not in html and "from fastcore.test import" not in html, page
    nav = (site / "index.html").read_text(encoding="utf-8")
    positions = [nav.index(f'href="{page}.html"') for page in LIFECYCLE]
    assert positions == sorted(positions)  # navigation in lifecycle order


@pytest.mark.slow
def test_every_exported_function_has_its_show_doc_and_api_entry(site):
    api = (site / "api.html").read_text(encoding="utf-8")
    pages = {re.sub(r"^\d+_", "", p.stem): p for p in (ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")}
    for module, names in exported_names().items():
        short = module.rsplit(".", 1)[1]
        page = short if short in pages else next(n for n, p in pages.items() if f"default_exp {short}" in p.read_text())
        html = (site / f"{page}.html").read_text(encoding="utf-8")
        for name in names:
            assert f'id="{module}.{name}"' in api, f"{module}.{name} is not in the API reference"
            assert re.search(rf"<h[34][^>]*>{re.escape(name)}", html), f"{name} has no show_doc on {page}.html"


@pytest.mark.slow
def test_site_asks_nothing_of_the_network_and_has_a_search_index(site):
    for page in PAGES + ["api"]:
        html = (site / f"{page}.html").read_text(encoding="utf-8")
        fetched = re.findall(r'<(?:script|link|img|iframe|source)\b[^>]*?(?:src|href)="(https?:[^"]*)"', html)
        assert not fetched, f"{page}.html loads {fetched}"
        assert "fonts.googleapis.com" not in html
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    assert {doc["location"].split("#")[0] for doc in index["docs"]} >= {f"{p}.html" for p in PAGES}


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no Chromium installed: `apt-get install -y chromium` (Debian) "
                                                "or set CHROMIUM to a Chromium binary to run the browser test")
def test_pages_render_in_a_real_browser_with_figures_and_no_errors(site):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            problems, outside = [], []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "data:")) else None)
            figures = {}
            for name in PAGES + ["api"]:
                page.goto(base + f"{name}.html", wait_until="load")
                images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
                assert all(images), f"{name}.html: {images.count(False)} figure(s) did not load"
                figures[name] = len(images)
                assert page.title(), name
            page.goto(base + "index.html", wait_until="load")  # search: the index loads and finds a page
            page.keyboard.press("/")
            page.keyboard.type("drift")
            page.wait_for_selector(".md-search-result__item", timeout=15_000)
            browser.close()
    finally:
        server.shutdown()
    assert not problems, problems
    assert not outside, outside
    assert figures["validate"] >= 5 and figures["monitor"] >= 3, figures


def test_an_interrupted_docs_build_leaves_no_notebook_running(tmp_path):
    import psutil

    notebook = tmp_path / "slow-notebook.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": None, "id": "a",
                                               "metadata": {}, "outputs": [],
                                               "source": ["import time\n", "time.sleep(600)"]}],
                                    "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    root = Path(__file__).resolve().parent.parent
    build = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(root / 'docs')!r})
        from pathlib import Path
        import hooks
        hooks.CACHE = Path({str(tmp_path / 'cache')!r})
        hooks.executed_notebooks([Path({str(notebook)!r})], workers=1)""")])

    def notebook_processes():
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if str(notebook) in " ".join(process.info["cmdline"] or []) and process.pid != build.pid:
                    found.append(process)
            except psutil.Error:
                pass
        return found

    try:
        wait_for(lambda: notebook_processes() or build.poll() is not None, what="the notebook's process")
        assert build.poll() is None
        build.send_signal(signal.SIGTERM)
        assert build.wait(60) != 0
        wait_for(lambda: not notebook_processes(), seconds=30, what="the notebook processes' exit")
    finally:
        build.kill()
        for process in notebook_processes():
            process.kill()


