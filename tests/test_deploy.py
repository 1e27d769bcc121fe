"""The deploy stage's traffic: a plan of single records and lists, sent to the server, every answer checked against
`Predictor.predict` on the same rows; a wrong answer is a DeployError naming the row."""
import pytest

from mllifecycle.batch import input_columns
from mllifecycle.deploy import DeployError, check_answers, request_plan
from mllifecycle.registry import Registry
from mllifecycle.serve import ServeConfig, create_app


def test_planned_traffic_is_answered_as_predict_answers_and_a_wrong_answer_names_its_row(served_registry):
    from fastapi.testclient import TestClient

    predictor = Registry(served_registry["root"]).load("champion")
    frame = served_registry["prepared"].splits["test"].reset_index(drop=True).head(40)
    plan = request_plan(frame, input_columns(predictor), n_requests=12, list_size=4, seed=0)
    assert [len(rows) for rows, _ in plan] == [1, 1, 1, 4] * 3  # every fourth request a list
    with TestClient(create_app(ServeConfig(log=False, reload_s=0), served_registry["root"], token="")) as client:
        responses = [client.post("/predict", content=body, headers={"content-type": "application/json"})
                     for _, body in plan]
    results = [(r.status_code, r.json()) for r in responses]
    assert check_answers(predictor, frame, plan, results) == 9 * 1 + 3 * 4  # every record checked
    (row,), _ = plan[0]
    status, body = results[0]
    other = next(c for c in predictor.classes if c != body["prediction"])
    with pytest.raises(DeployError, match=f"row {row}: the server predicted"):
        check_answers(predictor, frame, plan, [(status, {**body, "prediction": other})] + results[1:])
    with pytest.raises(DeployError, match="the server answered 503"):
        check_answers(predictor, frame, plan, [(503, {"error": "busy"})] + results[1:])
