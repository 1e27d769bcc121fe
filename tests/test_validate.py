"Validation stage and model registry: artifacts, reproducibility, tampering, crashes mid-promotion, bad input, CLI."
import json
import shutil
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from conftest import run_command, run_together
from mllifecycle.core import ArtifactError, ParamError, Run, open_run
from mllifecycle.data import DataParams, DataError, Schema, make_synthetic, prepare_data
from mllifecycle.registry import Registry, RegistryError, load_predictor, save_sklearn_model
from mllifecycle.train import TrainParams, train_stage
from mllifecycle.validate import (
    ValidateParams, ValidationError, classification_metrics, compare_models, regression_metrics, validate_stage)

CLI = shutil.which("mllifecycle")
FAST = dict(candidate_epochs=4, cv_folds=2, n_bootstrap=200, device="cpu")


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    "A 6,000-flight run, trained and validated once; its registry lives beside it."
    root = tmp_path_factory.mktemp("validated")
    run = open_run(root / "run", seed=0)
    prepare_data(run, DataParams(sample_rows=6000))
    train_stage(TrainParams(run_dir=str(run.path), epochs=4, n_trials=0, progress=False, device="cpu"))
    stage = validate_stage(ValidateParams(run_dir=str(run.path), registry_dir=str(root / "registry"), **FAST))
    return root, stage


@pytest.fixture
def registry(validated, tmp_path):
    "A private copy of the validated run's registry (tests may damage it)."
    root, _ = validated
    shutil.copytree(root / "registry", tmp_path / "registry")
    return Registry(tmp_path / "registry")


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
    again = validate_stage(ValidateParams(run_dir=str(stage.run.path), registry_dir=str(tmp_path / "registry"), **FAST))
    columns = ["model", "auroc", "ci_low", "ci_high", "difference", "train_auroc", "cv_auroc_mean"]
    pd.testing.assert_frame_equal(again.comparison[columns], stage.comparison[columns])
    assert again.registry["version"] == 1 and again.registry["alias"] == "champion"
    assert "already holds this model as version 1" in again.registry["reason"]
    registry = Registry(tmp_path / "registry")
    assert registry.versions() == [1] and registry.resolve("champion") == 1


def test_tampered_weights_are_refused(validated, registry):
    _, stage = validated
    for model in ("mlp", "hgb"):  # torch and scikit-learn families
        version = registry.register(stage.run, model, duplicate="keep")  # a version of its own to tamper with
        package = registry.package(version)
        model_file = package.file(registry.verify(version)["model_file"])
        model_file.chmod(0o644)
        data = bytearray(model_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model_file.write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match="does not match its checksum"):
            registry.load(version)
        with pytest.raises(ArtifactError, match="does not match its checksum"):
            registry.promote(version)
    assert registry.resolve("champion") == 1  # untouched


def test_untrusted_scikit_learn_types_are_refused(validated, tmp_path):
    import os

    from sklearn.preprocessing import FunctionTransformer

    _, stage = validated
    run = Run(tmp_path / "run")
    shutil.copytree(stage.run.path, run.path)
    evil = FunctionTransformer(func=os.getcwd).fit(np.zeros((2, 3)))
    save_sklearn_model(run, "evil", evil, "binary", [0, 1])
    with pytest.raises(ArtifactError, match="does not trust"):
        load_predictor(run, "evil")


CRASH = textwrap.dedent("""
    import os, sys
    from mllifecycle.registry import Registry
    from mllifecycle.core import Run
    real_replace, real_rename = os.replace, os.rename
    def crash_on(target, real):
        def call(src, dst):
            if str(dst).endswith(target):
                os._exit(9)  # a crash: no cleanup, no finally blocks
            return real(src, dst)
        return call
    registry = Registry(sys.argv[1])
    if sys.argv[2] == "promote":
        os.replace = crash_on("registry.json", real_replace)
        registry.promote(sys.argv[3])
    else:
        version = str(max(registry.versions()) + 1)
        os.rename = crash_on("/versions/" + version, real_rename)
        registry.register(Run(sys.argv[3]), "hgb", duplicate="keep")
""")


def test_a_crash_mid_promotion_leaves_the_old_champion(validated, registry):
    _, stage = validated
    version = registry.register(stage.run, "hgb", duplicate="keep")
    result = run_command([sys.executable, "-c", CRASH, registry.root, "promote", version])
    assert result.returncode == 9, result.stderr
    assert registry.resolve("champion") == 1  # the pointer never moved
    assert registry.load("champion").version == 1  # and still loads, verified
    assert registry.state()["history"][-1]["version"] == 1
    registry.promote(version)  # the lock was released by the crash; the next promotion works
    assert registry.resolve("champion") == version


def test_a_crash_mid_registration_leaves_no_half_version(validated, registry):
    _, stage = validated
    before = registry.versions()
    result = run_command([sys.executable, "-c", CRASH, registry.root, "register", stage.run.path])
    assert result.returncode == 9, result.stderr
    assert registry.versions() == before  # the staging folder is not a version
    assert list((registry.root / "versions").glob(".staging-*"))
    version = registry.register(stage.run, "hgb", duplicate="keep")
    assert version == before[-1] + 1 and not list((registry.root / "versions").glob(".staging-*"))
    registry.verify(version)


def test_concurrent_registrations_get_distinct_versions(validated, registry):
    _, stage = validated
    script = ("import sys; from mllifecycle.registry import Registry; from mllifecycle.core import Run\n"
              "print([Registry(sys.argv[1]).register(Run(sys.argv[2]), 'hgb', duplicate='keep') for _ in range(3)])")
    workers = run_together([[sys.executable, "-c", script, registry.root, stage.run.path]] * 2)
    assert [w.returncode for w in workers] == [0, 0], [w.stderr for w in workers]
    numbers = [n for w in workers for n in json.loads(w.stdout)]
    assert sorted(numbers) == list(range(2, 8))
    for version in numbers:
        registry.verify(version)


def test_promote_unknown_version_or_mismatched_schema(validated, registry):
    _, stage = validated
    with pytest.raises(RegistryError, match="unknown version 42"):
        registry.promote(42)
    with pytest.raises(RegistryError, match="no version has alias 'gold'"):
        registry.load("gold")
    schema = Schema.from_dict(stage.run.read_json("data/schema.json"))
    columns = {k: v for k, v in schema.columns.items() if k != "carrier"}
    with pytest.raises(RegistryError, match="column 'carrier' is missing"):
        registry.promote(1, schema=Schema(columns, schema.target, schema.task, schema.classes, schema.time_column))
    with pytest.raises(RegistryError, match="alias"):
        registry.promote(1, alias="Champion!")


def test_rollback_walks_back_through_champions(validated, registry):
    _, stage = validated
    v2, v3 = registry.register(stage.run, "hgb", duplicate="keep"), registry.register(stage.run, "linear", duplicate="keep")
    registry.promote(v2)
    registry.promote(v3)
    assert [registry.rollback()["version"] for _ in range(2)] == [v2, 1]
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback()
    assert registry.resolve("champion") == 1


@pytest.mark.parametrize("rows, message", [
    (lambda r: r.drop(columns=["carrier"]), "missing column(s) ['carrier']"),
    (lambda r: r.assign(distance=np.inf), "infinite"),
    (lambda r: r.assign(distance="far"), "distance"),
    (lambda r: [], "no rows"),
    (lambda r: "not rows", "not str"),
])
def test_predict_refuses_bad_rows(validated, rows, message):
    root, stage = validated
    champion = Registry(root / "registry").load("champion")
    test_rows = pd.read_parquet(stage.run.artifact("data/test.parquet")).head(5)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        champion.predict(rows(test_rows))


def test_predict_handles_unseen_categories_and_missing_values(validated):
    root, stage = validated
    champion = Registry(root / "registry").load("champion")
    rows = pd.read_parquet(stage.run.artifact("data/test.parquet")).head(5)
    out = champion.predict(rows.assign(carrier="ZZ", temp=np.nan))
    assert len(out) == 5 and np.isfinite(out.probabilities).all()


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


def cli(*args, cwd):
    return run_command([CLI, *args], cwd=cwd)


def test_registry_command_line(validated, registry, tmp_path):
    _, stage = validated
    version = registry.register(stage.run, "hgb", duplicate="keep")
    where = ["--registry", str(registry.root)]
    listed = cli("registry", "list", *where, cwd=tmp_path)
    assert listed.returncode == 0 and "champion" in listed.stdout and "hgb" in listed.stdout
    promoted = cli("registry", "promote", str(version), *where, "--check-run", str(stage.run.path), cwd=tmp_path)
    assert promoted.returncode == 0 and promoted.stdout.strip() == f"champion: version 1 → {version}"
    assert cli("registry", "rollback", *where, cwd=tmp_path).stdout.strip() == f"champion: version {version} → 1"
    as_json = json.loads(cli("registry", "list", *where, "--json", cwd=tmp_path).stdout)
    assert [row["version"] for row in as_json] == [1, version]
    for args, fragment in ((["promote", "99"], "unknown version 99"), (["rollback"], "no earlier version"),
                           (["list", "--registry", str(tmp_path / "none")], "no model registry")):
        result = cli("registry", *args, *([] if "--registry" in args else where), cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and fragment in lines[0], result.stderr


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
    stage = validate_stage(ValidateParams(run_dir=str(run.path), **FAST))
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
