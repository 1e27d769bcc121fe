"The validation stage's baselines are trained properly at any size: the linear one matches scikit-learn's."

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import OneHotEncoder

from tables import binary_mixed, multiclass, regression

from mllifecycle.core import open_run
from mllifecycle.data import DataParams, prepare_data
from mllifecycle.train import task_kind
from mllifecycle.validate import CANDIDATES, evaluate, fit_candidate

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
