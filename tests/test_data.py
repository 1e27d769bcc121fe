"""The data stage: a bad parameter is a ParamError before any data is read; bad data is a DataError naming the
problem, and neither leaves a partial artifact; a Parquet dataset in parts gives what the same rows in one file give;
odd but valid tables go through the data stage from the command line."""
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest

from conftest import messy_table, mllifecycle
from mllifecycle.core import ParamError, open_run
from mllifecycle.data import DataParams, DataError, Schema, load_table, make_synthetic, prepare_data


def prepare(run_dir, **config):
    return prepare_data(open_run(run_dir, stage="data", seed=0), DataParams(**config))


def assert_no_data_artifacts(run_dir):
    leftovers = [p for p in run_dir.rglob("*") if p.is_file() and (p.suffix in (".parquet", ".tmp")
                                                                   or p.parent.name in ("data", "features"))]
    assert leftovers == []


@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    n = 400
    return pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n),
                         "city": rng.choice(["a", "b", "c"], n), "y": rng.integers(0, 2, n)})


def write(df, path):
    {".csv": lambda: df.to_csv(path, index=False), ".parquet": lambda: df.to_parquet(path),
     ".jsonl": lambda: df.to_json(path, orient="records", lines=True)}[path.suffix]()
    return path


CASES = {
    "empty file": (lambda tmp, df: {"data_path": _touch(tmp / "e.csv"), "target": "y"}, "is empty"),
    "header only": (lambda tmp, df: {"data_path": _text(tmp / "h.csv", "x,y\n"), "target": "y"}, "has no rows"),
    "corrupt parquet": (lambda tmp, df: {"data_path": _bytes(tmp / "c.parquet", b"PAR1garbage"), "target": "y"},
                        "cannot read"),
    "corrupt jsonl": (lambda tmp, df: {"data_path": _text(tmp / "c.jsonl", '{"x": 1, "y": 0}\n{"x": 2,\n'),
                                       "target": "y"}, "cannot read"),
    "unknown extension": (lambda tmp, df: {"data_path": _text(tmp / "d.xlsx", "x"), "target": "y"},
                          "unknown file type"),
    "target absent": (lambda tmp, df: {"data_path": str(write(df, tmp / "d.csv")), "target": "label"},
                      "target column 'label' not found"),
    "target all NaN": (lambda tmp, df: {"data_path": str(write(df.assign(y=np.nan), tmp / "d.csv")), "target": "y"},
                       "has no values"),
    "single class": (lambda tmp, df: {"data_path": str(write(df.assign(y=1), tmp / "d.parquet")), "target": "y"},
                     "single class"),
    "inf values": (lambda tmp, df: {"data_path": str(write(df.assign(x=df["x"].where(df.index != 7, np.inf)),
                                                           tmp / "d.parquet")), "target": "y"},
                   "column 'x' has 1 infinite value(s) (first at row 7)"),
    "sqlite file missing": (lambda tmp, df: {"data_path": f"sqlite:///{tmp}/none.db", "sql_query": "t", "target": "y"},
                            "does not exist"),
    "sqlite directory missing": (lambda tmp, df: {"data_path": "sqlite:////no/such/dir/x.db", "sql_query": "t",
                                                  "target": "y"}, "cannot connect"),
    "sql table missing": (lambda tmp, df: {"data_path": _sqlite(tmp, df), "sql_query": "select * from nope",
                                           "target": "y"}, "no such table"),
    "sql without query": (lambda tmp, df: {"data_path": _sqlite(tmp, df), "target": "y"}, "needs sql_query"),
    "bad database url": (lambda tmp, df: {"data_path": "nosuchdialect://host/db", "sql_query": "t", "target": "y"},
                         "invalid database URL"),
    "derived feature on a missing column": (lambda tmp, df: {"data_path": str(write(df, tmp / "d.csv")), "target": "y",
                                                             "derived": {"r": "x / w"}}, "use columns the cleaned data lacks"),
    "derived feature with code": (lambda tmp, df: {"data_path": str(write(df, tmp / "d.csv")), "target": "y",
                                                   "derived": {"r": "open('x').read()"}}, "may only use column names"),
}


def _touch(path):
    path.write_bytes(b"")
    return str(path)


def _text(path, text):
    path.write_text(text)
    return str(path)


def _bytes(path, data):
    path.write_bytes(data)
    return str(path)


def _sqlite(tmp, df):
    with sqlite3.connect(tmp / "d.db") as con:
        df.to_sql("flights", con, index=False)
    return f"sqlite:///{tmp}/d.db"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_data_error(case, tmp_path, frame):
    make_config, message = CASES[case]
    config = make_config(tmp_path, frame)
    run_dir = tmp_path / "run"
    with pytest.raises(DataError) as info:
        prepare(run_dir, **config)
    assert message in str(info.value), str(info.value)
    assert_no_data_artifacts(run_dir)


def test_type_contradicting_the_schema(tmp_path, frame):
    good = prepare(tmp_path / "run1", data_path=str(write(frame, tmp_path / "d.parquet")), target="y")
    schema_path = tmp_path / "run1" / "data" / "schema.json"
    bad = frame.astype({"x": object})
    bad.loc[3, "x"] = "seven"
    with pytest.raises(DataError, match=r"column 'x' should be numeric but has 1 value\(s\) that are not, e.g. 'seven'"):
        prepare(tmp_path / "run2", data_path=str(write(bad, tmp_path / "bad.csv")), target="y",
                schema_path=str(schema_path))
    assert_no_data_artifacts(tmp_path / "run2")
    assert Schema.load(schema_path).columns["x"].kind == "numeric" and good.schema.task == "classification"


def test_failure_leaves_existing_artifacts_intact(tmp_path, frame):
    run_dir = tmp_path / "run"
    prepare(run_dir, data_path=str(write(frame, tmp_path / "d.csv")), target="y")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(DataError):
        prepare(run_dir, data_path=str(write(frame.assign(y=np.nan), tmp_path / "bad.csv")), target="y")
    run = open_run(run_dir)
    for path, content in before.items():
        if path.name != "params.json":  # the failed attempt's parameters are recorded, nothing else changes
            assert path.read_bytes() == content, path
    run.artifact("data/train.parquet")  # checksums still verify
    assert not list(run_dir.rglob("*.tmp"))


PARAMETER_CASES = {
    "missing file": (lambda tmp: {"data_path": str(tmp / "nope.csv"), "target": "y"}, "data file not found"),
    "no target for user data": (lambda tmp: {"data_path": _text(tmp / "d.csv", "x,y\n1,0\n")}, "no target is given"),
    "sample_rows": (lambda tmp: {"sample_rows": 0}, "sample_rows must be an integer ≥ 1, got 0"),
    "split": (lambda tmp: {"split": "chronological"}, "unknown split 'chronological'"),
    "valid_frac": (lambda tmp: {"valid_frac": 1.5, "sample_rows": 500}, "valid_frac must be a number in [0, 1), got 1.5"),
    "cleaning typo": (lambda tmp: {"on_inf": "dorp"}, "on_inf"),
    "bad range": (lambda tmp: {"constraints": {"x": [5, 1]}}, "constraints"),
}


@pytest.mark.parametrize("case", list(PARAMETER_CASES))
def test_bad_parameters_are_refused_before_any_data_is_read(case, tmp_path):
    make_params, message = PARAMETER_CASES[case]
    with pytest.raises(ParamError) as info:
        DataParams(**make_params(tmp_path))
    assert message in str(info.value), str(info.value)
    assert not isinstance(info.value, DataError)  # the parameter is wrong, not the data


def test_load_table_rejects_directory_and_duplicate_columns(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_table(tmp_path)
    (tmp_path / "dup.csv").write_text("a,b\n1,2\n")
    df = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(DataError, match="duplicate column names"):
        load_table(df)


# --- a Parquet dataset in parts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table():
    return messy_table(1500)


def three_parts(frame, folder):
    folder.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_parquet(folder / f"part-{i}.parquet", index=False)
    return folder


def prepare_parts(tmp_path, name, data_path, **params):
    run = open_run(tmp_path / name)
    return run, prepare_data(run, DataParams(data_path=str(data_path), target="target", id_columns=["order_id"],
                                             **params))


@pytest.mark.parametrize("sample_rows", [1000, None])
def test_a_three_part_folder_gives_what_one_file_gives(table, tmp_path, sample_rows):
    table.to_parquet(tmp_path / "one.parquet", index=False)
    parts = three_parts(table, tmp_path / "parts")
    one_run, one = prepare_parts(tmp_path, "one", tmp_path / "one.parquet", sample_rows=sample_rows)
    parts_run, many = prepare_parts(tmp_path, "parts-run", parts, sample_rows=sample_rows)
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
    _, prepared = prepare_parts(tmp_path, "run", parts / "part-*.parquet", sample_rows=None)
    assert prepared.quality["read"]["files"] == 3 and sum(len(s) for s in prepared.splits.values()) <= 1500


def test_a_mixed_or_corrupt_part_is_a_clear_error_and_writes_nothing(table, tmp_path):
    parts = three_parts(table, tmp_path / "parts")
    table.iloc[:10].drop(columns="num_1").to_parquet(parts / "part-3.parquet", index=False)
    with pytest.raises(DataError, match="part-3.parquet has columns \\['num_1'\\].*mixed schemas"):
        prepare_parts(tmp_path, "run", parts)
    table.iloc[:10].astype({"num_1": str}).to_parquet(parts / "part-3.parquet", index=False)
    with pytest.raises(DataError, match="mixed schemas"):
        prepare_parts(tmp_path, "run", parts)
    (parts / "part-3.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read .*part-3.parquet as parquet"):
        prepare_parts(tmp_path, "run", parts)
    assert not list((tmp_path / "run").rglob("*.parquet"))
    with pytest.raises(ParamError, match="data file not found"):
        DataParams(data_path=str(tmp_path / "nowhere-*.parquet"), target="target")


# --- odd tables through `mllifecycle run --stages data` ----------------------------------------------------------

@pytest.mark.slow
def test_a_users_table_with_odd_column_names_and_zoned_times_runs_its_data_stage(tmp_path):
    "Column names with spaces and unicode, timezone-aware nanosecond timestamps: the data stage takes them."
    frame = make_synthetic(1200, n_numeric=3, n_categorical=2, seed=8).rename(
        columns={"num_0": "air temp °C", "num_1": "wind speed", "cat_0": "航空会社", "target": "delayed?"})
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.tz_localize("America/New_York",
                                                                             nonexistent="shift_forward",
                                                                             ambiguous="NaT").astype(
        "datetime64[ns, America/New_York]")
    frame.to_parquet(tmp_path / "odd table.parquet")
    result = mllifecycle("run", "-p", "data_path", "odd table.parquet", "-p", "target", "delayed?", "--stages", "data",
                         "--run-dir", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    schema = json.loads((tmp_path / "run" / "data" / "schema.json").read_text())
    names = {c["name"] for c in schema["columns"]} if isinstance(schema["columns"], list) else set(schema["columns"])
    assert {"air temp °C", "wind speed", "航空会社"} <= names


@pytest.mark.slow
def test_a_single_row_table_and_an_empty_one_are_one_line_from_run(tmp_path):
    make_synthetic(1, n_numeric=2, n_categorical=1, seed=1).to_csv(tmp_path / "one.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    for name, fragment in (("one.csv", "row"), ("empty.csv", "empty")):
        result = mllifecycle("run", "-p", "data_path", name, "-p", "target", "target", "--stages", "data", cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("mllifecycle: error: ") and fragment in line, result.stderr
