"""MkDocs hook: the notebooks in `nbs/` become the site's pages, executed, then processed by nbdev.

On every build, before MkDocs reads its pages, each notebook is

1. executed as `nbdev_test` executes it (cells flagged with settings.ini's `tst_flags` skipped, working directory
   `nbs/`), in parallel processes, so its page shows what each step produces. The executed copy is cached in
   `_proc/executed/` under a key of the notebook's text and the package's sources: a build after an edit re-runs
   only what changed;
2. processed by nbdev's own docs processor (`nbdev.processors.FilterDefaults`, what `nbdev_docs` runs before
   Quarto): a show_doc signature and docstring for every exported function, `#| hide` cells removed, exported
   source folded into its show_doc;
3. given links to pages where its prose links to notebooks, and cell tags for the Quarto cell options nbdev leaves in the code (`#| echo: false` → the input removed,
   `#| output: false` → the outputs removed, `#| include: false` → the cell removed), which mkdocs-jupyter
   understands, and stripped of the remaining `#|` lines;
4. given stable cell ids (nbdev makes random ones) and written to `docs/` only when its content changed, so
   `mkdocs serve` does not rebuild forever.

Quarto is never called: the site builds offline from PyPI packages (`mkdocs build`).

`python docs/hooks.py` does step 1 alone: every notebook executed into the cache, exit status 1 naming each notebook
that failed. It is the README test command's notebook test, so the docs test that follows builds from the cache.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, DOCS, CACHE = ROOT / "nbs", ROOT / "docs", ROOT / "_proc" / "executed"
OPTION = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(\S+)\s*$")
TAG_FOR_OPTION = {("echo", "false"): "remove_input", ("output", "false"): "remove_output",
                  ("include", "false"): "remove_cell"}


def sources_key() -> str:
    "A hash of the package's sources: an executed notebook is stale when the code it imports changed."
    digest = hashlib.sha256()
    for path in sorted((ROOT / "mllifecycle").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def execute(job: tuple[str, str]) -> str | None:
    "Execute one notebook as nbdev_test does and save it with its outputs; the error text when a cell fails."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.config import get_config
    from nbdev.process import extract_directives

    source, target = Path(job[0]), Path(job[1])
    os.environ["IN_TEST"] = "1"
    flags = set(get_config().get("tst_flags", "").split())
    nb = read_nb(source)

    def skip(cell):
        if cell.cell_type != "code" or "nbdev_export(" in cell.source:
            return True
        directives = extract_directives(cell, remove=False)
        return directives.get("eval:", [""])[0].lower() == "false" or bool(flags & directives.keys())

    shell = CaptureShell(source)
    try:
        with working_directory(source.parent):
            shell.run_all(nb, exc_stop=True, preproc=skip)
    except Exception:
        return f"{source.name}: a cell failed\n{shell.prettytb(fname=source)}"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, target)
    return None


def math_threads_env(workers: int) -> dict[str, str]:
    """The environment for one of `workers` notebooks executed side by side: the machine's cores shared out among
    them (OMP_NUM_THREADS, unless set). Two notebooks that each spread PyTorch and scikit-learn over every core run
    several times slower together, their threads waiting on each other."""
    share = max(1, (os.cpu_count() or 1) // max(1, workers))
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(share))}


RUNNING: set = set()  # the notebook processes of this build, stopped with it (`stop_notebooks`)
STOPPING = threading.Event()  # set by `stop_notebooks`: no new notebook process starts


def execute_in_process(job: tuple[str, str], workers: int = 1) -> str | None:
    "`execute` in a fresh Python process (a notebook's state stays its own, as under nbdev_test), one of `workers`."
    import subprocess

    if STOPPING.is_set():
        return f"{job[0]}: not run (the build was interrupted)"
    with subprocess.Popen([sys.executable, __file__, *job], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=math_threads_env(workers), start_new_session=True) as process:
        RUNNING.add(process)  # its own process group: a server or kernel the notebook starts is stopped with it
        try:
            output, _ = process.communicate()
        finally:
            RUNNING.discard(process)
    return None if process.returncode == 0 else output.strip() or f"{job[0]}: exit {process.returncode}"


def stop_notebooks(grace_s: float = 5.0) -> None:
    "Stop every running notebook process and its children (SIGTERM, then SIGKILL after `grace_s`)."
    import signal
    import time

    STOPPING.set()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in list(RUNNING):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in list(RUNNING)) and time.monotonic() < deadline:
            time.sleep(0.05)


class Interrupted(BaseException):
    "The build got SIGTERM."


def _interrupt(signum, frame):
    raise Interrupted()


def executed_notebooks(notebooks: list[Path], workers: int) -> dict[Path, Path]:
    "Each notebook's executed copy, executing those whose cached copy is missing or stale."
    from concurrent.futures import ThreadPoolExecutor

    code = sources_key()
    executed = {nb: CACHE / f"{nb.stem}-{hashlib.sha256(nb.read_bytes()).hexdigest()[:16]}-{code}.ipynb"
                for nb in notebooks}
    todo = [(str(nb), str(out)) for nb, out in executed.items() if not out.exists()]
    if todo:
        import signal

        print(f"docs: executing {len(todo)} notebook(s) on {workers} worker(s)", file=sys.stderr)
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
        pool = ThreadPoolExecutor(workers)
        try:  # an interrupted build (Ctrl-C, SIGTERM) stops its notebook processes: none runs on without it
            errors = [e for e in pool.map(functools.partial(execute_in_process, workers=workers), todo) if e]
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # the queued notebooks never start
            stop_notebooks()
            raise
        finally:
            pool.shutdown()
            if in_main:
                signal.signal(signal.SIGTERM, previous)
        if errors:
            raise SystemExit("docs: a notebook failed, so its page would be wrong:\n" + "\n".join(errors))
    for stale in CACHE.glob("*.ipynb"):  # keep the cache to what the notebooks are now
        if stale not in executed.values():
            stale.unlink()
    return executed


def options_to_tags(nb) -> None:
    "Turn the Quarto cell options nbdev leaves (`#| echo: false`) into mkdocs-jupyter's tags; drop `#|` lines."
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines, tags = cell.source.splitlines(), set(cell.metadata.get("tags", []))
        while lines and lines[0].startswith("#|"):
            match = OPTION.match(lines.pop(0))
            if match and (match[1], match[2].lower()) in TAG_FOR_OPTION:
                tags.add(TAG_FOR_OPTION[match[1], match[2].lower()])
        cell.source = "\n".join(lines)
        if tags:
            cell.metadata["tags"] = sorted(tags)


NOTEBOOK_LINK = re.compile(r"\]\((?:nbs/)?(\d\d_\w+|index)\.ipynb(#[^)]*)?\)")


def page_name(notebook: Path) -> str:
    "A notebook's page, named as nbdev names it (`02_train.ipynb` → `train`), so nbdev's symbol links resolve."
    return re.sub(r"^\d+_", "", notebook.stem)


def link_pages(nb) -> None:
    "Point prose links to notebooks (`nbs/02_train.ipynb`, as the README has them) at their pages."
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = NOTEBOOK_LINK.sub(lambda m: f"]({page_name(Path(m[1]))}.html{m[2] or ''})", cell.source)


QUARTO_ATTRIBUTES = re.compile(r'\{target=\\"_blank\\"[^}]*\}')  # show_doc's `[source](…){target="_blank" …}`


def frontmatter_to_title(nb) -> None:
    "nbdev turns a notebook's `# title` and `> description` into Quarto frontmatter: turn them back into prose."
    import yaml

    for cell in nb.cells:
        if cell.cell_type == "raw" and cell.source.startswith("---"):
            meta = yaml.safe_load(cell.source.strip().strip("-")) or {}
            cell.cell_type = "markdown"
            cell.source = f"# {meta.get('title', '')}\n\n> {meta.get('description', '')}".rstrip("> \n")
            break


def write_page(nb, target: Path) -> None:
    "Write a processed notebook with stable cell ids and site-relative symbol links, only when its content changed."
    from execnb.nbio import nb2dict
    from nbdev.config import get_config

    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    config = get_config()
    published = f"{config.doc_host}{config.doc_baseurl}".rstrip("/") + "/"  # nbdev links symbols to its own site
    text = json.dumps(nb2dict(nb), indent=1, ensure_ascii=False, sort_keys=True).replace(published, "")
    text = QUARTO_ATTRIBUTES.sub("", text) + "\n"
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")


def build_pages(workers: int | None = None) -> list[Path]:
    "Execute, process and write every notebook of `nbs/` as a page of `docs/`."
    from execnb.nbio import read_nb
    from nbdev.processors import FilterDefaults

    notebooks = sorted(NBS.glob("*.ipynb"))
    executed = executed_notebooks(notebooks, workers or int(os.environ.get("DOCS_WORKERS", 2)))
    pages = []
    cwd = os.getcwd()
    try:
        os.chdir(NBS)  # show_doc cells import the package as the notebooks do
        for source in notebooks:
            nb = read_nb(executed[source])
            FilterDefaults()(nb)
            options_to_tags(nb)
            frontmatter_to_title(nb)
            link_pages(nb)
            nb.cells = [c for c in nb.cells if c.get("source") or c.get("outputs")]  # cells nbdev emptied
            pages.append(DOCS / f"{page_name(source)}.ipynb")
            write_page(nb, pages[-1])
    finally:
        os.chdir(cwd)
    for stale in DOCS.glob("*.ipynb"):
        if stale not in pages:
            stale.unlink()
    return pages


def on_pre_build(config, **kwargs):
    "MkDocs event: make the notebook pages before MkDocs reads the docs folder."
    build_pages()


if __name__ == "__main__":
    if len(sys.argv) == 1:  # python docs/hooks.py: every notebook, executed as nbdev_test runs it, into the cache
        executed_notebooks(sorted(NBS.glob("*.ipynb")), int(os.environ.get("DOCS_WORKERS", 2)))
        print("Success: every notebook ran; the docs build reuses their executed copies.")
    else:  # python docs/hooks.py NOTEBOOK EXECUTED: one notebook, executed (see execute_in_process)
        error = execute(tuple(sys.argv[1:3]))
        if error:
            print(error, file=sys.stderr)
            sys.exit(1)
