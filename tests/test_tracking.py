"""MLflow tracking of a finished run: a parent run with a nested run per stage, its metrics, parameters, curves and
report in a SQLite store; an unreachable tracking server is named, and a run tracked to one finishes untracked."""
import json

import numpy as np
import pytest

from conftest import closed_port_url
from mllifecycle.core import Run, read_json
from mllifecycle.tracking import TrackingError, check_reachable, tracking_uri


def test_the_tracking_uri_comes_from_the_parameter_or_the_environment_and_a_dead_server_is_named(monkeypatch):
    url = closed_port_url()
    with pytest.raises(TrackingError, match=f"the MLflow tracking server at {url} cannot be reached"):
        check_reachable(url, timeout_s=2)
    check_reachable("sqlite:///nowhere.db")  # a database, not a server: nothing to ask
    monkeypatch.setenv("MLFLOW_TRACKING_URI", " sqlite:///env.db ")
    assert tracking_uri(None) == "sqlite:///env.db" and tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(None) is None and tracking_uri("  ") is None


@pytest.mark.slow  # reads the runs of `runs_world`, whole `mllifecycle run`s
def test_a_run_is_tracked_in_mlflow_with_a_nested_run_per_stage(runs_world):
    mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed (pip install -e '.[mlflow]')")
    run = Run(runs_world.other)
    logged = read_json(runs_world.other / "report" / "tracking.json")  # written after the stages: not checksummed
    mlflow.set_tracking_uri(f"sqlite:///{runs_world.store}")
    try:
        found = mlflow.search_runs(experiment_names=["mllifecycle"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    by_name = {r.info.run_name: r for r in found}
    assert set(by_name) == {"other-table", "data", "train", "validate"}
    parent = by_name["other-table"]
    assert parent.info.run_id == logged["run_id"] and parent.info.status == "FINISHED"
    assert parent.data.tags["mllifecycle.run_dir"] == str(runs_world.other.resolve())
    assert parent.data.tags["mllifecycle.registry_version"] == str(run.read_json("validation/registry.json")["version"])
    for stage in ("data", "train", "validate"):
        assert by_name[stage].data.tags["mlflow.parentRunId"] == parent.info.run_id
    metrics = run.read_json("validation/metrics.json")
    logged_metrics = by_name["validate"].data.metrics
    expected = {f"{model}.{split}.{k}": v for model, splits in metrics["models"].items() for split, values in splits.items()
                for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    assert expected and {k: logged_metrics[k] for k in expected} == pytest.approx(expected, rel=1e-12)
    reported = metrics["reported"]
    assert logged_metrics[f"test.{reported['metric']}.ci_low"] == pytest.approx(reported["ci_low"], rel=1e-12)
    assert by_name["validate"].data.params["candidates"] == json.dumps(
        read_json(runs_world.other / "params.json")["validate"]["candidates"])
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{runs_world.store}")
    history = run.read_json("models/mlp/history.json")
    curve = client.get_metric_history(by_name["train"].info.run_id, "valid_loss")
    assert [m.step for m in curve] == [h["epoch"] for h in history]
    assert [m.value for m in curve] == pytest.approx([h["valid_loss"] for h in history], rel=1e-12)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in artifacts
    assert (runs_world.store.parent / "mlartifacts").is_dir()  # beside the database, not in the working folder
    assert not (runs_world.work / "mlruns").exists()


@pytest.mark.slow
def test_an_unreachable_tracking_server_is_one_warning_and_the_run_finishes(runs_world):
    result = runs_world.same_result
    warnings = [l for l in result.stderr.splitlines() if "warning" in l]
    assert len(warnings) == 1 and "cannot be reached" in warnings[0] and "the run was not tracked" in warnings[0]
    assert read_json(runs_world.same / "report" / "pipeline.json")["state"] == "complete"
    assert not (runs_world.same / "report" / "tracking.json").exists()
