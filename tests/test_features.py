"The feature pipeline: same numbers in training, batch and serving; scikit-learn parity; reproducibility."
import json

import numpy as np
import pandas as pd
import pytest

from mllifecycle.core import open_run
from mllifecycle.data import (DataParams, DataError, FeaturePipeline, MISSING, UNKNOWN, infer_schema, load_prepared,
                              make_synthetic, prepare_data)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    run = open_run(tmp_path_factory.mktemp("run"), stage="data", seed=0)
    return run, prepare_data(run, DataParams(sample_rows=5000))


def test_no_train_serve_skew(prepared):
    "Features from the saved artifacts (as batch and serving load them) equal those computed in training."
    run, result = prepared
    loaded = load_prepared(run)
    in_memory = result.pipeline.transform(result.splits["valid"])
    from_disk = loaded.pipeline.transform(loaded.splits["valid"])
    np.testing.assert_array_equal(in_memory.numeric, from_disk.numeric)
    np.testing.assert_array_equal(in_memory.categorical, from_disk.categorical)
    # one record at a time, as JSON (what an HTTP request carries), gives the same row
    records = json.loads(loaded.splits["valid"].head(20).to_json(orient="records", date_format="iso"))
    for i, record in enumerate(records):
        row = loaded.pipeline.transform(pd.DataFrame([record]))
        np.testing.assert_allclose(row.numeric[0], in_memory.numeric[i], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(row.categorical[0], in_memory.categorical[i])


def test_numeric_output_matches_standard_scaler():
    from sklearn.preprocessing import StandardScaler

    df = make_synthetic(20_000, n_numeric=6, n_categorical=2, seed=5)
    numeric = [f"num_{j}" for j in range(6)]
    pipeline = FeaturePipeline(numeric=numeric, categorical=["cat_0", "cat_1"]).fit(df)
    ours = pipeline.transform(df).numeric
    reference = StandardScaler().fit(df[numeric]).transform(df[numeric])
    assert np.abs(ours - reference).max() < 1e-6


def test_unknown_and_missing_categories():
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "c": ["a", "b", "a", "b"]})
    pipeline = FeaturePipeline(numeric=["x"], categorical=["c"]).fit(train)
    codes = pipeline.transform(pd.DataFrame({"x": [1.0, np.nan, 2.0], "c": ["zzz", None, " A "]})).categorical[:, 0]
    assert codes.tolist() == [UNKNOWN, MISSING, pipeline.vocabularies_["c"].index("a") + 2]


def test_pipeline_rejects_mismatched_data():
    pipeline = FeaturePipeline(numeric=["x"], categorical=["c"]).fit(pd.DataFrame({"x": [1.0, 2.0], "c": ["a", "b"]}))
    with pytest.raises(DataError, match=r"lacks column\(s\) \['c'\]"):
        pipeline.transform(pd.DataFrame({"x": [1.0]}))
    with pytest.raises(DataError, match="should be numeric"):
        pipeline.transform(pd.DataFrame({"x": ["ten"], "c": ["a"]}))
    with pytest.raises(DataError, match="not fitted"):
        FeaturePipeline(numeric=["x"]).transform(pd.DataFrame({"x": [1.0]}))
    with pytest.raises(DataError, match="not a saved feature pipeline"):
        FeaturePipeline.from_dict({"format": "pickle"})


def test_same_seed_same_artifacts(tmp_path):
    "Same parameters and seed give byte-identical data artifacts."
    def artifacts(run_dir):
        prepare_data(open_run(run_dir, stage="data", seed=4), DataParams(sample_rows=3000, seed=4))
        return {p.name: p.read_bytes() for p in (run_dir / "data").glob("*.parquet")} | {
            "pipeline": (run_dir / "features" / "pipeline.json").read_bytes()}
    assert artifacts(tmp_path / "a") == artifacts(tmp_path / "b")


def test_regression_task_is_inferred(tmp_path):
    df = make_synthetic(2000, task="regression", seed=2)
    assert infer_schema(df, "target").task == "regression"
    result = prepare_data(open_run(tmp_path, stage="data"), DataParams(data_path=_csv(df, tmp_path), target="target"))
    assert result.schema.task == "regression" and result.pipeline.transform(result.splits["test"]).target.dtype == np.float32


def _csv(df, folder):
    path = folder / "data.csv"
    df.to_csv(path, index=False)
    return str(path)


def test_a_table_without_numeric_features():
    "Only categorical columns: the numeric block is empty but keeps one row per input row."
    frame = pd.DataFrame({"c": ["a", "b", "a", "c"] * 5, "y": [0, 1] * 10})
    features = FeaturePipeline(categorical=["c"], target="y").fit(frame).transform(frame)
    assert features.numeric.shape == (20, 0) and features.categorical.shape == (20, 1) and len(features) == 20
