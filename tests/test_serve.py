"""The prediction server: the record path equals the frame path; bad requests get a 4xx naming the problem and any
record the schema allows is answered; the server keeps its promises under concurrency, hot reload, shadow scoring,
slow clients, SIGTERM and SIGKILL; its API page works offline; a corrupt champion is refused before it serves."""
import asyncio
import datetime as dt
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import chromium, copy_registry, launch_chromium, mllifecycle, wait_for
from mllifecycle.batch import input_columns, read_log
from mllifecycle.registry import Registry
from mllifecycle.serve import (
    MAX_TEXT, RecordEncoder, RequestParser, ServeConfig, ServerProcess, create_app, example_record, record_type)

TOKEN = "s3cret-token"


def as_json_records(frame: pd.DataFrame, columns: list[str]) -> list[dict]:
    "Rows as a client sends them: the raw columns as JSON (ISO timestamps, null for missing)."
    return json.loads(frame[columns].to_json(orient="records", date_format="iso", date_unit="us"))


@pytest.fixture(scope="module")
def served(served_registry):
    registry = Registry(served_registry["root"])
    predictor = registry.load("champion")
    test = served_registry["prepared"].splits["test"].reset_index(drop=True)
    return {**served_registry, "registry": registry, "predictor": predictor, "test": test,
            "columns": input_columns(predictor)}


# --- the record path gives the frame path's features ---------------------------------------------------------------

@pytest.mark.parametrize("ref", ["champion", "challenger"])  # HGB and torch
def test_record_path_equals_frame_path(served, ref):
    predictor = served["registry"].load(ref)
    frame = served["test"].copy()
    frame.loc[frame.index[:5], "cat_0"] = "never seen in training"  # unseen category
    frame.loc[frame.index[5:10], "cat_1"] = None  # missing category
    frame.loc[frame.index[10:15], "num_0"] = np.nan  # missing numbers
    frame.loc[frame.index[15:20], "cat_0"] = "  " + frame["cat_0"].iloc[15:20].str.upper() + " "  # case and space
    frame.loc[frame.index[20:25], "timestamp"] = "2030-07-04T12:30:00+02:00"  # another zone, another year
    records, _ = RequestParser(record_type(predictor), max_records=10_000).parse(
        json.dumps(as_json_records(frame, served["columns"])).encode())
    lean = RecordEncoder(predictor)(records)
    framed = predictor.features(pd.DataFrame(as_json_records(frame, served["columns"])))
    np.testing.assert_array_equal(lean.numeric, framed.numeric)
    np.testing.assert_array_equal(lean.categorical, framed.categorical)
    assert lean.numeric_names == framed.numeric_names and lean.cardinalities == framed.cardinalities
    assert (lean.categorical[:5, 0] == 0).all() and (lean.categorical[5:10, 1] == 1).all()  # unknown, missing
    expected = predictor.predict(frame)
    answers = RecordEncoder(predictor).predict(records)
    assert list(answers.predictions) == list(expected.predictions)
    np.testing.assert_allclose(answers.probabilities, expected.probabilities, rtol=1e-6)


# --- bad requests: each a 4xx that names the problem ---------------------------------------------------------------

@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    config = ServeConfig(max_records=50, max_queue=200, max_body_bytes=20_000, log=False, reload_s=0)
    with TestClient(create_app(config, served["root"], token=TOKEN)) as client:
        yield client


def _bad_requests(record: dict) -> dict[str, tuple]:
    "name → (body bytes, headers, expected status, a fragment the error must contain)."
    j, auth = "application/json", {"authorization": f"Bearer {TOKEN}"}

    def body(value):
        return json.dumps(value).encode()

    def with_(**changes):
        return body({**record, **changes})

    without_num_0 = {k: v for k, v in record.items() if k != "num_0"}
    cases = {
        "malformed JSON": (b'{"num_0": ', j, 422, "Invalid JSON"),
        "truncated list": (b'[{"num_0": 1', j, 422, "Invalid JSON"),
        "not JSON at all": (b"hello", j, 422, "Invalid JSON"),
        "empty body": (b"", j, 422, "Invalid JSON"),
        "text/plain content type": (body(record), "text/plain", 415, "application/json"),
        "form content type": (b"num_0=1", "application/x-www-form-urlencoded", 415, "application/json"),
        "no content type": (body(record), None, 415, "application/json"),
        "a JSON string": (b'"abc"', j, 422, "should be an object"),
        "a JSON number": (b"42", j, 422, "should be an object"),
        "JSON null": (b"null", j, 422, "should be an object"),
        "a list of numbers": (b"[1, 2]", j, 422, "record 0"),
        "a list with a non-record": (body([record, 5]), j, 422, "record 1"),
        "a nested list": (body([[record]]), j, 422, "record 0"),
        "missing column": (body(without_num_0), j, 422, "'num_0': Field required"),
        "an empty record": (b"{}", j, 422, "Field required"),
        "unknown field": (with_(surprise=1), j, 422, "'surprise': Extra inputs"),
        "the target sent": (with_(target=1), j, 422, "'target': Extra inputs"),
        "number as a string": (with_(num_1="1.5"), j, 422, "'num_1': Input should be a valid number"),
        "number as a boolean": (with_(num_1=True), j, 422, "'num_1'"),
        "text as a number": (with_(cat_0=5), j, 422, "'cat_0': Input should be a valid string"),
        "boolean as text": (with_(flag="yes"), j, 422, "'flag'"),
        "timestamp as a number": (with_(timestamp=1700000000), j, 422, "'timestamp'"),
        "timestamp unparseable": (with_(timestamp="yesterday"), j, 422, "'timestamp'"),
        "NaN literal": (body(record)[:-1] + b', "num_1": NaN}', j, 422, "'num_1'"),
        "Infinity literal": (body(without_num_0)[:-1] + b', "num_0": Infinity}', j, 422, "'num_0'"),
        "-Infinity literal": (body(without_num_0)[:-1] + b', "num_0": -Infinity}', j, 422, "'num_0'"),
        "overflowing number": (body(without_num_0)[:-1] + b', "num_0": 1e999}', j, 422, "'num_0'"),
        "NaN as a string": (with_(num_1="NaN"), j, 422, "'num_1'"),
        "inf as a string": (with_(num_1="inf"), j, 422, "'num_1'"),
        "null where training had none": (with_(timestamp=None), j, 422, "'timestamp'"),
        "a huge string": (with_(cat_0="x" * (MAX_TEXT + 1)), j, 422, "'cat_0': String should have at most"),
        "deep nesting": (b"[" * 3000 + b"]" * 3000, j, 422, "recursion limit"),
        "a nested object as a value": (with_(num_0={"a": {"b": {"c": 1}}}), j, 422, "'num_0'"),
        "an empty list": (b"[]", j, 422, "at least 1 item"),
        "too many records": (body([record] * 51), j, 422, "at most 50 items"),
        "bad second record": (body([record, {**record, "num_1": "x"}]), j, 422, "record 1, field 'num_1'"),
        "oversized body": (body([{**record, "cat_0": "y" * 1000}] * 30), j, 413, "larger than 20000 bytes"),
    }
    cases = {name: (content, {**auth, **({"content-type": kind} if kind else {})}, status, fragment)
             for name, (content, kind, status, fragment) in cases.items()}
    cases["missing token"] = (body(record), {"content-type": j}, 401, "bearer token")
    cases["wrong token"] = (body(record), {"content-type": j, "authorization": "Bearer nope"}, 401, "bearer token")
    cases["token without Bearer"] = (body(record), {"content-type": j, "authorization": TOKEN}, 401, "bearer token")
    return cases


def test_at_least_30_bad_requests_get_a_4xx_naming_the_problem(client, served):
    record = as_json_records(served["test"].dropna().head(1), served["columns"])[0]
    cases = _bad_requests(record)
    assert len(cases) >= 30
    failures = []
    for name, (content, headers, status, fragment) in cases.items():
        response = client.post("/predict", content=content, headers=headers)
        error = response.json().get("error", "") if response.headers.get("content-type") == "application/json" else ""
        if response.status_code != status or fragment not in error:
            failures.append(f"{name}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    good = client.post("/predict", json=record, headers={"authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200, good.text


def test_unseen_category_is_accepted_and_routes_need_the_token(client, served):
    auth = {"authorization": f"Bearer {TOKEN}"}
    record = as_json_records(served["test"].dropna().head(1), served["columns"])[0]
    response = client.post("/predict", json={**record, "cat_0": "a value never seen", "order_id": 5}, headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == served["versions"][0] and set(body["probabilities"]) == {"0", "1"}
    assert response.headers["x-request-id"] == body["request_id"]
    assert client.get("/health").status_code == 200  # no token needed
    for route in ("/ready", "/metadata", "/metrics", "/openapi.json", "/docs"):
        assert client.get(route).status_code == 401, route
        assert client.get(route, headers=auth).status_code == 200, route
    metadata = client.get("/metadata", headers=auth).json()
    assert metadata["threshold"] == 0.4 and metadata["inputs"] == served["columns"] and metadata["keys"] == ["order_id"]
    openapi = client.get("/openapi.json", headers=auth).json()
    assert set(served["columns"]) <= set(openapi["components"]["schemas"]["Record"]["properties"])


def test_a_full_queue_answers_503_with_retry_after(client, served):
    state = client.app.state.server
    record = as_json_records(served["test"].head(1), served["columns"])[0]
    state.batcher.waiting = state.batcher.max_queue  # as if the queue were full
    try:
        response = client.post("/predict", json=record, headers={"authorization": f"Bearer {TOKEN}"})
    finally:
        state.batcher.waiting = 0
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "busy" in response.json()["error"]


# --- a real server -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("serving-log")
    with ServerProcess(served["root"], ServeConfig(log_dir=str(log_dir), log_flush_s=0.2, reload_s=0.2)) as server:
        yield server, log_dir


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(server):
    """Cases Hypothesis draws from the server's own OpenAPI document, for each of its operations: none gets a 5xx.

    Schemathesis builds the strategies; Hypothesis runs them here (schemathesis's pytest plugin, which loads a schema
    from a fixture, reaches into pytest's private node attributes and broke with pytest 9.2)."""
    from hypothesis import given
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{server[0].url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /predict", "GET /health", "GET /metadata"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def no_server_error(case):
            case.call_and_validate(checks=[not_a_server_error])

        no_server_error()


@pytest.mark.slow
def test_schemathesis_with_every_check_finds_no_failure(server, tmp_path):
    """Schemathesis's own command with `--checks all` (status codes and content types as documented, schema-valid
    requests accepted, response schemas, server errors), on a bounded budget and a fixed seed."""
    import shutil

    from conftest import run_command

    st = shutil.which("st") or shutil.which("schemathesis")
    assert st, "schemathesis's command is not installed (pip install -e '.[dev]')"
    result = run_command([st, "run", f"{server[0].url}/openapi.json", "--checks", "all", "--max-examples", "30",
                          "--generation-deterministic", "--workers", "1"], cwd=tmp_path, limit_s=600)  # its .schemathesis/ goes there
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


async def _post_all(url: str, bodies: list, timeout: float = 60) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        return await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))


@pytest.mark.slow
def test_200_concurrent_requests_each_get_their_own_answer(server, served):
    url = server[0].url
    rows = served["test"].head(200)
    responses = asyncio.run(_post_all(url, as_json_records(rows, served["columns"])))
    assert [r.status_code for r in responses] == [200] * 200
    expected = served["predictor"].predict(rows)
    served_probabilities = np.array([r.json()["probabilities"]["1"] for r in responses])
    np.testing.assert_allclose(served_probabilities, expected.probabilities[:, 1], rtol=1e-6)
    assert [r.json()["prediction"] for r in responses] == list(expected.predictions)
    assert len({r.json()["request_id"] for r in responses}) == 200


@pytest.mark.slow
def test_hot_reload_under_load(served, tmp_path):
    "Promote and roll back while a client sends requests: no error, and each answer is its version's."
    root, (v_hgb, v_net, _) = served["root"], served["versions"]
    registry = Registry(root)
    rows = served["test"].head(40)
    bodies = as_json_records(rows, served["columns"])
    expected = {v: registry.load(v).predict(rows).probabilities[:, 1] for v in (v_hgb, v_net)}
    answers, stop = [], threading.Event()
    config = ServeConfig(log_dir=str(tmp_path / "log"), reload_s=0.1)
    with ServerProcess(root, config) as server:
        def client():
            with httpx.Client(base_url=server.url, timeout=30) as http:
                i = 0
                while not stop.is_set():
                    response = http.post("/predict", json=bodies[i % 40])
                    answers.append((i % 40, response.status_code, response.json()))
                    i += 1

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        def answered_by(version, since=0):
            return any(body.get("model_version") == version for _, _, body in answers[since:])

        try:
            wait_for(lambda: len(answers) >= 20, what="answers before the promotion")
            registry.promote(v_net, reason="test: hot reload")
            wait_for(lambda: answered_by(v_net), what="an answer of the promoted version")
            since = len(answers)  # from here on the promoted version answers, until the rollback is reloaded
            registry.rollback(reason="test: back")
            wait_for(lambda: answered_by(v_hgb, since), what="an answer of the version rolled back to")
        finally:
            stop.set()
            for t in threads:
                t.join()
        metrics = httpx.get(f"{server.url}/metrics").text
    assert answers and all(status == 200 for _, status, _ in answers), [a for a in answers if a[1] != 200][:3]
    versions = [body["model_version"] for _, _, body in answers]
    assert set(versions) == {v_hgb, v_net}, set(versions)
    for row, _, body in answers:
        assert abs(body["probabilities"]["1"] - expected[body["model_version"]][row]) < 1e-5
    assert 'mllifecycle_reloads_total{outcome="loaded"} 2.0' in metrics


@pytest.mark.slow
def test_a_version_that_fails_verification_is_refused(served, tmp_path):
    "A corrupted version promoted behind the server's back: refused, the old one keeps serving, /metrics says so."
    import shutil

    root = tmp_path / "registry"
    shutil.copytree(served["root"], root)
    registry = Registry(root)
    v_hgb, _, v_other = served["versions"]
    record = as_json_records(served["test"].head(1), served["columns"])[0]
    with ServerProcess(root, ServeConfig(log=False, reload_s=0.1)) as server:
        weights = registry.package(v_other).file("models/hgb_b/model.skops")
        weights.chmod(0o644)
        weights.write_bytes(weights.read_bytes()[:-10])  # damaged on disk...
        registry.aliases.move("champion", v_other, "promote", "behind the registry's back")  # ...and pointed at
        deadline = time.monotonic() + 10
        while 'outcome="refused"' not in httpx.get(f"{server.url}/metrics").text and time.monotonic() < deadline:
            time.sleep(0.1)
        response = httpx.post(f"{server.url}/predict", json=record)
        metrics = httpx.get(f"{server.url}/metrics").text
    assert 'mllifecycle_reloads_total{outcome="refused"} 1.0' in metrics, (
        [l for l in metrics.splitlines() if l.startswith(("mllifecycle_reloads", "mllifecycle_model_version"))])
    assert response.status_code == 200 and response.json()["model_version"] == v_hgb


@pytest.mark.slow
def test_shadow_challenger_is_logged_beside_the_champion(served, tmp_path):
    registry = Registry(served["root"])
    rows = served["test"].head(30)
    shadow = str(served["versions"][1])  # the torch network (the hot-reload test may have promoted "challenger")
    with ServerProcess(served["root"], ServeConfig(shadow=shadow, log_dir=str(tmp_path / "log"),
                                                   log_flush_s=0.2, reload_s=0)) as server:
        responses = asyncio.run(_post_all(server.url, as_json_records(rows, served["columns"])))
    assert all(r.status_code == 200 for r in responses)
    champion, challenger = registry.load("champion").predict(rows), registry.load(shadow).predict(rows)
    answered = np.array([r.json()["probabilities"]["1"] for r in responses])
    np.testing.assert_allclose(answered, champion.probabilities[:, 1], rtol=1e-6)  # the shadow changed no answer
    log = read_log(tmp_path / "log").set_index("request_id").loc[[r.json()["request_id"] for r in responses]]
    assert (log["shadow_version"] == served["versions"][1]).all()
    np.testing.assert_allclose(log["shadow_probability_1"].to_numpy(), challenger.probabilities[:, 1], rtol=1e-5)
    np.testing.assert_allclose(log["probability_1"].to_numpy(), champion.probabilities[:, 1], rtol=1e-6)


@pytest.mark.slow
def test_sigterm_mid_load_completes_in_flight_requests_and_logs_them(served, tmp_path):
    rows = served["test"].head(50)
    bodies = as_json_records(rows, served["columns"])
    results, stop = [], threading.Event()
    server = ServerProcess(served["root"], ServeConfig(log_dir=str(tmp_path / "log"), log_flush_s=30,
                                                      log_buffer_rows=100_000, reload_s=0)).__enter__()

    def client():
        with httpx.Client(base_url=server.url, timeout=30) as http:
            i = 0
            while not stop.is_set():
                try:
                    response = http.post("/predict", json=bodies[i % 50])
                except httpx.TransportError:
                    return  # the server has stopped accepting: nothing was in flight
                results.append((response.status_code, response.json()))
                i += 1

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(results) >= 50, what="answers before SIGTERM")
    status = server.stop()  # SIGTERM while the clients are sending
    stop.set()
    for t in threads:
        t.join()
    assert status == 0
    assert results and all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    logged = set(read_log(tmp_path / "log")["request_id"])  # buffered in memory until the graceful exit
    assert {body["request_id"] for _, body in results} <= logged


@pytest.mark.slow
def test_workers_slower_to_start_than_uvicorns_health_check_are_kept(served, tmp_path, monkeypatch):
    """On a busy machine a worker's interpreter took longer to start than uvicorn's 5 s health check, and uvicorn
    killed each new worker about 5.5 s after spawning it, forever (seen under two CPU burners). A sitecustomize that
    sleeps 7 s makes every Python process of the server that slow to start: both workers come up, once each."""
    import os

    import psutil

    slow = tmp_path / "slow-start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(7)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    (tmp_path / "metrics").mkdir()
    seen = set()

    def workers(server):
        return {c.pid for c in psutil.Process(server.process.pid).children() if "spawn_main" in " ".join(c.cmdline())}

    with ServerProcess(served["root"], ServeConfig(workers=2, log=False, reload_s=0), timeout=150) as server:
        deadline = time.monotonic() + 12  # two health-check periods: a killed worker's replacement shows up
        while time.monotonic() < deadline:
            seen |= workers(server)
            time.sleep(0.25)
        record = as_json_records(served["test"].head(1), served["columns"])[0]
        answered = httpx.post(f"{server.url}/predict", json=record)
    assert answered.status_code == 200, answered.text
    assert len(seen) == 2, f"worker processes seen: {sorted(seen)}"


@pytest.mark.slow
def test_metrics_add_up_across_workers(served, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    (tmp_path / "metrics").mkdir()
    bodies = as_json_records(served["test"].head(60), served["columns"])
    workers_written = lambda: len(list((tmp_path / "metrics").glob("gauge_livesum_*.db")))  # a file per worker
    with ServerProcess(served["root"], ServeConfig(workers=2, log=False, reload_s=0)) as server:
        responses, deadline = [], time.monotonic() + 120
        while True:  # rounds of 60 until both workers have scored a batch (on a busy machine one may take them all)
            responses += asyncio.run(_post_all(server.url, bodies))
            if workers_written() == 2 or time.monotonic() > deadline:
                break
        metrics = httpx.get(f"{server.url}/metrics").text
    assert all(r.status_code == 200 for r in responses)
    line = next(l for l in metrics.splitlines() if l.startswith('mllifecycle_requests_total{route="/predict"'))
    assert float(line.split()[-1]) == len(responses), line  # every request counted once, whichever worker took it
    assert workers_written() == 2  # both workers write their metrics


# --- odd but valid input is answered, and the log keeps it ------------------------------------------------------

EDGE_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "1969-12-31T23:59:59.999999-00:30"]


@pytest.fixture(scope="module")
def logging_client(served, tmp_path_factory):
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


# --- a valid date-time near the range's ends ---------------------------------------------------------------------

def test_offset_datetimes_at_the_ends_of_the_range_are_answered_and_logged(logging_client, served):
    http, log_dir = logging_client
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


# --- what the OpenAPI document allows, the server answers ------------------------------------------------------

def test_a_huge_finite_number_is_answered_and_metrics_are_documented_as_text(logging_client, served):
    http, _ = logging_client
    base = example_record(served["predictor"])
    for value in (-1.3e248, 1.7976931348623157e308, 5e-324):
        response = http.post("/predict", json={**base, "num_0": value})
        assert response.status_code == 200, response.text
        assert np.isfinite(list(response.json()["probabilities"].values())).all()
    document = http.get("/openapi.json").json()
    assert set(document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert http.get("/metrics").headers["content-type"].startswith("text/plain")


def value_strategy(column) -> st.SearchStrategy:
    "Every JSON value the saved schema allows for one input column (null where training saw it missing)."
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
def record_strategy(served, logging_client):
    "Hypothesis records from the saved schema: every value the OpenAPI document allows, keys optional."
    predictor = served["predictor"]
    columns = {name: predictor.schema.columns[name] for name in served["columns"]}
    keys = predictor.schema.names("id")
    document = logging_client[0].get("/openapi.json").json()["components"]["schemas"]["Record"]
    assert set(document["required"]) == set(columns) and set(document["properties"]) == set(columns) | set(keys)
    key_values = st.none() | st.text(max_size=20) | st.integers(-(2 ** 63), 2 ** 63 - 1)
    return st.fixed_dictionaries({n: value_strategy(c) for n, c in columns.items()},
                                 optional={k: key_values for k in keys})


def test_any_record_the_schema_allows_is_answered_and_anything_else_is_a_4xx(logging_client, record_strategy, served):
    http, _ = logging_client
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


# --- slow clients: a read deadline and a keep-alive limit ---------------------------------------------------------

@pytest.mark.slow
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
            with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:  # a keep-alive connection, idle
                idle.sendall(request)
                received = b""
                while chunk := idle.recv(4096):  # the answer, then nothing until the server closes it (or 10 s)
                    received += chunk
            assert received.startswith(b"HTTP/1.1 200 OK"), received[:200]
            assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200  # a new connection is served
        finally:
            for s in sockets:
                s.close()


# --- X-Request-Id: the log's key stays unique -------------------------------------------------------------------

def test_request_ids_are_the_servers_own_and_a_bad_header_is_a_400(logging_client, served):
    http, log_dir = logging_client
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


# --- /docs offline ----------------------------------------------------------------------------------------------

@pytest.mark.slow
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


# --- serve: nothing announced before the model is checked; a warning for an open port -------------------------

@pytest.mark.slow
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


# --- SIGKILL loses at most the last log_flush_s seconds of answers ------------------------------------------------

@pytest.mark.slow
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


