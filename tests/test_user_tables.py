"""`mllifecycle run` on the tables users bring: every task, small and imbalanced, messy columns, leaks, too few rows.

Each case runs the whole pipeline through the command line with small settings, then checks what a user would: the
artifacts exist, the metrics are finite and better than the trivial predictor's, and the champion loads from the
registry and predicts raw rows of the user's file.
"""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import run_command
from tables import CASES, leaky, multiclass, regression

from mllifecycle.core import Run
from mllifecycle.registry import Registry

SMALL = {"n_trials": 0, "epochs": 5, "candidate_epochs": 5, "cv_folds": 2, "n_bootstrap": 200, "device": "cpu",
         "n_requests": 100}
MAXIMIZE = {"auroc", "accuracy", "r2"}


def run_cli(tmp_path, csv, target, *options, small=True, **params):
    "`mllifecycle run` on `csv`, as a user types it; returns the completed process."
    args = ["run", "-p", "data_path", str(csv), "-p", "target", target, "--run-dir", "run", "--runs-root", "runs", *options]
    for key, value in {**(SMALL if small else {}), **params}.items():
        args += ["-p", key, json.dumps(value)]
    return run_command([shutil.which("mllifecycle"), *args], cwd=tmp_path)


def check_run(tmp_path, csv, kind):
    "What every successful case must show; returns the run's metrics.json."
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
    assert performance["windows"] or "stream split" in performance["skipped"]
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


@pytest.mark.parametrize("case", list(CASES))
def test_users_table_through_the_whole_run(case, tmp_path):
    make, target, kind = CASES[case]
    frame = make()
    csv = tmp_path / f"{case}.csv"
    frame.to_csv(csv, index=False)
    result = run_cli(tmp_path, csv, target)
    assert result.returncode == 0, result.stderr
    metrics = check_run(tmp_path, csv, kind)
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


def test_a_leaky_column_is_flagged(tmp_path):
    csv = tmp_path / "leaky.csv"
    leaky(400).to_csv(csv, index=False)
    result = run_cli(tmp_path, csv, "target", "--stages", "data", small=False)  # the data stage flags it
    assert result.returncode == 0, result.stderr
    quality = Run(tmp_path / "run").read_json("data/quality.json")
    flagged = [sorted(leak["columns"]) for leak in quality["leaks"]]
    assert ["base price", "surcharge"] in flagged, quality["leaks"]
    assert any("possible target leak" in w and "surcharge" in w for w in quality["warnings"])
    report = (tmp_path / "run" / "report" / "01_data.ipynb").read_text()
    assert "possible target leak" in report  # shown to the user in the executed notebook


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
