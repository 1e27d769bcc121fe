"""`mllifecycle run` as a whole: progress and summary, one report, reproducible results, `--from`, `report`; each
stage's parameters defined once and read by every entry point; and the tables users bring — every task, small and
imbalanced, messy columns, leaks, too few rows — through the whole run."""
import ast
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import papermill
import pytest

from conftest import mllifecycle, run_command, small_profile, small_run_command
from tables import CASES, leaky, multiclass, regression

from mllifecycle.core import Run, parameter_defaults, parameters_cell, read_json
from mllifecycle.pipeline import STAGE_PARAMS, check_stage_params, find_stages, stage_params_class
from mllifecycle.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
STAGES = list(STAGE_PARAMS)


@pytest.mark.slow
def test_run_shows_each_stage_and_ends_with_a_summary(default_run):
    lines = default_run.result.stdout.strip().splitlines()
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/5] {stage}: running {next(n for n in lines if f'] {stage}: running' in n).split()[-1]}" in lines
        assert any(re.fullmatch(rf"\[{i}/5\] {stage}: ok in \d+\.\d s", line) for line in lines), stage
    summary = lines[-6:-1]
    assert [line.split(":")[0] for line in summary] == ["winner", "registry", "serving", "monitoring", "report"]
    selection = read_json(default_run.run_dir / "validation" / "selection.json")
    assert summary[0].startswith(f"winner: {selection['winner']} — test {selection['metric']} ")
    assert summary[-1] == f"report: {default_run.run_dir / 'report' / 'report.html'}"
    assert lines[-1] == str(default_run.run_dir)  # for scripts: run=$(mllifecycle run | tail -1)
    assert default_run.result.stderr == ""


@pytest.mark.slow
def test_report_has_the_summary_then_every_stage_and_needs_no_network(default_run):
    page = (default_run.run_dir / "report" / "report.html").read_text(encoding="utf-8")
    for section in ("data", "model", "serving", "monitoring", "environment"):
        assert f'<section id="{section}">' in page, section
    positions = [page.index(f'id="stage-{stage}"') for stage in STAGES]
    assert positions == sorted(positions) and page.index('id="environment"') < positions[0]  # summary first
    assert page.count('class="badge ok"') >= 2 * len(STAGES) and "badge failed" not in page
    assert page.count("data:image/png;base64,") >= 10  # the summary's figures and the notebooks' plots, embedded
    assert page.count('<details class="code">') > 20  # code folded
    loaded = re.findall(r'<(?:img|script|link|iframe|source|audio|video)\b[^>]*?(?:src|href)="([^"]*)"', page)
    assert loaded and all(u.startswith("data:") for u in loaded)  # nothing the browser would fetch
    env = read_json(default_run.run_dir / "env.json")
    assert str(env["seed"]) in page and (env["git"]["commit"] or "—") in page
    record = read_json(default_run.run_dir / "report" / "pipeline.json")
    assert all(e["seconds"] > 0 and e["started"] for e in record["stages"])


TIMINGS = re.compile(r"seconds|latency|_per_s$|^(workers|registry|started|created|datetime_\w+|duration|p\d\d_ms|max_ms"
                     r"|user_attrs_worker|request_id|sha256|rss_mb)$")


def without_timings(value):
    "A JSON value without the figures that measure time or name this machine's paths and processes."
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not TIMINGS.search(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.mark.slow
def test_same_parameters_and_seed_give_identical_metrics_and_predictions(small_run, tmp_path):
    "Two runs of the small profile, every stage: the same data, weights, metrics, choices, answers and alerts."
    again = small_run_command(tmp_path)
    assert again.returncode == 0, again.stderr
    first, second = small_run.run_dir, tmp_path / again.stdout.strip().splitlines()[-1]
    checksums = [read_json(r / "checksums.json") for r in (first, second)]
    for name in ("data/train.parquet", "data/valid.parquet", "data/test.parquet", "data/stream.parquet",
                 "features/pipeline.json", "models/mlp/weights.safetensors", "models/linear/weights.safetensors",
                 "validation/metrics.json", "validation/cv.json", "monitoring/drift.json", "monitoring/alerts.json"):
        assert checksums[0][name] == checksums[1][name], name  # byte for byte
    for name in ("validation/selection.json", "tuning/best.json", "models/mlp/history.json", "models/hgb/config.json",
                 "monitoring/performance.json", "monitoring/retraining.json"):
        assert without_timings(read_json(first / name)) == without_timings(read_json(second / name)), name
    for name, read in (("validation/comparison.csv", pd.read_csv), ("tuning/trials.csv", pd.read_csv),
                       ("deploy/predictions.parquet", pd.read_parquet)):
        a, b = read(first / name), read(second / name)
        kept = [c for c in a.columns if not TIMINGS.search(c)]
        pd.testing.assert_frame_equal(a[kept], b[kept], obj=name)


@pytest.mark.slow
def test_from_reruns_a_stage_and_adds_to_the_record(small_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run.run_dir, run_dir)
    (run_dir / "report" / "report.html").unlink()
    result = mllifecycle("run", "--run-dir", "run", "--from", "monitor", "-p", "consecutive", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[1/1] monitor: running 05_monitor.ipynb" in result.stdout and "data: running" not in result.stdout
    record = read_json(run_dir / "report" / "pipeline.json")
    assert [e["stage"] for e in record["stages"]] == STAGES + ["monitor"]  # appended, not overwritten
    assert record["params"]["consecutive"] == 3 and read_json(run_dir / "params.json")["monitor"]["consecutive"] == 3
    assert (run_dir / "report" / "report.html").exists()
    # a stage before the one to start from must have run: a copy without its training is refused
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    record["stages"] = [e for e in record["stages"] if e["stage"] != "train"]
    (broken / "report" / "pipeline.json").write_text(json.dumps(record))
    refused = mllifecycle("run", "--run-dir", "broken", "--from", "validate", cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "stage 'train' has not run successfully" in refused.stderr


@pytest.mark.slow
def test_report_command_rebuilds_the_report(small_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(small_run.run_dir, run_dir)
    (run_dir / "report" / "report.html").unlink()
    result = mllifecycle("report", "copy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(run_dir / "report" / "report.html")
    assert 'id="stage-monitor"' in (run_dir / "report" / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("args, fragment", [(["nowhere"], "run directory not found"),
                                            (["."], "is not a run directory")])
def test_report_command_refuses_what_is_not_a_run(tmp_path, args, fragment, mllifecycle_here):
    result = mllifecycle_here("report", *args, cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("mllifecycle: error: ") and fragment in result.stderr
    assert result.stderr.count("\n") == 1


# --- each stage's parameters are defined once (its parameters class), and every entry point reads it --------

STAGE_NOTEBOOKS = [s for s in find_stages(ROOT / "nbs") if s.name in STAGE_PARAMS]


def parameters_source(notebook: Path) -> str:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))


def test_every_stage_with_parameters_has_a_class():
    assert [s.name for s in STAGE_NOTEBOOKS] == list(STAGE_PARAMS)


@pytest.mark.parametrize("stage", STAGE_NOTEBOOKS, ids=lambda s: s.name)
def test_parameters_cell_is_generated_from_the_class(stage):
    expected = parameters_cell(stage_params_class(stage.name))
    assert parameters_source(stage.notebook).strip() == expected, \
        f"{stage.notebook.name}'s parameters cell differs from its class; make it:\n{expected}"


@pytest.mark.parametrize("stage", STAGE_NOTEBOOKS, ids=lambda s: s.name)
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


def test_params_command_prints_the_class_defaults_and_help(tmp_path, mllifecycle_here):
    listed = mllifecycle_here("params", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for stage in STAGE_NOTEBOOKS:
        cls = stage_params_class(stage.name)
        for line in parameters_cell(cls).splitlines():
            assert f"  {line}" in listed.stdout.splitlines(), line


# --- the tables users bring, through the whole run ----------------------------------------------------------

MAXIMIZE = {"auroc", "accuracy", "r2"}


def run_cli(tmp_path, csv, target, *options, stages: str | None = None, small: bool = True):
    "`mllifecycle run` on `csv` with the small profile (or the defaults), as a user types it; the completed process."
    args = ["run", "-p", "data_path", str(csv), "-p", "target", target, "--run-dir", "run", "--runs-root", "runs",
            *(["--params", str(small_profile(tmp_path, stages))] if small else []),
            *(["--stages", stages] if stages else []), *options]
    return run_command([shutil.which("mllifecycle"), *args], cwd=tmp_path)


def check_run(tmp_path, csv, kind, streamed: bool):
    """What every successful case must show; returns the run's metrics.json. `streamed`: the table has a time column,
    so a time split keeps its latest rows as the stream the monitoring stage replays (else the split is random)."""
    run = Run(tmp_path / "run")
    for relpath in ("data/schema.json", "data/quality.json", "data/dataset.json", "features/pipeline.json",
                    "validation/metrics.json", "validation/selection.json", "validation/comparison.csv"):
        run.artifact(relpath)  # present, checksum verified
    metrics = run.read_json("validation/metrics.json")
    assert metrics["task"] == kind
    reported = metrics["reported"]
    better = reported["value"] > reported["trivial"] if reported["metric"] in MAXIMIZE \
        else reported["value"] < reported["trivial"]
    assert math.isfinite(reported["value"]) and better, reported
    comparison = pd.read_csv(run.artifact("validation/comparison.csv"))
    metric = metrics["primary_metric"]
    assert np.isfinite(comparison[[metric, f"test_{metric}", "gap", "latency_ms_per_row"]].to_numpy()).all()
    selection = run.read_json("validation/selection.json")
    assert selection["chosen_on"]["split"] in ("cv", "valid") and selection["reported"]["split"] == "test"

    performance = run.read_json("monitoring/performance.json")  # the monitoring stage ran, or said why it could not
    assert run.read_json("data/splits.json")["method"] == ("time" if streamed else "random")
    if streamed:
        assert len(performance["windows"]) > 0 and not performance["skipped"], performance["skipped"]
    else:
        assert performance["windows"] == [] and "stream split" in performance["skipped"], performance["skipped"]
    champion = Registry(tmp_path / "runs" / "registry").load("champion")
    raw = pd.read_csv(csv).head(25)  # the user's own rows, as they are in the file
    out = champion.predict(raw)
    assert len(out) == 25
    if kind == "regression":
        assert np.isfinite(out.predictions.astype(float)).all()
    else:
        assert set(out.predictions) <= set(champion.classes)
        np.testing.assert_allclose(out.probabilities.sum(axis=1), 1, atol=1e-5)
    return metrics


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_users_table_through_the_whole_run(case, tmp_path):
    make, target, kind = CASES[case]
    frame = make()
    csv = tmp_path / f"{case}.csv"
    frame.to_csv(csv, index=False)
    result = run_cli(tmp_path, csv, target)
    assert result.returncode == 0, result.stderr
    metrics = check_run(tmp_path, csv, kind, streamed=case == "binary-string-target-messy")  # its signup date
    if case == "5-class-imbalanced":
        assert frame[target].value_counts(normalize=True).min() < 0.05  # the case is what it claims
        assert len(metrics["classes"]) == 5
    if case == "binary-string-target-messy":
        run = Run(tmp_path / "run")
        quality, schema = run.read_json("data/quality.json"), run.read_json("data/schema.json")
        roles = {c["name"]: c["role"] for c in schema["columns"]}
        assert "customer id" in quality["id_columns"] and roles["customer id"] == "id"  # an ID is not a feature
        assert roles["constant"] == "ignore" and roles["referrer"] == "feature"
        assert schema["time_column"] == "signup date"  # a date column in text was recognised


@pytest.mark.slow
def test_a_leaky_column_is_flagged(tmp_path):
    csv = tmp_path / "leaky.csv"
    leaky(400).to_csv(csv, index=False)
    result = run_cli(tmp_path, csv, "target", stages="data", small=False)  # the data stage flags it
    assert result.returncode == 0, result.stderr
    quality = Run(tmp_path / "run").read_json("data/quality.json")
    flagged = [sorted(leak["columns"]) for leak in quality["leaks"]]
    assert ["base price", "surcharge"] in flagged, quality["leaks"]
    assert any("possible target leak" in w and "surcharge" in w for w in quality["warnings"])
    report = (tmp_path / "run" / "report" / "01_data.ipynb").read_text()
    assert "possible target leak" in report  # shown to the user in the executed notebook


@pytest.mark.slow
def test_a_table_too_small_to_split_is_one_clear_error(tmp_path):
    csv = tmp_path / "tiny.csv"
    multiclass(40).to_csv(csv, index=False)
    result = run_cli(tmp_path, csv, "label")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DataError" in lines[0] and "40 rows are too few to split" in lines[0], result.stderr
    assert "need at least 67 rows" in lines[0]


def test_same_table_and_seed_choose_the_same_winner(tmp_path):
    "Two runs of one table with one seed: identical held-out figures and the same winner, whatever the CPU load."
    from mllifecycle.core import open_run
    from mllifecycle.data import DataParams, prepare_data
    from mllifecycle.train import TrainParams, train_stage
    from mllifecycle.validate import ValidateParams, validate_stage

    regression(400).to_csv(tmp_path / "prices.csv", index=False)
    outcomes = []
    for name in ("first", "second"):
        run = open_run(tmp_path / name, seed=3)
        prepare_data(run, DataParams(data_path=str(tmp_path / "prices.csv"), target="target", seed=3))
        train_stage(TrainParams(run_dir=str(run.path), epochs=4, n_trials=0, progress=False, device="cpu", seed=3))
        stage = validate_stage(ValidateParams(run_dir=str(run.path), registry_dir=str(tmp_path / "registry"),
                                              candidate_epochs=4, cv_folds=2, n_bootstrap=200, device="cpu", seed=3))
        outcomes.append(stage)
    first, second = outcomes
    assert first.selection["winner"] == second.selection["winner"]
    figures = ["model", "rmse", "ci_low", "ci_high", "gap", "test_rmse"]
    pd.testing.assert_frame_equal(first.comparison[figures], second.comparison[figures])
    assert first.selection["reported"] == second.selection["reported"]
