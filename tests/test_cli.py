"The `mllifecycle` command end to end: default run, a user's CSV, and one readable line on every failure."
import html
import json

import pandas as pd
import pytest

from conftest import artifact_files, mllifecycle

from mllifecycle.core import Run, parameter_defaults, to_jsonable
from mllifecycle.data import DataParams
from mllifecycle.registry import Registry
from mllifecycle.train import TrainParams
from mllifecycle.validate import ValidateParams


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mllifecycle: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_run_with_no_arguments_prepares_the_flights_data(default_run):
    tmp_path, run_dir = default_run.cwd, default_run.run_dir
    assert run_dir.parent == tmp_path / "runs"
    run = Run(run_dir)
    for name in ("train", "valid", "test", "stream"):
        assert len(pd.read_parquet(run.artifact(f"data/{name}.parquet"))) > 0
    schema = run.read_json("data/schema.json")
    assert schema["target"] == "delayed" and schema["task"] == "classification"
    assert run.read_json("features/pipeline.json")["format"] == "mllifecycle.FeaturePipeline/1"
    assert (run_dir / "report" / "01_data.ipynb").exists()
    assert json.loads((run_dir / "env.json").read_text())["seed"] == 0
    for stage, cls in (("data", DataParams), ("train", TrainParams), ("validate", ValidateParams)):
        defaults = {k: v for k, v in parameter_defaults(cls).items() if k not in ("run_dir", "registry_dir")}
        assert {k: run.params[stage][k] for k in defaults} == to_jsonable(defaults), stage  # the one definition ran
    # the training stage tuned, then trained the final model with the best trial's hyperparameters
    best = run.read_json("tuning/best.json")
    assert sum(best["trials"].values()) == TrainParams().n_trials and best["trials"]["complete"] >= 1
    config = run.read_json("models/mlp/config.json")
    assert config["hyperparameters"]["lr"] == best["best_params"]["lr"]
    assert config["metric"]["name"] == "auroc" and config["metric"]["valid"] > 0.65
    for name in ("weights.safetensors", "history.json", "plots/learning_curves.png"):
        run.artifact(f"models/mlp/{name}")
    assert (run_dir / "report" / "02_train.ipynb").exists()
    # the validation stage compared four candidates, selected one and made it the champion of runs/registry
    for name in ("metrics.json", "cv.json", "comparison.csv", "selection.json", "plots/roc.png"):
        run.artifact(f"validation/{name}")
    selection = run.read_json("validation/selection.json")
    winner = selection["winner"]
    # same data and seed, same winner on any load: on the default flights sample the linear model wins
    assert winner == "linear", selection["reason"]
    assert set(selection["candidates"]) == {"mlp", "mlp_small", "linear", "hgb"}
    registered = run.read_json("validation/registry.json")
    assert registered["registry"] == str(tmp_path / "runs" / "registry") and registered["alias"] == "champion"
    listed = mllifecycle("registry", "list", cwd=tmp_path)
    assert listed.returncode == 0 and "champion" in listed.stdout and winner in listed.stdout
    stages = json.loads((run_dir / "report" / "pipeline.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["data", "train", "validate", "deploy", "monitor"]
    assert {s["status"] for s in stages} == {"ok"}
    # the monitoring stage replayed the stream week by week, in a registry of its own: the live champion stayed
    performance = run.read_json("monitoring/performance.json")
    assert len(performance["windows"]) >= 12 and performance["metric"] == "auroc"
    assert {"no_retraining", "retraining", "gain_ci"} <= set(performance["headline"])
    for name in ("drift.json", "alerts.json", "retraining.json", "system.json", "plots/performance.png",
                 "plots/comparison.png", "plots/drift.png"):
        run.artifact(f"monitoring/{name}")
    assert run.read_json("monitoring/system.json")["server"]["requests"] > 0  # the deploy stage's /metrics
    assert Registry(tmp_path / "runs" / "registry").resolve("champion") == registered["version"]


def test_run_on_a_users_csv(tmp_path, synthetic_csv):
    result = mllifecycle("run", "-p", "data_path", synthetic_csv.name, "-p", "target", "y", "--run-dir", "myrun",
                         "--stages", "data,train", cwd=synthetic_csv.parent)
    assert result.returncode == 0, result.stderr
    run = Run(synthetic_csv.parent / "myrun")
    splits = run.read_json("data/splits.json")
    assert splits["method"] == "time" and splits["time_column"] == "timestamp"  # found the timestamp column
    assert sum(splits["rows"].values()) == 3000
    assert run.read_json("data/schema.json")["target"] == "y"
    assert run.read_json("models/mlp/config.json")["kind"] == "binary"  # and trained a model on it


def test_params_file_and_overrides(tmp_path, synthetic_csv):
    (tmp_path / "params.yaml").write_text(f"data_path: {synthetic_csv}\ntarget: y\nsplit: time\n")
    result = mllifecycle("run", "--params", "params.yaml", "-p", "split", "random", "--run-dir", "r",
                         "--stages", "data", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Run(tmp_path / "r").read_json("data/splits.json")["method"] == "random"


def test_failing_stage_is_one_line_and_leaves_no_artifacts(tmp_path, synthetic_csv):
    result = mllifecycle("run", "-p", "data_path", str(synthetic_csv), "-p", "target", "label", "--run-dir", "bad",
                         cwd=tmp_path)
    assert_one_line_error(result, "stage 'data' failed", "DataError", "target column 'label' not found")
    assert artifact_files(tmp_path / "bad") in ([], ["env.json", "params.json"])


def test_failing_training_stage_is_one_line_and_keeps_the_data(tmp_path):
    "A parameter that only the data can refute (an RMSE early-stopping metric for a binary target) fails in its stage."
    result = mllifecycle("run", "-p", "metric", "rmse", "-p", "sample_rows", "3000", "--run-dir", "r", cwd=tmp_path)
    assert_one_line_error(result, "stage 'train' failed", "ParamError", "metric 'rmse' does not apply to binary")
    run = Run(tmp_path / "r")
    run.artifact("data/train.parquet")  # the data stage's artifacts are intact
    assert not (tmp_path / "r" / "models").exists()
    assert "[2/5] train: failed in" in result.stdout and "[3/5]" not in result.stdout  # the run stopped there
    # the report of what ran: the data stage in full, the training stage marked failed with the cell's error
    stages = json.loads((tmp_path / "r" / "report" / "pipeline.json").read_text())["stages"]
    assert [(s["stage"], s["status"]) for s in stages] == [("data", "ok"), ("train", "failed")]
    page = (tmp_path / "r" / "report" / "report.html").read_text()
    assert 'id="data"' in page and 'id="stage-data"' in page and 'id="stage-train"' in page
    assert 'class="badge failed"' in page and "metric 'rmse' does not apply to binary" in html.unescape(page)
    assert "report.html" in result.stderr  # the one line says where the report is


@pytest.mark.parametrize("args, fragments", [
    (["-p", "data_path", "missing.csv", "-p", "target", "y"], ["data file not found", "missing.csv"]),
    (["-p", "sample_rowz", "10"], ["unknown parameter(s) ['sample_rowz']"]),
    (["--params", "nope.yaml"], ["parameter file not found"]),
    (["--stages", "trian"], ["unknown stage(s) ['trian']"]),
])
def test_bad_command_lines(tmp_path, args, fragments):
    assert_one_line_error(mllifecycle("run", *args, cwd=tmp_path), *fragments)


def test_malformed_params_file(tmp_path):
    (tmp_path / "p.json").write_text('{"sample_rows": 10,,}')
    assert_one_line_error(mllifecycle("run", "--params", "p.json", cwd=tmp_path), "not valid JSON")


def test_params_command_lists_stage_parameters(tmp_path):
    result = mllifecycle("params", cwd=tmp_path)
    assert result.returncode == 0 and "[data]" in result.stdout
    assert any(line.startswith(f"  sample_rows = {DataParams().sample_rows!r}  # ") for line in result.stdout.splitlines())


@pytest.mark.parametrize("args, fragments", [
    (["-p", "epochs", "-3"], ["epochs must be an integer ≥ 1"]),
    (["-p", "max_gap", "\"big\""], ["max_gap must be a finite number"]),
    (["-p", "data_path", "nope.csv", "-p", "target", "y"], ["data file not found"]),
    (["-p", "leak_threshold", "2"], ["leak_threshold must be a finite number ≥ 0.5 and ≤ 1, got 2"]),
])
def test_parameters_are_refused_before_any_stage_and_leave_no_run(tmp_path, args, fragments):
    result = mllifecycle("run", *args, "--run-dir", "r", cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert "stage '" not in result.stderr  # refused before the first stage started
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def test_registry_refuses_a_champion_of_other_data_unless_forced(tmp_path, synthetic_csv):
    "Two tables register into one registry; the second's model does not silently replace the first's champion."
    from tables import regression

    regression(300).to_csv(tmp_path / "prices.csv", index=False)
    small = ["-p", "n_trials", "0", "-p", "epochs", "3", "-p", "candidate_epochs", "3", "-p", "cv_folds", "0",
             "-p", "n_bootstrap", "100", "-p", "candidates", '["linear", "hgb"]']
    stages = ["--stages", "data,train,validate"]  # validation registers; serving and monitoring add nothing here
    first = mllifecycle("run", "-p", "data_path", str(synthetic_csv), "-p", "target", "y", *small, "--run-dir", "a",
                        *stages, cwd=tmp_path)
    second = mllifecycle("run", "-p", "data_path", "prices.csv", "-p", "target", "target", *small, "--run-dir", "b",
                         *stages, cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    decision = Run(tmp_path / "b").read_json("validation/registry.json")
    assert decision["alias"] is None and "other data" in decision["reason"]
    listed = mllifecycle("registry", "list", cwd=tmp_path)
    assert "synthetic.csv" in listed.stdout and "prices.csv" in listed.stdout and "target" in listed.stdout
    refused = mllifecycle("registry", "promote", "2", cwd=tmp_path)
    assert_one_line_error(refused, "is a model of other data than the champion", "--force")
    forced = mllifecycle("registry", "promote", "2", "--force", "--reason", "prices now", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    history = json.loads((tmp_path / "runs" / "registry" / "registry.json").read_text())["history"]
    assert history[-1]["version"] == 2 and history[-1]["forced_over"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_refused_before_any_stage(tmp_path):
    result = mllifecycle("run", "-p", "device", "cuda", "--run-dir", "r", cwd=tmp_path)
    assert_one_line_error(result, "CUDA is not available on this machine")
    assert "stage '" not in result.stderr and not (tmp_path / "r").exists()
