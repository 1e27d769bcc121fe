"""Odd but valid inputs answered, bad ones refused with a 4xx or one line, and nothing left behind: the server's
edge cases, slow clients, killed jobs, duplicate versions and interrupted builds (issue 23's findings, each a test
that failed before its fix)."""
import datetime as dt
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import chromium, copy_registry, launch_chromium, mllifecycle, run_command

from mllifecycle.batch import input_columns, read_log
from mllifecycle.registry import Registry
from mllifecycle.serve import (
    RecordEncoder, RequestParser, ServeConfig, ServerProcess, create_app, example_record, record_type)

EDGE_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1969-12-31T23:59:59.999999-00:30"]


@pytest.fixture(scope="module")
def served(served_registry):
    registry = Registry(served_registry["root"])
    predictor = registry.load("champion")
    return {**served_registry, "registry": registry, "predictor": predictor, "columns": input_columns(predictor)}


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from fastapi.testclient import TestClient

    log_dir = tmp_path_factory.mktemp("hardening-log")
    config = ServeConfig(log_dir=str(log_dir), log_flush_s=0.2, reload_s=0)
    with TestClient(create_app(config, served["root"], token=""), raise_server_exceptions=False) as client:
        yield client, log_dir


def logged(log_dir: Path, request_ids: list[str]) -> pd.DataFrame:
    "The log rows of these requests, once the writer has put them on disk (bounded wait)."
    deadline = time.monotonic() + 60
    while True:
        rows = read_log(log_dir) if any(log_dir.glob("*.parquet")) else pd.DataFrame(columns=["request_id"])
        rows = rows[rows["request_id"].isin(request_ids)]
        if rows["request_id"].nunique() == len(set(request_ids)) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


# --- 1. a valid date-time near the range's ends ---------------------------------------------------------------------

def test_offset_datetimes_at_the_ends_of_the_range_are_answered_and_logged(client, served):
    http, log_dir = client
    base = example_record(served["predictor"])
    one = [http.post("/predict", json={**base, "timestamp": t}) for t in EDGE_TIMES]
    assert [r.status_code for r in one] == [200] * len(EDGE_TIMES), [r.text for r in one]
    listed = http.post("/predict", json=[{**base, "timestamp": t} for t in EDGE_TIMES])
    assert listed.status_code == 200 and len(listed.json()["predictions"]) == len(EDGE_TIMES)
    # the record path gives the frame path's answers (pandas reads these instants: year 0 and year 10000)
    records, _ = RequestParser(record_type(served["predictor"])).parse(
        json.dumps([{**base, "timestamp": t} for t in EDGE_TIMES]).encode())
    lean = RecordEncoder(served["predictor"])(records)
    framed = served["predictor"].features(pd.DataFrame([{**base, "timestamp": t} for t in EDGE_TIMES]))
    np.testing.assert_array_equal(lean.numeric, framed.numeric)
    rows = logged(log_dir, [r.json()["request_id"] for r in one])
    assert len(rows) == len(EDGE_TIMES)  # the log's writer took them too


# --- 2. predict --time-column on nanosecond and zoned timestamps -------------------------------------------------

@pytest.fixture(scope="module")
def scoring_input(served, tmp_path_factory):
    "The messy table's test rows as pandas writes them: nanosecond timestamps, one a sub-microsecond value."
    folder = tmp_path_factory.mktemp("scoring")
    frame = served["prepared"].splits["test"].reset_index(drop=True).copy()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_localize(None).astype("datetime64[ns]") + pd.to_timedelta(
        np.arange(len(frame)), unit="ns")
    frame.to_parquet(folder / "ns.parquet")
    return {"folder": folder, "frame": frame}


@pytest.mark.parametrize("zone", [None, "America/New_York"])
def test_predict_takes_nanosecond_and_zoned_time_columns(served, scoring_input, tmp_path, zone):
    frame = scoring_input["frame"].copy()
    if zone:
        frame["timestamp"] = frame["timestamp"].dt.tz_localize("UTC").dt.tz_convert(zone)
    frame.to_parquet(tmp_path / "in.parquet")
    result = mllifecycle("predict", "--registry", str(served["root"]), "--input", "in.parquet", "--output",
                         "out.parquet", "--inputs", "--time-column", "timestamp", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = read_log(tmp_path / "out.parquet")
    expected = pd.to_datetime(frame["timestamp"], utc=True).dt.floor("us")
    assert (log["timestamp"].reset_index(drop=True) == expected.astype("datetime64[us, UTC]")).all()


def test_predict_refuses_a_time_column_it_cannot_read(served, scoring_input, tmp_path):
    frame = scoring_input["frame"].assign(when=np.arange(len(scoring_input["frame"])))
    frame.to_parquet(tmp_path / "in.parquet")
    base = ["predict", "--registry", str(served["root"]), "--input", "in.parquet", "--output", "out.parquet",
            "--no-progress"]
    for column, fragment in (("when", "column 'when' holds numbers"), ("nope", "no column 'nope'")):
        result = mllifecycle(*base, "--time-column", column, cwd=tmp_path)
        assert result.returncode == 1 and fragment in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]  # no output, no temporary


# --- 3. a killed predict leaves nothing behind --------------------------------------------------------------------

def _big_input(served, path: Path, copies: int = 150) -> Path:
    frame = served["prepared"].splits["test"]
    pd.concat([frame] * copies, ignore_index=True).to_parquet(path, row_group_size=20_000)
    return path


def _wait_for(predicate, seconds: float = 120.0, what: str = "the condition"):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_predict_leaves_no_temporary_file_after_the_rerun(served, tmp_path, sig):
    source = _big_input(served, tmp_path / "big.parquet")
    script = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
              "from mllifecycle.cli import main; sys.exit(main())")
    command = [sys.executable, "-c", script, "predict", "--registry", str(served["root"]), "--input", str(source),
               "--output", str(tmp_path / "scored.parquet"), "--chunk-rows", "2000", "--no-progress"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: any(tmp_path.glob(".scored.parquet.*.tmp")) or process.poll() is not None,
                  what="the job's temporary file")
        assert process.poll() is None, "the job finished before it could be killed: give it more rows"
        process.send_signal(sig)
        try:
            status = process.wait(60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack, for the failure message
            time.sleep(2)
            process.kill()
            pytest.fail(f"the job did not exit within 60 s of {sig.name}: {process.communicate()[1][-6000:]}")
    finally:
        process.kill()
    if sig == signal.SIGTERM:  # clean-up ran: nothing left, exit 143 with one line
        assert status == 143 and "terminated" in process.stderr.read()
        assert not list(tmp_path.glob(".scored.parquet.*"))
    else:
        assert status == -signal.SIGKILL and list(tmp_path.glob(".scored.parquet.*.tmp"))  # what a kill leaves
    rerun = run_command(command)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(tmp_path.glob(".scored.parquet.*")), list(tmp_path.iterdir())
    assert len(pd.read_parquet(tmp_path / "scored.parquet")) == len(pd.read_parquet(source))


# --- 4. what the OpenAPI document allows, the server answers ------------------------------------------------------

def test_a_huge_finite_number_is_answered_and_metrics_are_documented_as_text(client, served):
    http, _ = client
    base = example_record(served["predictor"])
    for value in (-1.3e248, 1.7976931348623157e308, 5e-324):
        response = http.post("/predict", json={**base, "num_0": value})
        assert response.status_code == 200, response.text
        assert np.isfinite(list(response.json()["probabilities"].values())).all()
    document = http.get("/openapi.json").json()
    assert set(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert http.get("/metrics").headers["content-type"].startswith("text/plain")


def _value_strategy(column) -> st.SearchStrategy:
    "Every JSON value the saved schema allows for one input column (null where training saw it missing)."
    from mllifecycle.serve import MAX_TEXT

    if column.kind == "datetime":
        offsets = st.none() | st.integers(-1439, 1439).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
        value = st.builds(lambda t, zone: t.replace(tzinfo=zone).isoformat(), st.datetimes(), offsets)
    elif column.kind == "categorical":
        value = st.text(max_size=MAX_TEXT)
    elif column.dtype == "bool":
        value = st.booleans()
    else:
        value = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2 ** 63), 2 ** 63)
    return (st.none() | value) if column.missing_frac > 0 else value


@pytest.fixture(scope="module")
def record_strategy(served, client):
    "Hypothesis records from the saved schema: every value the OpenAPI document allows, keys optional."
    predictor = served["predictor"]
    columns = {name: predictor.schema.columns[name] for name in served["columns"]}
    keys = predictor.schema.names("id")
    document = client[0].get("/openapi.json").json()["components"]["schemas"]["Record"]
    assert set(document["required"]) == set(columns) and set(document["properties"]) == set(columns) | set(keys)
    key_values = st.none() | st.text(max_size=20) | st.integers(-(2 ** 63), 2 ** 63 - 1)
    return st.fixed_dictionaries({n: _value_strategy(c) for n, c in columns.items()},
                                 optional={k: key_values for k in keys})


def test_any_record_the_schema_allows_is_answered_and_anything_else_is_a_4xx(client, record_strategy, served):
    http, _ = client
    parser, records = RequestParser(record_type(served["predictor"])), record_strategy
    fields, keys = served["columns"], served["predictor"].schema.names("id")

    @given(record=records)
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def valid_is_answered(record):
        parsed, _ = parser.parse(json.dumps(record).encode())
        features = RecordEncoder(served["predictor"])(parsed)
        assert np.isfinite(features.numeric).all()
        response = http.post("/predict", json=record)
        assert response.status_code == 200, (record, response.text)

    # not a record: a wrong type for a field, a field missing, an unknown field, a non-finite number, not JSON
    wrong_value = st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2),
                            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    damage = st.one_of(
        st.tuples(st.just("type"), st.sampled_from([f for f in fields if f.startswith("num_")]), wrong_value),
        st.tuples(st.just("missing"), st.sampled_from(fields), st.none()),
        st.tuples(st.just("unknown"), st.text(min_size=1, max_size=8).filter(lambda n: n not in fields + keys),
                  st.integers()),
        st.tuples(st.just("raw"), st.just(""), st.sampled_from(["NaN", "Infinity", "-Infinity", "{", "[", "null"])))

    @given(record=records, change=damage)
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def invalid_is_a_4xx(record, change):
        how, field, value = change
        if how == "raw":  # JSON's non-standard numbers, or not a record at all
            without = json.dumps({k: v for k, v in record.items() if k != "num_0"})
            body = without[:-1] + f', "num_0": {value}}}' if value.endswith("Infinity") or value == "NaN" else value
            response = http.post("/predict", content=body.encode(), headers={"content-type": "application/json"})
        else:
            record = dict(record)
            if how == "missing":
                record.pop(field, None)
            else:
                record[field] = value
            response = http.post("/predict", json=record)
        assert 400 <= response.status_code < 500, (how, field, value, response.status_code, response.text)
        assert "error" in response.json()

    valid_is_answered()
    invalid_is_a_4xx()


# --- 5. slow clients: a read deadline and a keep-alive limit ---------------------------------------------------------

def test_slow_clients_get_408_and_their_connections_close(served):
    config = ServeConfig(log=False, reload_s=0, read_timeout_s=1.0, keep_alive_s=1.0)
    with ServerProcess(served["root"], config) as server:
        port, sockets = server.config.port, []
        body = json.dumps(example_record(served["predictor"])).encode()
        try:
            for i in range(60):  # headers dribbled, a body cut short, nothing at all: a third each
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                if i % 3 == 0:
                    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
                elif i % 3 == 1:
                    s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                              + f"content-length: {len(body)}\r\n\r\n".encode() + body[:10])
                sockets.append(s)
            dribbled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(6)]
            request = (b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                       + f"content-length: {len(body)}\r\n\r\n".encode() + body)

            def dribble(s, start):  # one byte every 0.2 s: never idle, never done (half in the headers, half the body)
                try:
                    s.sendall(request[:start])
                    for i in range(start, len(request)):
                        s.sendall(request[i:i + 1])
                        time.sleep(0.2)
                except OSError:  # the server closed it
                    pass

            starts = [0, 0, 0, request.index(b"\r\n\r\n") + 4, request.index(b"\r\n\r\n") + 4, 20]
            threads = [threading.Thread(target=dribble, args=(s, start), daemon=True)
                       for s, start in zip(dribbled, starts)]
            for thread in threads:
                thread.start()
            assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200  # others are still served
            answers = []
            for s in sockets + dribbled:  # each closed by the server (recv would time out after 10 s otherwise)
                received = b""
                try:
                    while chunk := s.recv(4096):
                        received += chunk
                except ConnectionResetError:  # a dribbler wrote after the 408: the reset may come first
                    received += b"(reset)"
                answers.append(received.split(b"\r\n", 1)[0])
            assert set(answers[:len(sockets)]) == {b"HTTP/1.1 408 Request Timeout"}, set(answers)
            assert set(answers[len(sockets):]) <= {b"HTTP/1.1 408 Request Timeout", b"(reset)"}, set(answers)
            sockets += dribbled
            with httpx.Client(base_url=server.url, timeout=30) as keep_alive:  # an idle keep-alive connection
                assert keep_alive.post("/predict", content=body,
                                       headers={"content-type": "application/json"}).status_code == 200
                time.sleep(2.5)  # past keep_alive_s: the server closed it; httpx reconnects
                assert keep_alive.get("/health").status_code == 200
        finally:
            for s in sockets:
                s.close()


# --- 6. X-Request-Id: the log's key stays unique -------------------------------------------------------------------

def test_request_ids_are_the_servers_own_and_a_bad_header_is_a_400(client, served):
    http, log_dir = client
    record = example_record(served["predictor"])
    same = [http.post("/predict", json=record, headers={"x-request-id": "order-17"}) for _ in range(2)]
    assert [r.status_code for r in same] == [200, 200]
    ids = [r.json()["request_id"] for r in same]
    assert ids[0] != ids[1] and [r.headers["x-request-id"] for r in same] == ids
    assert [r.headers["x-client-request-id"] for r in same] == ["order-17", "order-17"]
    assert len(logged(log_dir, ids)) == 2  # two log keys, one row each
    for bad in ("é-ü".encode(), b"x" * 65, b"two words"):
        response = http.post("/predict", json=record, headers={"x-request-id": bad})
        assert response.status_code == 400 and "X-Request-Id" in response.json()["error"]


# --- 7. /docs offline ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(chromium() is None, reason="no Chromium installed: `apt-get install -y chromium`")
def test_the_api_page_works_in_a_browser_with_no_request_leaving_the_machine(served):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    with ServerProcess(served["root"], ServeConfig(log=False, reload_s=0)) as server:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            outside, problems = [], []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server.url) else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{server.url}/docs", wait_until="load")
            assert "POST /predict" in page.content() and "num_0" in page.content()
            page.click("#send")
            page.wait_for_function("document.getElementById('answer').textContent.length > 0", timeout=30_000)
            answer = page.inner_text("#answer")
            browser.close()
    assert not outside and not problems, (outside, problems)
    assert answer.startswith("200 ") and '"model_version"' in answer, answer


# --- 8. serve: nothing announced before the model is checked; a warning for an open port -------------------------

def test_serve_refuses_a_corrupt_champion_before_saying_it_serves(served, tmp_path):
    registry = copy_registry(served["registry"], tmp_path)
    model = next((registry.package("champion").path / "models").rglob("model.skops"))
    model.chmod(0o644)
    model.write_bytes(model.read_bytes()[:-100] + b"\0" * 100)
    result = mllifecycle("serve", "--registry", str(registry.root), "--port", "0", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mllifecycle: error: ") and "checksum" in lines[0], lines
    assert "serving" not in result.stderr


# --- 9. the registry keeps one version of one model --------------------------------------------------------------

def test_the_same_model_from_two_runs_is_one_version(tmp_path, caplog):
    from sklearn.ensemble import HistGradientBoostingClassifier

    from mllifecycle.core import open_run
    from mllifecycle.data import DataParams, make_synthetic, prepare_data
    from mllifecycle.registry import categorical_mask, features_matrix, save_sklearn_model

    make_synthetic(1500, n_numeric=3, n_categorical=2, seed=4).to_csv(tmp_path / "data.csv", index=False)
    registry, versions = Registry(tmp_path / "registry"), []
    for name in ("first", "second"):  # two runs of the same data and seed, a second apart (the zips' times differ)
        run = open_run(tmp_path / name)
        prepared = prepare_data(run, DataParams(data_path=str(tmp_path / "data.csv"), target="target"))
        train = prepared.pipeline.transform(prepared.splits["train"])
        model = HistGradientBoostingClassifier(max_iter=10, categorical_features=categorical_mask(train),
                                               random_state=0).fit(features_matrix(train), train.target)
        save_sklearn_model(run, "hgb", model, "binary", prepared.pipeline.classes_)
        with caplog.at_level("WARNING", logger="mllifecycle.registry"):
            versions.append(registry.register(run, "hgb", threshold=0.5))
        time.sleep(1.1)
    assert versions == [1, 1] and registry.versions() == [1]
    assert "equals version 1; not registered again" in caplog.text
    assert registry.register(run, "hgb", threshold=0.4) == 2  # another threshold answers otherwise
    kept = registry.register(run, "hgb", threshold=0.4, duplicate="keep")
    assert kept == 3 and registry.verify(kept)["duplicate_of"] == 2


# --- 10. an interrupted docs build stops its notebook processes ----------------------------------------------------

def test_an_interrupted_docs_build_leaves_no_notebook_running(tmp_path):
    import psutil

    notebook = tmp_path / "slow-notebook.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": None, "id": "a",
                                               "metadata": {}, "outputs": [],
                                               "source": ["import time\n", "time.sleep(600)"]}],
                                    "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    root = Path(__file__).resolve().parent.parent
    build = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(root / 'docs')!r})
        from pathlib import Path
        import hooks
        hooks.CACHE = Path({str(tmp_path / 'cache')!r})
        hooks.executed_notebooks([Path({str(notebook)!r})], workers=1)""")])

    def notebook_processes():
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if str(notebook) in " ".join(process.info["cmdline"] or []) and process.pid != build.pid:
                    found.append(process)
            except psutil.Error:
                pass
        return found

    try:
        _wait_for(lambda: notebook_processes() or build.poll() is not None, what="the notebook's process")
        assert build.poll() is None
        build.send_signal(signal.SIGTERM)
        assert build.wait(60) != 0
        _wait_for(lambda: not notebook_processes(), seconds=30, what="the notebook processes' exit")
    finally:
        build.kill()
        for process in notebook_processes():
            process.kill()


# --- 11. SIGKILL loses at most the last log_flush_s seconds of answers ------------------------------------------------

def test_sigkill_loses_only_the_answers_of_the_last_flush_interval(served, tmp_path):
    flush_s = 0.5
    config = ServeConfig(log_dir=str(tmp_path / "log"), log_flush_s=flush_s, reload_s=0)
    answered = []  # (request id, when its answer arrived)
    with ServerProcess(served["root"], config) as server:
        record = example_record(served["predictor"])
        with httpx.Client(base_url=server.url, timeout=30) as http:
            started = time.monotonic()
            while time.monotonic() - started < 4.0:
                response = http.post("/predict", json=record)
                assert response.status_code == 200
                answered.append((response.json()["request_id"], time.monotonic()))
        server.process.kill()  # SIGKILL: no flush
        killed = time.monotonic()
        server.process.wait(30)
    logged_ids = set(read_log(tmp_path / "log")["request_id"]) if any((tmp_path / "log").glob("*.parquet")) else set()
    # every answer older than the bound (1.1 × flush, and a margin for a busy machine's writer thread) was on disk
    margin = 2.0
    old = [rid for rid, when in answered if killed - when > 1.1 * flush_s + margin]
    assert old and set(old) <= logged_ids, (len(old), len(set(old) - logged_ids))


# --- every command: bad input is one line and a non-zero exit; unusual valid input works ----------------------------

@pytest.fixture(scope="module")
def cli_world(served, tmp_path_factory):
    "Files for the command-line cases: a single-row file, an empty one, a corrupt one, a table that is not a log."
    folder = tmp_path_factory.mktemp("cli")
    test = served["prepared"].splits["test"].reset_index(drop=True)
    test.head(1).to_parquet(folder / "one-row.parquet")
    test.head(0).to_parquet(folder / "empty.parquet")
    test.drop(columns=["num_0"]).to_parquet(folder / "no-num_0.parquet")
    (folder / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (folder / "empty-folder").mkdir()
    (folder / "bad.csv").write_text('a,b\n1,"unterminated\n')
    (folder / "run-file").write_text("not a run directory")
    pd.DataFrame({"x": [1, 2]}).to_parquet(folder / "not-a-log.parquet")
    return folder


def one_line_failure(args: list[str], cwd: Path, capsys) -> str:
    "Run `mllifecycle ARGS` in this process; assert a non-zero exit and one readable line, and return it."
    from mllifecycle.cli import main

    capsys.readouterr()
    status = main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status not in (0, None), (args, err)
    assert len(lines) == 1 and lines[0].startswith("mllifecycle: error: "), (args, err)
    return lines[0]


BAD_COMMANDS = {  # name → (arguments, a fragment of the one line)
    "predict: missing input": (["predict", "--input", "nope.parquet", "--output", "o.parquet"], "does not exist"),
    "predict: empty folder": (["predict", "--input", "empty-folder", "--output", "o.parquet"], "holds no .parquet"),
    "predict: corrupt file": (["predict", "--input", "corrupt.parquet", "--output", "o.parquet"], "not a readable"),
    "predict: no rows": (["predict", "--input", "empty.parquet", "--output", "o.parquet"], "no rows to score"),
    "predict: a column missing": (["predict", "--input", "no-num_0.parquet", "--output", "o.parquet"], "num_0"),
    "predict: bad CSV": (["predict", "--input", "bad.csv", "--output", "o.parquet"], "cannot be read as CSV"),
    "predict: output over input": (["predict", "--input", "one-row.parquet", "--output", "one-row.parquet"],
                                   "would overwrite the input"),
    "predict: bad part": (["predict", "--input", "one-row.parquet", "--output", "o.parquet", "--part", "3/2"], "part"),
    "monitor: missing log": (["monitor", "--log", "nope"], "does not exist"),
    "monitor: not a log": (["monitor", "--log", "not-a-log.parquet"], "is not a prediction log"),
    "monitor: corrupt log": (["monitor", "--log", "corrupt.parquet"], "cannot be read"),
    "serve: unknown alias": (["serve", "--alias", "nope"], "no version has alias 'nope'"),
    "serve: bad port": (["serve", "--port", "70000"], "port must be at most 65535"),
    "serve: bad timeout": (["serve", "--read-timeout-s", "0"], "read_timeout_s"),
    "registry promote: unknown version": (["registry", "promote", "99"], "unknown version 99"),
    "registry promote: bad alias": (["registry", "promote", "1", "--alias", "Bad Alias"], "alias"),
    "report: missing run": (["report", "no-such-run"], "no-such-run"),
    "report: a file, not a run": (["report", "run-file"], "run-file"),
}


@pytest.mark.parametrize("case", list(BAD_COMMANDS))
def test_bad_input_to_every_command_is_one_line(case, served, cli_world, capsys, monkeypatch):
    args, fragment = BAD_COMMANDS[case]
    monkeypatch.chdir(cli_world)
    registry = [] if args[0] == "report" else ["--registry", str(served["root"])]
    command = 2 if args[0] == "registry" else 1
    quiet = ["--no-progress"] if args[0] == "predict" else []  # the progress bar shares stderr
    line = one_line_failure([*args[:command], *registry, *args[command:], *quiet], cli_world, capsys)
    assert fragment in line, line


def test_registry_commands_without_a_registry_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["registry", "list"], ["registry", "rollback"], ["serve"], ["predict", "--input", "x.parquet",
                                                                            "--output", "o.parquet"]):
        assert "no model registry at" in one_line_failure(args, tmp_path, capsys)


def test_unusual_valid_inputs_are_scored(served, cli_world, tmp_path, capsys, monkeypatch):
    "A single-row file, and a file with extra columns whose names hold spaces and unicode."
    from mllifecycle.cli import main

    monkeypatch.chdir(tmp_path)
    test = served["prepared"].splits["test"].reset_index(drop=True).head(50)
    test.assign(**{"a column with spaces": 1.0, "température °C": 2.0, "航班": "x"}).to_parquet("odd.parquet")
    for source in (str(cli_world / "one-row.parquet"), "odd.parquet"):
        assert main(["predict", "--registry", str(served["root"]), "--input", source, "--output", "out.parquet",
                     "--inputs", "--no-progress"]) == 0, capsys.readouterr().err
        assert len(read_log("out.parquet")) == len(pd.read_parquet(source))


def test_a_users_table_with_odd_column_names_and_zoned_times_runs_its_data_stage(tmp_path):
    "Column names with spaces and unicode, timezone-aware nanosecond timestamps: the data stage takes them."
    from mllifecycle.data import make_synthetic

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


def test_a_single_row_table_and_an_empty_one_are_one_line_from_run(tmp_path):
    from mllifecycle.data import make_synthetic

    make_synthetic(1, n_numeric=2, n_categorical=1, seed=1).to_csv(tmp_path / "one.csv", index=False)
    (tmp_path / "empty.csv").write_text("")
    for name, fragment in (("one.csv", "row"), ("empty.csv", "empty")):
        result = mllifecycle("run", "-p", "data_path", name, "-p", "target", "target", "--stages", "data", cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("mllifecycle: error: ") and fragment in line, result.stderr
