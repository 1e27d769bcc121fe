"Project-level checks: README in sync with nbs/index.ipynb, and CI running exactly the README's commands."
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
