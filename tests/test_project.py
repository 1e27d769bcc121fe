"""Project-level checks: README in sync with nbs/index.ipynb, CI running exactly the README's commands, the stage
jobs free of library tests, the test command's hang guard; and the package's layout: one module per chapter, imports
pointing back along the lifecycle, no private names shared."""
import ast
import json
import re
import sys
import time
from pathlib import Path

import pytest

from conftest import LIFECYCLE, run_command

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mllifecycle"


def readme_from_index() -> str:
    "README.md as the markdown cells of nbs/index.ipynb (Quarto, which nbdev_readme needs, is not required)."
    cells = json.loads((ROOT / "nbs" / "index.ipynb").read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]).strip() for c in cells if c["cell_type"] == "markdown") + "\n"


def readme_commands() -> list[str]:
    "The commands in the README's 'Set up and test' block."
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Set up and test.*?```sh\n(.*?)```", readme, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_matches_index_notebook():
    assert (ROOT / "README.md").read_text(encoding="utf-8") == readme_from_index(), \
        "README.md differs from nbs/index.ipynb: run `python tests/test_project.py` to regenerate it"


def test_ci_runs_the_two_readme_commands():
    commands = readme_commands()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for command in commands:
        assert command in ci.splitlines(), f"{command!r} is not a line of .ci/run"


def test_settings_keep_papermill_tags():
    settings = (ROOT / "settings.ini").read_text(encoding="utf-8")
    assert re.search(r"^allowed_cell_metadata_keys\s*=\s*tags", settings, re.M)


def test_example_params_file_is_current_and_runs_with_the_defaults():
    "params.example.yaml is what `mllifecycle params --yaml` prints from the parameters classes, and it loads."
    from mllifecycle.pipeline import find_stages, load_params_file, params_yaml, resolve_params

    stages = find_stages(ROOT / "nbs")
    assert (ROOT / "params.example.yaml").read_text(encoding="utf-8") == params_yaml(stages), \
        "params.example.yaml is stale: run `python tests/test_project.py` to regenerate it"
    resolve_params(load_params_file(ROOT / "params.example.yaml"), stages)


# --- the package's layout ----------------------------------------------------------------------------------


def imports_of(module: str) -> list[tuple[str, str | None, int]]:
    "Every import of another mllifecycle module in `module` (function-level ones too): (module, name, line)."
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                target = node.module.split(".")[0]
            elif node.level == 0 and (node.module or "").startswith("mllifecycle."):
                target = node.module.split(".")[1]
            elif node.level == 0 and node.module == "mllifecycle":
                found += [(alias.name, None, node.lineno) for alias in node.names]
                continue
            else:
                continue
            found += [(target, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name.split(".")[1], None, node.lineno) for alias in node.names
                      if alias.name.startswith("mllifecycle.")]
    return found


def test_every_module_is_a_chapter_in_lifecycle_order():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "_modidx"}
    assert modules == set(LIFECYCLE)
    chapters = {p.stem.split("_", 1)[1] for p in (PACKAGE.parent / "nbs").glob("[0-9][0-9]_*.ipynb")}
    assert chapters == set(LIFECYCLE)  # every notebook's name says its module


@pytest.mark.parametrize("module", LIFECYCLE)
def test_imports_point_back_along_the_lifecycle(module):
    later = [(target, line) for target, _, line in imports_of(module)
             if target in LIFECYCLE and LIFECYCLE.index(target) >= LIFECYCLE.index(module)]
    assert not later, f"{module} imports a module at or after it: {later}"


@pytest.mark.parametrize("module", LIFECYCLE)
def test_no_module_uses_another_modules_private_names(module):
    private = [(target, name, line) for target, name, line in imports_of(module) if name and name.startswith("_")]
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
               for alias in node.names if (alias.name in LIFECYCLE or alias.name.startswith("mllifecycle."))}
    private += [(node.value.id, node.attr, node.lineno) for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_")]
    assert not private, f"{module} uses private names of other modules: {private}"


@pytest.mark.parametrize("source, fragment", [
    ("from .validate import _per_row\n", "_per_row"),  # a private name imported
    ("import mllifecycle.serve as serve\n\ndef f():\n    return serve._replay()\n", "_replay"),  # or reached for
])
def test_the_checks_see_a_private_name_and_a_later_module(tmp_path, monkeypatch, source, fragment):
    "The checks above fail on a module that uses another's private name, or imports a later module."
    (tmp_path / "train.py").write_text(source)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    with pytest.raises(AssertionError, match=fragment):
        test_no_module_uses_another_modules_private_names("train")
    with pytest.raises(AssertionError, match="imports a module at or after it"):
        test_imports_point_back_along_the_lifecycle("train")


if __name__ == "__main__":
    from mllifecycle.pipeline import find_stages, params_yaml

    (ROOT / "README.md").write_text(readme_from_index(), encoding="utf-8")
    (ROOT / "params.example.yaml").write_text(params_yaml(find_stages(ROOT / "nbs")), encoding="utf-8")
    print("README.md and params.example.yaml regenerated from nbs/")


def test_stage_jobs_hold_no_library_tests():
    "From the parameters cell on, a stage notebook is a job on the user's data: no test or assert may fail it."
    for path in sorted((ROOT / "nbs").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
        if not tagged:
            continue
        for cell in cells[tagged[0] + 1:]:
            source = "".join(cell["source"])
            if cell["cell_type"] == "code":
                assert not re.search(r"\btest_(eq|close|fail|ne|is)\(|^\s*assert\b", source, re.M), \
                    f"{path.name}: a job cell tests something:\n{source}"


STAGES_THEN_HANG = """
import subprocess, sys, time
for i, stage in enumerate(["data", "train", "validate"], 1):
    print(f"[{i}/3] {stage}: running {stage}.ipynb", flush=True)
    if stage == "validate":
        kernel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("kernel", kernel.pid, flush=True)
        time.sleep(600)
    time.sleep(1.2)
    print(f"[{i}/3] {stage}: ok in 1.2 s", flush=True)
"""


def alive(pid: int) -> bool:
    "Whether process `pid` still runs (a zombie waiting for its parent does not)."
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_tests_command_runner_names_the_stage_that_hung_and_kills_what_it_started(tmp_path):
    "A step without progress ends the test, naming the stage; a run whose stages all progress may take longer."
    (tmp_path / "run.py").write_text(STAGES_THEN_HANG)
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"run.py` hung in its validate stage: no progress for 2 s") as hung:
        run_command([sys.executable, tmp_path / "run.py"], limit_s=2)
    assert time.monotonic() - started > 2 * 1.2 + 2  # two stages of 1.2 s each, then 2 s without progress
    kernel = int(re.search(r"kernel (\d+)", str(hung.value))[1])
    deadline = time.monotonic() + 10
    while alive(kernel) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(kernel), "the hung command's child process outlived it"

    done = run_command([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
