"The registry's public API on a small run: versions, references, aliases, promotion rules, listing, loading."
import json
import stat

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from mllifecycle.core import ArtifactError, open_run
from mllifecycle.data import DataParams, make_synthetic, prepare_data
from mllifecycle.registry import (
    Registry, RegistryError, RegistryReader, categorical_mask, features_matrix, save_sklearn_model)


def sklearn_run(root, task="classification", seed=0):
    "A prepared synthetic run with two HistGradientBoosting models, `a` and `b` (returned too, by name)."
    frame = make_synthetic(600, n_numeric=3, n_categorical=1, task=task, seed=seed)
    frame.to_csv(root / "data.csv", index=False)
    run = open_run(root / "run")
    prepared = prepare_data(run, DataParams(data_path=str(root / "data.csv"), target="target", task=task))
    train = prepared.pipeline.transform(prepared.splits["train"])
    classes = prepared.pipeline.classes_ if task == "classification" else None
    Model = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    models = {}
    for name, iterations in (("a", 5), ("b", 10)):
        model = Model(max_iter=iterations, categorical_features=categorical_mask(train), random_state=0)
        models[name] = model.fit(features_matrix(train), train.target)
        save_sklearn_model(run, name, models[name], "binary" if classes else "regression", classes)
    return run, prepared, models


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return sklearn_run(tmp_path_factory.mktemp("source"))


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "registry")


def test_register_makes_immutable_numbered_versions(source, registry):
    run, *_ = source
    assert registry.versions() == [] and registry.register(run, "a") == 1 and registry.register(run, "b") == 2
    assert registry.versions() == [1, 2]
    manifest = registry.verify(2)
    assert (manifest["name"], manifest["family"], manifest["kind"], manifest["target"], manifest["task"]) == \
        ("b", "sklearn", "binary", "target", "classification")
    assert manifest["dataset"] == run.read_json("data/dataset.json")
    for path in registry.package(2).path.rglob("*"):
        if path.is_file():
            assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path
    assert not list((registry.root / "versions").glob(".staging-*"))


def test_references_resolve_and_unknown_ones_say_what_exists(source, registry):
    run, *_ = source
    registry.register(run, "a")
    registry.promote(1)
    assert [registry.resolve(ref) for ref in (1, "1", "v1", "champion")] == [1, 1, 1, 1]
    with pytest.raises(RegistryError, match=r"unknown version 7 .*\(versions: 1\)"):
        registry.resolve(7)
    with pytest.raises(RegistryError, match=r"no version has alias 'challenger' .*\(aliases: champion → 1\)"):
        registry.resolve("challenger")


def test_promote_and_rollback_walk_the_alias_history(source, registry):
    run, *_ = source
    for name in ("a", "b", "a"):
        registry.register(run, name, duplicate="keep")  # version 3 is version 1 again, on purpose
    registry.promote(2, alias="challenger")
    registry.promote(1, reason="first")
    registry.promote(2)  # the challenger becomes champion and stops challenging
    assert registry.state()["aliases"] == {"champion": 2}
    registry.promote(3)
    assert registry.aliases.stack() == [1, 2, 3]
    assert registry.rollback(reason="worse live")["version"] == 2
    assert registry.rollback()["version"] == 1
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        registry.rollback()
    history = registry.state()["history"]
    assert [(h["action"], h["alias"], h["version"]) for h in history][-2:] == [("rollback", "champion", 2),
                                                                              ("rollback", "champion", 1)]
    assert history[1]["reason"] == "first"
    with pytest.raises(RegistryError, match="alias 'Champion!' must be lower-case"):
        registry.promote(1, alias="Champion!")


def test_list_shows_each_version_with_its_aliases(source, registry):
    run, *_ = source
    registry.register(run, "a", notes={"metric": {"name": "auroc", "value": 0.7}})
    registry.register(run, "b")
    registry.promote(1)
    table = registry.list()
    assert list(table["version"]) == [1, 2] and list(table["name"]) == ["a", "b"]
    assert list(table["aliases"]) == ["champion", ""] and table.loc[0, "value"] == 0.7
    assert table.loc[0, "dataset"] == "data.csv"


def test_loaded_versions_predict_like_the_estimator(source, registry):
    run, prepared, models = source
    registry.register(run, "b", threshold=0.3)
    predictor = registry.load(1)
    rows = prepared.splits["test"].head(8)
    out = predictor.predict(rows)
    direct = models["b"].predict_proba(features_matrix(prepared.pipeline.transform(rows)))  # the estimator itself
    assert out.probabilities.shape == (8, 2) and np.allclose(out.probabilities, direct, rtol=0, atol=1e-12)
    assert not np.allclose(out.probabilities, models["a"].predict_proba(  # and not any model of these rows
        features_matrix(prepared.pipeline.transform(rows))))
    expected = np.asarray(prepared.pipeline.classes_, dtype=object)[(out.probabilities[:, 1] >= 0.3).astype(int)]
    assert list(out.predictions) == list(expected)
    records = out.to_records()
    assert json.loads(json.dumps(records)) == records  # plain JSON, one dict per row
    assert list(records[0]) == ["prediction", *(f"probability_{c}" for c in prepared.pipeline.classes_)]
    assert [r["prediction"] for r in records] == list(out.to_frame()["prediction"])


def test_a_model_of_other_data_is_refused_unless_forced(source, registry, tmp_path):
    run, *_ = source
    registry.register(run, "a")
    registry.promote(1)
    prices, *_ = sklearn_run(tmp_path, task="regression", seed=1)
    registry.register(prices, "a")
    assert registry.mismatch(2) and registry.mismatch(1) == []
    with pytest.raises(RegistryError, match="is a model of other data than the champion"):
        registry.promote(2)
    assert registry.resolve("champion") == 1
    entry = registry.promote(2, force=True, reason="now serves prices")
    assert any(line.startswith("target ") for line in entry["forced_over"])


def test_a_changed_file_is_refused_everywhere(source, registry):
    run, *_ = source
    registry.register(run, "a")
    metrics = registry.package(1).file("metrics.json")
    metrics.chmod(0o644)
    metrics.write_text('{"auroc": 0.99}')
    for action in (lambda: registry.verify(1), lambda: registry.promote(1)):
        with pytest.raises(ArtifactError, match="metrics.json.*does not match its checksum"):
            action()


def test_a_reader_never_writes(tmp_path):
    reader = RegistryReader(tmp_path / "nowhere")
    assert reader.versions() == [] and len(reader.list()) == 0
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegistryError, match="exists and is not a folder"):
        RegistryReader(tmp_path / "file")
