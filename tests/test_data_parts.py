"""The data stage on a Parquet dataset in parts: the same schema, quality report and splits as the same rows in one
file, what each step read recorded, and a clear error for a mixed, corrupt or missing part."""
import numpy as np
import pandas as pd
import pytest

from conftest import messy_table
from mllifecycle.core import ParamError, open_run
from mllifecycle.data import DataError, DataParams, prepare_data


@pytest.fixture(scope="module")
def table():
    return messy_table(1500)


def three_parts(frame, folder):
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_parquet(folder / f"part-{i}.parquet", index=False)
    return folder


def prepare(tmp_path, name, data_path, **params):
    run = open_run(tmp_path / name)
    return run, prepare_data(run, DataParams(data_path=str(data_path), target="target", id_columns=["order_id"],
                                             **params))


@pytest.mark.parametrize("sample_rows", [1000, None])
def test_a_three_part_folder_gives_what_one_file_gives(table, tmp_path, sample_rows):
    table.to_parquet(tmp_path / "one.parquet", index=False)
    parts = three_parts(table, tmp_path / "parts")
    one_run, one = prepare(tmp_path, "one", tmp_path / "one.parquet", sample_rows=sample_rows)
    parts_run, many = prepare(tmp_path, "parts-run", parts, sample_rows=sample_rows)
    assert one.schema.to_dict() == many.schema.to_dict()
    different = {"source"}  # where the rows came from
    assert {k: v for k, v in one.quality.items() if k not in different | {"read"}} == \
        {k: v for k, v in many.quality.items() if k not in different | {"read"}}
    for name in one.splits:
        pd.testing.assert_frame_equal(one.splits[name], many.splits[name])
    read = many.quality["read"]
    assert (read["files"], read["rows_in_source"], read["rows_profiled"]) == (3, 1500, 1500)
    assert read["rows_kept"] == (sample_rows or 1500)
    assert read["columns"]["num_0"]["missing"] == int(table["num_0"].isna().sum())  # every row profiled
    assert read["columns"] == one.quality["read"]["columns"]
    assert parts_run.read_json("data/quality.json")["read"]["rows_profiled"] == 1500


def test_a_glob_names_the_parts(table, tmp_path):
    parts = three_parts(table, tmp_path / "parts")
    _, prepared = prepare(tmp_path, "run", parts / "part-*.parquet", sample_rows=None)
    assert prepared.quality["read"]["files"] == 3 and sum(len(s) for s in prepared.splits.values()) <= 1500


def test_a_mixed_or_corrupt_part_is_a_clear_error_and_writes_nothing(table, tmp_path):
    parts = three_parts(table, tmp_path / "parts")
    table.iloc[:10].drop(columns="num_1").to_parquet(parts / "part-3.parquet", index=False)
    with pytest.raises(DataError, match="part-3.parquet has columns \\['num_1'\\].*mixed schemas"):
        prepare(tmp_path, "run", parts)
    table.iloc[:10].astype({"num_1": str}).to_parquet(parts / "part-3.parquet", index=False)
    with pytest.raises(DataError, match="mixed schemas"):
        prepare(tmp_path, "run", parts)
    (parts / "part-3.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read .*part-3.parquet as parquet"):
        prepare(tmp_path, "run", parts)
    assert not list((tmp_path / "run").rglob("*.parquet"))
    with pytest.raises(ParamError, match="data file not found"):
        DataParams(data_path=str(tmp_path / "nowhere-*.parquet"), target="target")
