"Each stage's parameters are defined once (its parameters class) and every entry point reads that definition."
import ast
import json
import shutil
from pathlib import Path

import papermill
import pytest

from conftest import run_command
from mllifecycle.core import parameter_defaults, parameters_cell
from mllifecycle.pipeline import STAGE_PARAMS, check_stage_params, find_stages, stage_params_class

ROOT = Path(__file__).resolve().parent.parent
STAGES = [s for s in find_stages(ROOT / "nbs") if s.name in STAGE_PARAMS]


def parameters_source(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))


def test_every_stage_with_parameters_has_a_class():
    assert [s.name for s in STAGES] == list(STAGE_PARAMS)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_parameters_cell_is_generated_from_the_class(stage):
    expected = parameters_cell(stage_params_class(stage.name))
    assert parameters_source(stage.notebook).strip() == expected, \
        f"{stage.notebook.name}'s parameters cell differs from its class; make it:\n{expected}"


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_notebook_pipeline_and_api_use_the_same_defaults(stage):
    cls = stage_params_class(stage.name)
    api = parameter_defaults(cls)
    notebook = {name: ast.literal_eval(info["default"])  # what papermill (a standalone run) sees
                for name, info in papermill.inspect_notebook(str(stage.notebook)).items()}
    assert notebook == api
    built = check_stage_params(stage, {})  # what `mllifecycle run` checks and the job builds
    assert {name: getattr(built, name) for name in api if name != "run_dir"} == \
        {name: value for name, value in api.items() if name != "run_dir"}


def test_train_command_takes_the_given_values_over_the_class_defaults():
    "What `mllifecycle train` builds from its parameters: the values given, every other one the class default."
    from mllifecycle.core import ParamError
    from mllifecycle.train import TrainParams

    built = TrainParams.from_dict({"epochs": 3, "n_trials": 0, "device": "cpu"})
    assert (built.epochs, built.n_trials, built.device) == (3, 0, "cpu")
    defaults = parameter_defaults(TrainParams)
    assert defaults["epochs"] != 3 and defaults["n_trials"] != 0  # the given values are not the defaults
    assert {k: getattr(built, k) for k in defaults if k not in ("epochs", "n_trials", "device")} == \
        {k: v for k, v in defaults.items() if k not in ("epochs", "n_trials", "device")}
    with pytest.raises(ParamError, match=r"unknown training parameter\(s\) \['epoch'\]"):
        TrainParams.from_dict({"epoch": 3})
    with pytest.raises(ParamError, match="epochs"):
        TrainParams.from_dict({"epochs": 0})


def test_params_command_prints_the_class_defaults_and_help(tmp_path):
    listed = run_command([shutil.which("mllifecycle"), "params"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for stage in STAGES:
        cls = stage_params_class(stage.name)
        for line in parameters_cell(cls).splitlines():
            assert f"  {line}" in listed.stdout.splitlines(), line
