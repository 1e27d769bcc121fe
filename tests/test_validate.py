"""The validation stage: its artifacts and champion, reproducibility, metrics on degenerate splits, bad parameters,
every task end to end; the candidates trained properly at any size; and the same winner and metrics on a busy CPU."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import psutil
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import OneHotEncoder

from conftest import QUICK_VALIDATION, wait_for
from tables import binary_mixed, multiclass, regression

from mllifecycle.core import ParamError, open_run
from mllifecycle.data import DataParams, data_stage, make_synthetic, prepare_data
from mllifecycle.registry import Registry
from mllifecycle.train import TrainParams, task_kind, train_stage
from mllifecycle.validate import (
    CANDIDATES, ValidateParams, ValidationError, classification_metrics, compare_models, evaluate, fit_candidate,
    regression_metrics, validate_stage)

def test_stage_writes_every_artifact_and_a_champion(validated):
    root, stage = validated
    run = stage.run
    for name in ("metrics.json", "cv.json", "comparison.csv", "selection.json", "registry.json"):
        run.artifact(f"validation/{name}")
    for plot in ("roc", "precision_recall", "reliability", "threshold", "confusion", "slices", "comparison"):
        run.artifact(f"validation/plots/{plot}.png")
    comparison = pd.read_csv(run.artifact("validation/comparison.csv"))
    assert sorted(comparison["model"]) == ["hgb", "linear", "mlp", "mlp_small"]
    assert comparison["auroc"].between(0.55, 0.9).all()
    selection = run.read_json("validation/selection.json")
    winner = selection["winner"]
    assert winner in set(comparison["model"]) and selection["candidates"][winner]["status"] == "selected"
    assert all(c["reason"] for c in selection["candidates"].values())  # every loser says why
    cv = run.read_json("validation/cv.json")
    assert cv["method"] == "time" and cv["k"] == 2
    assert all(len(m["folds"]) == 2 and m["mean"]["auroc"] > 0.5 for m in cv["models"].values())
    metrics = run.read_json("validation/metrics.json")
    assert metrics["worst_slices"] and metrics["models"][winner]["test"]["rows"] == len(
        pd.read_parquet(run.artifact("data/test.parquet")))
    registry = Registry(root / "registry")
    assert registry.resolve("champion") == 1 and registry.load("champion").name == winner


def test_registered_champion_predicts_what_was_measured(validated):
    root, stage = validated
    champion = Registry(root / "registry").load("champion")
    rows = pd.read_parquet(stage.run.artifact("data/test.parquet"))
    out = champion.predict(rows)
    np.testing.assert_allclose(out.probabilities[:, 1], stage.scores[champion.name]["test"], atol=1e-6)
    records = json.loads(rows.head(4).to_json(orient="records", date_format="iso"))  # as JSON clients send them
    assert list(champion.predict(records).predictions) == list(out.predictions[:4])
    assert champion.threshold == stage.metrics["thresholds"][champion.name]["threshold"]


def test_same_seed_same_metrics_and_a_challenger(validated, tmp_path):
    "Re-validating the run gives identical figures; the same model again is the champion's version, not a new one."
    root, stage = validated
    shutil.copytree(root / "registry", tmp_path / "registry")
    again = validate_stage(ValidateParams(run_dir=str(stage.run.path), registry_dir=str(tmp_path / "registry"), **QUICK_VALIDATION))
    columns = ["model", "auroc", "ci_low", "ci_high", "difference", "train_auroc", "cv_auroc_mean"]
    pd.testing.assert_frame_equal(again.comparison[columns], stage.comparison[columns])
    assert again.registry["version"] == 1 and again.registry["alias"] == "champion"
    assert "already holds this model as version 1" in again.registry["reason"]
    registry = Registry(tmp_path / "registry")
    assert registry.versions() == [1] and registry.resolve("champion") == 1


def test_metrics_on_degenerate_splits():
    with pytest.raises(ValidationError, match="empty"):
        classification_metrics(np.array([], dtype=int), np.array([]), [0, 1])
    single = classification_metrics(np.zeros(20, dtype=int), np.linspace(0, 1, 20), [0, 1])
    assert np.isnan(single["auroc"]) and np.isnan(single["average_precision"]) and single["notes"]
    assert single["accuracy"] == pytest.approx(0.5)
    assert np.isnan(regression_metrics(np.ones(1), np.ones(1))["r2"])
    with pytest.raises(ValidationError, match="NaN or infinite"):
        classification_metrics(np.array([0, 1]), np.array([0.2, np.nan]), [0, 1])
    with pytest.raises(ValidationError, match="no models"):
        compare_models(np.array([0, 1]), {}, "binary", "auroc")


@pytest.mark.parametrize("params, message", [
    (dict(candidates=["mlp", "xgboost"]), "unknown candidate(s) ['xgboost']"),
    (dict(cv_folds=1), "cv_folds"),
    (dict(threshold="best"), "threshold"),
    (dict(threshold=1.5), "threshold must lie in"),
    (dict(promote="sometimes"), "promote"),
    (dict(max_gap=-1), "max_gap"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ParamError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ValidateParams(**params)


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_other_tasks_are_validated_end_to_end(tmp_path, task):
    "Regression (RMSE, residual plot) and multi-class (accuracy, McNemar) go through the same stage and registry."
    frame = make_synthetic(2500, n_numeric=4, n_categorical=2, seed=4)
    if task == "regression":
        frame["target"] = 3 * frame["num_0"] - frame["num_1"] + np.random.default_rng(0).normal(0, 0.5, len(frame))
    else:
        frame["target"] = np.select([frame["num_0"] < -0.5, frame["num_0"] < 0.5], ["low", "mid"], "high")
    frame.to_csv(tmp_path / "data.csv", index=False)
    run = open_run(tmp_path / "run")
    prepare_data(run, DataParams(data_path=str(tmp_path / "data.csv"), target="target", task=
                                 "regression" if task == "regression" else "classification"))
    train_stage(TrainParams(run_dir=str(run.path), epochs=3, n_trials=0, progress=False, device="cpu"))
    stage = validate_stage(ValidateParams(run_dir=str(run.path), **QUICK_VALIDATION))
    metric = "rmse" if task == "regression" else "accuracy"
    assert stage.selection["metric"] == metric and stage.selection["winner"] is not None
    plots = ["residuals"] if task == "regression" else ["reliability", "confusion"]
    for plot in plots + ["comparison", "slices"]:
        run.artifact(f"validation/plots/{plot}.png")
    champion = Registry(run.path / "registry").load("champion")
    out = champion.predict(pd.read_parquet(run.artifact("data/test.parquet")).head(7))
    if task == "regression":
        assert out.probabilities is None and np.isfinite(out.predictions).all()
        assert stage.comparison["mcnemar_p"].isna().all()
    else:
        assert out.probabilities.shape == (7, 3) and set(out.predictions) <= {"low", "mid", "high"}
        assert stage.comparison["mcnemar_p"].notna().sum() == 3


# --- the candidates are trained properly at any size --------------------------------------------------------

PRIMARY = {"binary": "auroc", "multiclass": "accuracy", "regression": "r2"}




def prepared_features(frame, target, tmp_path):
    "Random train/valid/test features of a generated table, through the data stage as a user's CSV."
    frame.to_csv(tmp_path / "table.csv", index=False)
    prepared = prepare_data(open_run(tmp_path / "run"), DataParams(data_path=str(tmp_path / "table.csv"),
                                                                   target=target, split="random"))
    features = {s: prepared.pipeline.transform(prepared.splits[s]) for s in ("train", "valid", "test")}
    classes = prepared.pipeline.classes_ if prepared.schema.task == "classification" else None
    return features, classes


def candidate_metric(name, features, classes):
    kind = task_kind(classes)
    scorer, _ = fit_candidate(CANDIDATES[name], features["train"], features["valid"], classes, epochs=10, device="cpu",
                              seed=0)
    return evaluate(features["test"].target, scorer(features["test"]), kind, classes)[PRIMARY[kind]]


def sklearn_linear_metric(features, classes):
    "LogisticRegression or Ridge on the same standardised numerics, categories one-hot encoded."
    kind = task_kind(classes)
    encoder = OneHotEncoder(handle_unknown="ignore").fit(features["train"].categorical)

    def matrix(f):
        return np.hstack([f.numeric, encoder.transform(f.categorical).toarray()])

    train, test = features["train"], features["test"]
    if kind == "regression":
        scores = Ridge(alpha=1.0).fit(matrix(train), train.target).predict(matrix(test))
    else:
        scores = LogisticRegression(max_iter=5000).fit(matrix(train), train.target).predict_proba(matrix(test))
        scores = scores[:, 1] if kind == "binary" else scores
    return evaluate(test.target, scores, kind, classes)[PRIMARY[kind]]


@pytest.mark.parametrize("frame, target", [(binary_mixed(2000), "churned"), (multiclass(2000), "label"),
                                           (regression(2000), "target")], ids=["binary", "multiclass", "regression"])
def test_linear_candidate_matches_scikit_learn(frame, target, tmp_path):
    features, classes = prepared_features(frame, target, tmp_path)
    ours, theirs = candidate_metric("linear", features, classes), sklearn_linear_metric(features, classes)
    assert ours >= theirs - 0.01, (ours, theirs)


@pytest.mark.parametrize("frame, target", [(binary_mixed(2000), "churned"), (multiclass(2000), "label")],
                         ids=["binary", "multiclass"])
def test_small_network_beats_linear_on_a_nonlinear_signal(frame, target, tmp_path):
    features, classes = prepared_features(frame, target, tmp_path)
    assert candidate_metric("mlp_small", features, classes) >= candidate_metric("linear", features, classes)


def test_small_table_trains_with_small_batches(tmp_path):
    "A 300-row table: the linear candidate is not stuck at one optimiser step per epoch (as with batch 512)."
    features, classes = prepared_features(regression(300), "target", tmp_path)
    assert candidate_metric("linear", features, classes) >= sklearn_linear_metric(features, classes) - 0.01


# --- a busy machine changes neither the winner nor the metrics -----------------------------------------------

BURNERS = 2
LATENCY_COLUMNS = ["latency_ms_per_row", "latency_ms_single"]  # measurements of the machine: compared apart




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A run of the data and training stages (no tuning, two epochs) on a 3,000-row synthetic table."
    root = tmp_path_factory.mktemp("load")
    make_synthetic(3000, n_numeric=5, n_categorical=3, seed=3).to_csv(root / "table.csv", index=False)
    data_stage(DataParams(run_dir=str(root / "base"), data_path=str(root / "table.csv"), target="target"))
    train_stage(TrainParams(run_dir=str(root / "base"), n_trials=0, epochs=2, device="cpu", progress=False))
    return root


def validate_copy(root, name, **limits):
    "Validate a copy of the trained run (its own registry): the selection, the metrics and the comparison table."
    shutil.copytree(root / "base", root / name)
    validate_stage(ValidateParams(run_dir=str(root / name), device="cpu", cv_folds=2, n_bootstrap=200,
                                  registry_dir=str(root / f"{name}-registry"), **limits))
    read = lambda relative: json.loads((root / name / "validation" / relative).read_text())
    return read("selection.json"), read("metrics.json"), pd.read_csv(root / name / "validation" / "comparison.csv")


def burning(count):
    "Start `count` processes that each keep a core busy."
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


@pytest.mark.slow
def test_a_busy_machine_changes_neither_the_winner_nor_the_metrics(trained):
    quiet_selection, quiet_metrics, quiet_table = validate_copy(trained, "quiet")
    # a latency limit the quiet figures meet with half to spare: a busy machine must not push a candidate past it
    limit = 1.5 * float(quiet_table["latency_ms_per_row"].max())
    burners = burning(BURNERS)
    try:
        busy = [psutil.Process(p.pid) for p in burners]
        wait_for(lambda: all(b.cpu_times().user > 0.2 for b in busy), seconds=60, what="the burners' first CPU seconds")
        assert all(p.poll() is None for p in burners)  # they are running
        busy_selection, busy_metrics, busy_table = validate_copy(trained, "busy", max_latency_ms=limit)
    finally:
        for p in burners:
            p.kill()
            p.wait(timeout=10)
    assert busy_selection["winner"] == quiet_selection["winner"]
    assert {c["status"] for c in busy_selection["candidates"].values()} <= {"selected", "lost"}  # none pushed out
    assert busy_metrics == quiet_metrics  # identical, not merely close
    pd.testing.assert_frame_equal(busy_table.drop(columns=LATENCY_COLUMNS), quiet_table.drop(columns=LATENCY_COLUMNS))
