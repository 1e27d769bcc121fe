"""Bad input to the data stage: a bad parameter is a ParamError before any data is read; bad data is a DataError
naming the problem; neither leaves a partial artifact."""
import sqlite3

import numpy as np
import pandas as pd
import pytest

from mllifecycle.core import ParamError, open_run
from mllifecycle.data import DataParams, DataError, Schema, load_table, prepare_data


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
