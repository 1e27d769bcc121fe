"""Batch inference: the same answers as `Predictor.predict`, in parts that add up, and a clear error with no output
file on a corrupt or bad input."""
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import run_command
from mllifecycle.batch import log_inputs, predict_file, read_log
from mllifecycle.data import DataError
from mllifecycle.registry import Registry


@pytest.fixture(scope="module")
def scoring(served_registry):
    registry = Registry(served_registry["root"])
    frame = pd.concat([served_registry["prepared"].splits[s] for s in ("test", "stream")], ignore_index=True)
    return registry, frame


@pytest.mark.parametrize("ref", ["champion", 2])  # HGB and torch
def test_parquet_and_csv_give_predictors_answers(scoring, tmp_path, ref):
    registry, frame = scoring
    predictor = registry.load(ref)
    frame.to_parquet(tmp_path / "in.parquet", row_group_size=97)
    frame.to_csv(tmp_path / "in.csv", index=False)
    expected = predictor.predict(frame)
    for source in ("in.parquet", "in.csv"):
        done = predict_file(predictor, tmp_path / source, tmp_path / f"{source}.out.parquet", chunk_rows=50,
                            inputs=True, progress=False)
        out = read_log(done["output"])
        assert done["rows"] == len(frame) == len(out)
        assert list(out["prediction"]) == list(expected.predictions)
        np.testing.assert_allclose(out["probability_1"], expected.probabilities[:, 1], rtol=1e-6)
        assert (out["key.order_id"] == frame["order_id"].astype(str)).all()  # keys kept, as text
        assert (out["row"] == np.arange(len(frame))).all() and (out["model_version"] == predictor.version).all()
        pd.testing.assert_series_equal(log_inputs(out)["cat_0"], frame["cat_0"].astype(object), check_names=False,
                                       check_dtype=False)


def test_parts_split_a_folder_of_parquet_files_exactly(scoring, tmp_path):
    registry, frame = scoring
    predictor = registry.load("champion")
    (tmp_path / "parts").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_parquet(tmp_path / "parts" / f"part-{i}.parquet", row_group_size=100)
    outputs = [read_log(predict_file(predictor, tmp_path / "parts", tmp_path / f"out-{i}.parquet", part=f"{i}/4",
                                     progress=False)["output"]) for i in (1, 2, 3, 4)]
    rows = np.sort(np.concatenate([o["row"].to_numpy() for o in outputs]))
    np.testing.assert_array_equal(rows, np.arange(len(frame)))  # every row exactly once
    merged = pd.concat(outputs).sort_values("row")
    np.testing.assert_allclose(merged["probability_1"], predictor.predict(frame).probabilities[:, 1], rtol=1e-6)


def test_a_truncated_parquet_file_is_a_clear_error_and_no_output(scoring, tmp_path):
    registry, frame = scoring
    frame.to_parquet(tmp_path / "in.parquet")
    data = (tmp_path / "in.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.parquet is not a readable Parquet file"):
        predict_file(registry.load("champion"), tmp_path / "cut.parquet", tmp_path / "out.parquet", progress=False)
    assert not (tmp_path / "out.parquet").exists() and not list(tmp_path.glob(".out.parquet*"))


def test_a_csv_with_a_bad_row_names_the_rows_and_leaves_no_output(scoring, tmp_path):
    registry, frame = scoring
    frame.head(300).to_csv(tmp_path / "in.csv", index=False)
    lines = (tmp_path / "in.csv").read_text().splitlines()
    lines[120] = lines[120] + ",an,extra,field"  # a row with too many fields
    (tmp_path / "ragged.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="ragged.csv cannot be read as CSV.*line 121"):
        predict_file(registry.load("champion"), tmp_path / "ragged.csv", tmp_path / "out.parquet", chunk_rows=50,
                     progress=False)
    bad = frame.head(300).astype({"num_1": str})
    bad.loc[bad.index[170], "num_1"] = "twelve"
    bad.to_csv(tmp_path / "typo.csv", index=False)
    with pytest.raises(DataError, match=r"rows 150–199 of typo.csv.*'num_1'.*'twelve'"):
        predict_file(registry.load("champion"), tmp_path / "typo.csv", tmp_path / "out.parquet", chunk_rows=50,
                     progress=False)
    (tmp_path / "old.parquet").write_bytes(b"an existing output")
    with pytest.raises(DataError):
        predict_file(registry.load("champion"), tmp_path / "typo.csv", tmp_path / "old.parquet", chunk_rows=50,
                     progress=False)
    assert (tmp_path / "old.parquet").read_bytes() == b"an existing output"  # never corrupted
    assert not list(tmp_path.glob(".*.tmp"))


def test_predict_command(scoring, tmp_path):
    registry, frame = scoring
    frame.head(100).to_parquet(tmp_path / "in.parquet")

    def mllifecycle(*args):
        return run_command([sys.executable, "-c", "import sys; from mllifecycle.cli import main; sys.exit(main())",
                            *args], cwd=tmp_path)

    ok = mllifecycle("predict", "--registry", str(registry.root), "--input", "in.parquet", "--output", "out.parquet",
                     "--no-progress")
    assert ok.returncode == 0, ok.stderr
    assert "100 rows" in ok.stdout and len(pq.read_table(tmp_path / "out.parquet")) == 100
    for args, fragment in ((["--input", "nowhere.parquet"], "does not exist"),
                           (["--input", "in.parquet", "--part", "5/4"], "between 1 and N"),
                           (["--input", "in.parquet", "--alias", "nobody"], "no version has alias 'nobody'")):
        bad = mllifecycle("predict", "--registry", str(registry.root), "--output", "x.parquet", *args)
        assert bad.returncode == 1 and fragment in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    missing = mllifecycle("serve", "--registry", str(tmp_path / "no-registry"))
    assert missing.returncode == 1 and "no model registry" in missing.stderr
