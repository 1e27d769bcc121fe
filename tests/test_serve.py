"""The prediction server: the record path equals the frame path, bad requests get a 4xx naming the problem, and the
server keeps its promises under concurrency, hot reload, shadow scoring and SIGTERM."""
import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from mllifecycle.batch import input_columns, read_log
from mllifecycle.registry import Registry
from mllifecycle.serve import (
    MAX_TEXT, RecordEncoder, RequestParser, ServeConfig, ServerProcess, create_app, record_type)

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
        try:
            time.sleep(0.5)
            registry.promote(v_net, reason="test: hot reload")
            time.sleep(1.5)
            registry.rollback(reason="test: back")
            time.sleep(1.5)
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
    time.sleep(1.0)
    status = server.stop()  # SIGTERM while the clients are sending
    stop.set()
    for t in threads:
        t.join()
    assert status == 0
    assert results and all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:3]
    logged = set(read_log(tmp_path / "log")["request_id"])  # buffered in memory until the graceful exit
    assert {body["request_id"] for _, body in results} <= logged


def test_metrics_add_up_across_workers(served, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    (tmp_path / "metrics").mkdir()
    bodies = as_json_records(served["test"].head(60), served["columns"])
    with ServerProcess(served["root"], ServeConfig(workers=2, log=False, reload_s=0)) as server:
        responses = asyncio.run(_post_all(server.url, bodies))
        metrics = httpx.get(f"{server.url}/metrics").text
    assert all(r.status_code == 200 for r in responses)
    line = next(l for l in metrics.splitlines() if l.startswith('mllifecycle_requests_total{route="/predict"'))
    assert float(line.split()[-1]) == 60, line
    assert len(list((tmp_path / "metrics").glob("gauge_livesum_*.db"))) == 2  # both workers write their metrics
