"""The `mllifecycle` command: the default run, a user's CSV, parameters from a file and the command line, and one
readable line and a non-zero exit on every failure of every command; unusual valid input is scored."""
import html
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import artifact_files, mllifecycle

from mllifecycle.batch import read_log

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_params_file_and_overrides(tmp_path, synthetic_csv):
    (tmp_path / "params.yaml").write_text(f"data_path: {synthetic_csv}\ntarget: y\nsplit: time\n")
    result = mllifecycle("run", "--params", "params.yaml", "-p", "split", "random", "--run-dir", "r",
                         "--stages", "data", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Run(tmp_path / "r").read_json("data/splits.json")["method"] == "random"


@pytest.mark.slow
def test_failing_stage_is_one_line_and_leaves_no_artifacts(tmp_path, synthetic_csv):
    result = mllifecycle("run", "-p", "data_path", str(synthetic_csv), "-p", "target", "label", "--run-dir", "bad",
                         cwd=tmp_path)
    assert_one_line_error(result, "stage 'data' failed", "DataError", "target column 'label' not found")
    assert artifact_files(tmp_path / "bad") == ["env.json", "params.json"]  # the run's record; no stage artifact


@pytest.mark.slow
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
def test_bad_command_lines(tmp_path, args, fragments, mllifecycle_here):
    assert_one_line_error(mllifecycle_here("run", *args, cwd=tmp_path), *fragments)


def test_malformed_params_file(tmp_path, mllifecycle_here):
    (tmp_path / "p.json").write_text('{"sample_rows": 10,,}')
    assert_one_line_error(mllifecycle_here("run", "--params", "p.json", cwd=tmp_path), "not valid JSON")


def test_params_command_lists_stage_parameters(tmp_path, mllifecycle_here):
    result = mllifecycle_here("params", cwd=tmp_path)
    assert result.returncode == 0 and "[data]" in result.stdout
    assert any(line.startswith(f"  sample_rows = {DataParams().sample_rows!r}  # ") for line in result.stdout.splitlines())


@pytest.mark.parametrize("args, fragments", [
    (["-p", "epochs", "-3"], ["epochs must be an integer ≥ 1"]),
    (["-p", "max_gap", "\"big\""], ["max_gap must be a finite number"]),
    (["-p", "data_path", "nope.csv", "-p", "target", "y"], ["data file not found"]),
    (["-p", "leak_threshold", "2"], ["leak_threshold must be a finite number ≥ 0.5 and ≤ 1, got 2"]),
])
def test_parameters_are_refused_before_any_stage_and_leave_no_run(tmp_path, args, fragments,
                                                                   mllifecycle_here):
    result = mllifecycle_here("run", *args, "--run-dir", "r", cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert "stage '" not in result.stderr  # refused before the first stage started
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_refused_before_any_stage(tmp_path, mllifecycle_here):
    result = mllifecycle_here("run", "-p", "device", "cuda", "--run-dir", "r", cwd=tmp_path)
    assert_one_line_error(result, "CUDA is not available on this machine")
    assert "stage '" not in result.stderr and not (tmp_path / "r").exists()


# --- every command: bad input is one line and a non-zero exit; unusual valid input works ----------------------------

@pytest.fixture(scope="module")
def cli_world(served_registry, tmp_path_factory):
    "Files for the command-line cases: a single-row file, an empty one, a corrupt one, a table that is not a log."
    folder = tmp_path_factory.mktemp("cli")
    test = served_registry["prepared"].splits["test"].reset_index(drop=True)
    test.head(1).to_parquet(folder / "one-row.parquet")
    test.head(0).to_parquet(folder / "empty.parquet")
    test.drop(columns=["num_0"]).to_parquet(folder / "no-num_0.parquet")
    (folder / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (folder / "empty-folder").mkdir()
    (folder / "bad.csv").write_text('a,b\n1,"unterminated\n')
    (folder / "run-file").write_text("not a run directory")
    pd.DataFrame({"x": [1, 2]}).to_parquet(folder / "not-a-log.parquet")
    return folder


def one_line_failure(args: list[str], cwd: Path, capsys) -> str:
    "Run `mllifecycle ARGS` in this process; assert a non-zero exit and one readable line, and return it."
    from mllifecycle.cli import main

    capsys.readouterr()
    status = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status not in (0, None), (args, err)
    assert len(lines) == 1 and lines[0].startswith("mllifecycle: error: "), (args, err)
    return lines[0]


BAD_COMMANDS = {  # name → (arguments, a fragment of the one line)
    "predict: missing input": (["predict", "--input", "nope.parquet", "--output", "o.parquet"], "does not exist"),
    "predict: empty folder": (["predict", "--input", "empty-folder", "--output", "o.parquet"], "holds no .parquet"),
    "predict: corrupt file": (["predict", "--input", "corrupt.parquet", "--output", "o.parquet"], "not a readable"),
    "predict: no rows": (["predict", "--input", "empty.parquet", "--output", "o.parquet"], "no rows to score"),
    "predict: a column missing": (["predict", "--input", "no-num_0.parquet", "--output", "o.parquet"], "num_0"),
    "predict: bad CSV": (["predict", "--input", "bad.csv", "--output", "o.parquet"], "cannot be read as CSV"),
    "predict: output over input": (["predict", "--input", "one-row.parquet", "--output", "one-row.parquet"],
                                   "would overwrite the input"),
    "predict: bad part": (["predict", "--input", "one-row.parquet", "--output", "o.parquet", "--part", "3/2"], "part"),
    "monitor: missing log": (["monitor", "--log", "nope"], "does not exist"),
    "monitor: not a log": (["monitor", "--log", "not-a-log.parquet"], "is not a prediction log"),
    "monitor: corrupt log": (["monitor", "--log", "corrupt.parquet"], "cannot be read"),
    "serve: unknown alias": (["serve", "--alias", "nope"], "no version has alias 'nope'"),
    "serve: bad port": (["serve", "--port", "70000"], "port must be at most 65535"),
    "serve: bad timeout": (["serve", "--read-timeout-s", "0"], "read_timeout_s"),
    "registry promote: unknown version": (["registry", "promote", "99"], "unknown version 99"),
    "registry promote: bad alias": (["registry", "promote", "1", "--alias", "Bad Alias"], "alias"),
    "report: missing run": (["report", "no-such-run"], "no-such-run"),
    "report: a file, not a run": (["report", "run-file"], "run-file"),
}


@pytest.mark.parametrize("case", list(BAD_COMMANDS))
def test_bad_input_to_every_command_is_one_line(case, served_registry, cli_world, capsys, monkeypatch):
    args, fragment = BAD_COMMANDS[case]
    monkeypatch.chdir(cli_world)
    registry = [] if args[0] == "report" else ["--registry", str(served_registry["root"])]
    command = 2 if args[0] == "registry" else 1
    quiet = ["--no-progress"] if args[0] == "predict" else []  # the progress bar shares stderr
    line = one_line_failure([*args[:command], *registry, *args[command:], *quiet], cli_world, capsys)
    assert fragment in line, line


def test_registry_commands_without_a_registry_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["registry", "list"], ["registry", "rollback"], ["serve"], ["predict", "--input", "x.parquet",
                                                                            "--output", "o.parquet"]):
        assert "no model registry at" in one_line_failure(args, tmp_path, capsys)


def test_unusual_valid_inputs_are_scored(served_registry, cli_world, tmp_path, capsys, monkeypatch):
    "A single-row file, and a file with extra columns whose names hold spaces and unicode."
    from mllifecycle.cli import main

    monkeypatch.chdir(tmp_path)
    test = served_registry["prepared"].splits["test"].reset_index(drop=True).head(50)
    test.assign(**{"a column with spaces": 1.0, "température °C": 2.0, "航班": "x"}).to_parquet("odd.parquet")
    for source in (str(cli_world / "one-row.parquet"), "odd.parquet"):
        assert main(["predict", "--registry", str(served_registry["root"]), "--input", source, "--output", "out.parquet",
                     "--inputs", "--no-progress"]) == 0, capsys.readouterr().err
        assert len(read_log("out.parquet")) == len(pd.read_parquet(source))


def test_the_command_reads_notebooks_without_building_jsonschemas_iri_parsers(tmp_path):
    """`main` keeps jsonschema's optional IRI checker (seconds of parser building at import) out of the command's own
    process, where nbformat still validates notebooks; importing the library leaves a user's process as it was."""
    import importlib.metadata
    import subprocess
    import sys

    assert importlib.metadata.version("rfc3987-syntax")  # installed with our dependencies (jupyterlab's)
    through_main = ("from mllifecycle.cli import main; main(['report', 'nowhere']); import nbformat; "
                    "nbformat.validate(nbformat.v4.new_notebook())")
    library_only = "import mllifecycle.cli, mllifecycle.pipeline, mllifecycle.report"
    probe = "import sys; {}; print(repr(sys.modules.get('rfc3987_syntax', 'absent')))"
    seen = [subprocess.run([sys.executable, "-c", probe.format(code)], capture_output=True, text=True, check=True,
                           cwd=tmp_path).stdout.splitlines()[-1] for code in (through_main, library_only)]
    assert seen == ["None", "'absent'"]  # None: marked absent, so jsonschema skips it
