"""Monitoring on a small synthetic world with a known concept drift: retraining decisions, rollback, bad input, the CLI."""
import json

import numpy as np
import pandas as pd
import pytest

from mllifecycle.batch import predict_file, read_log
from mllifecycle.cli import main
from mllifecycle.core import Run, open_run
from mllifecycle.data import DataConfig, make_synthetic, prepare_data
from mllifecycle.monitor import (MonitorError, MonitorParams, join_labels, log_windows, model_reference,
                                 monitor_log, monitor_windows, monitored_rows, retrain_and_decide, retrain_model,
                                 rollback_if_worse)
from mllifecycle.registry import Registry, categorical_mask, features_matrix, save_sklearn_model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    "A run on 8,000 synthetic rows (concept drift at 85%), an HGB champion in a registry, and the stream's batch log."
    from sklearn.ensemble import HistGradientBoostingClassifier

    root = tmp_path_factory.mktemp("monitor")
    make_synthetic(8000, n_numeric=4, n_categorical=2, drift="concept", drift_start=0.85, freq="10min", seed=3) \
        .to_csv(root / "data.csv", index=False)
    run = open_run(root / "run")
    prepared = prepare_data(run, DataConfig(data_path=str(root / "data.csv"), target="target"))
    train = prepared.pipeline.transform(prepared.splits["train"])
    estimator = HistGradientBoostingClassifier(max_iter=40, categorical_features=categorical_mask(train), random_state=0)
    save_sklearn_model(run, "hgb", estimator.fit(features_matrix(train), train.target), "binary",
                       prepared.pipeline.classes_)
    registry = Registry(root / "registry")
    registry.promote(registry.register(run, "hgb", threshold=0.5, notes={"metric": {"name": "auroc"}}))
    predictor = registry.load("champion")
    predict_file(predictor, run.file("data/stream.parquet"), root / "log.parquet", inputs=True, time_column="timestamp",
                 progress=False)
    return {"root": root, "run": run, "prepared": prepared, "registry": registry, "predictor": predictor,
            "log": read_log(root / "log.parquet")}


def _copy_registry(world, tmp_path) -> Registry:
    import shutil

    shutil.copytree(world["registry"].root, tmp_path / "registry")
    return Registry(tmp_path / "registry")


def test_retraining_promotes_a_better_challenger_and_keeps_a_worse_one_out(world, tmp_path):
    registry, splits = _copy_registry(world, tmp_path), world["prepared"].splits
    champion = registry.load("champion")
    drifted = splits["stream"]  # the concept changes inside it: retraining on it helps on its latest rows
    decision, promoted = retrain_and_decide(registry, champion, drifted, "auroc", tmp_path / "better", n_bootstrap=200)
    assert decision["action"] == "promoted", decision
    assert decision["comparison"]["gain"] > 0 and registry.resolve("champion") == promoted.version

    # a challenger trained on the drifted concept, judged on rows of the original one: kept out
    original = pd.concat([splits["valid"], splits["test"]]).tail(1500)
    rows = pd.concat([drifted.tail(1200), original.tail(600)], ignore_index=True)
    before = registry.resolve("champion")
    decision, new = retrain_and_decide(registry, promoted, rows, "auroc", tmp_path / "worse", holdout_frac=0.3,
                                       margin=0.0, n_bootstrap=200)
    assert decision["action"] == "kept the champion" and new is None, decision
    assert registry.resolve("champion") == before
    assert registry.resolve("challenger") == decision["challenger"]


def test_a_promotion_that_serves_worse_is_rolled_back(world, tmp_path):
    registry, splits = _copy_registry(world, tmp_path), world["prepared"].splits
    old = registry.load("champion")
    worse = retrain_model(old, splits["stream"].tail(1000), tmp_path / "drifted")  # fits the new concept only
    version = registry.register(Run(tmp_path / "drifted"), worse.name, threshold=worse.threshold)
    registry.promote(version, "champion", reason="monitoring: test")
    worse.version = version
    decision = rollback_if_worse(registry, worse, old, splits["test"], "auroc", n_bootstrap=200)
    assert decision["action"] == "rolled back", decision
    assert registry.resolve("champion") == old.version
    kept = rollback_if_worse(registry, old, old, splits["test"], "auroc", n_bootstrap=200)
    assert kept["action"] == "kept the promotion"


def test_a_failed_retraining_leaves_the_champion_untouched(world, tmp_path, monkeypatch):
    import mllifecycle.monitor as monitor

    registry = _copy_registry(world, tmp_path)
    before, versions = registry.state()["aliases"], registry.versions()

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(monitor, "retrain_model", broken)
    decision, new = retrain_and_decide(registry, registry.load("champion"), world["prepared"].splits["stream"],
                                       "auroc", tmp_path / "broken")
    assert (decision["action"], new) == ("failed", None) and "out of memory" in decision["error"]
    assert registry.state()["aliases"] == before and registry.versions() == versions
    too_few, _ = retrain_and_decide(registry, registry.load("champion"), world["prepared"].splits["stream"].head(40),
                                    "auroc", tmp_path / "few")
    assert too_few["action"] == "failed" and "too few" in too_few["error"]


def test_the_replay_detects_the_drift_and_records_every_decision(world, tmp_path):
    prepared, predictor, log = world["prepared"], world["predictor"], world["log"]
    reference = model_reference(predictor, prepared.splits["train"], prepared.splits["valid"], "auroc")
    params = MonitorParams(window="2D", label_delay="1D", retrain_rows=3000, n_bootstrap=100, rollback_rows=100)
    registry = _copy_registry(world, tmp_path)
    labels = join_labels(log, prepared.splits["stream"], "target")
    result = monitor_windows(monitored_rows(log, predictor, labels, "1D"), reference, params, registry,
                             prepared.splits["train"], replay=True, workdir=tmp_path / "runs")
    performance = [a for a in result.alerts if a["signal"] in ("performance", "error_rate")]
    assert performance, result.signals
    assert result.decisions and all("action" in d for d in result.decisions)
    assert {"metric_no_retraining", "metric_served", "estimate", "drifted_share"} <= set(result.windows.columns)
    # with no retraining, the served scores are the logged ones
    quiet = monitor_windows(monitored_rows(log, predictor, labels, "1D"), reference,
                            MonitorParams(window="2D", label_delay="1D", retrain=False), None, None, replay=True)
    assert np.array_equal(quiet.scores_served, quiet.scores_logged) and not quiet.decisions


def test_bad_logs_and_labels_get_clear_errors_or_documented_skips(world):
    prepared, predictor, log = world["prepared"], world["predictor"], world["log"]
    with pytest.raises(MonitorError, match="lacks column"):
        monitored_rows(log.drop(columns=["input.num_1"]), predictor, None)
    with pytest.raises(MonitorError, match="not version"):
        monitored_rows(log.assign(model_version=predictor.version + 5), predictor, None)
    mixed = monitored_rows(log.assign(model_version=np.where(np.arange(len(log)) % 2, predictor.version, 99)),
                           predictor, None)
    assert mixed.skipped == {"other versions": len(log) // 2}
    with pytest.raises(MonitorError, match="do not join"):
        join_labels(log, prepared.splits["stream"].head(5), "target")
    with pytest.raises(MonitorError, match="no target column"):
        join_labels(log, prepared.splits["stream"].drop(columns="target"), "target")
    with pytest.raises(MonitorError, match="no label joins"):
        join_labels(log, pd.DataFrame({"row": [10**9], "target": [1]}), "target")
    with pytest.raises(MonitorError, match="does not know"):
        monitored = monitored_rows(log, predictor, pd.Series(["maybe"] * len(log)))
        monitor_windows(monitored, model_reference(predictor, prepared.splits["train"], prepared.splits["valid"],
                                                   "auroc"), MonitorParams(retrain=False))
    with pytest.raises(MonitorError, match="data of another model"):
        model_reference(predictor, prepared.splits["train"].drop(columns="cat_0"), prepared.splits["valid"], "auroc")
    # a gap in traffic: the empty windows are kept and marked, not a crash
    gap = log[(log["timestamp"] < log["timestamp"].min() + pd.Timedelta("2D"))
              | (log["timestamp"] > log["timestamp"].min() + pd.Timedelta("6D"))]
    reference = model_reference(predictor, prepared.splits["train"], prepared.splits["valid"], "auroc")
    result = monitor_windows(monitored_rows(gap, predictor, None), reference, MonitorParams(window="1D", retrain=False))
    skipped = result.windows[result.windows["rows"] == 0]
    assert len(skipped) >= 3 and skipped["skipped"].str.contains("fewer than min_rows").all()
    with pytest.raises(MonitorError, match="no rows"):
        log_windows(pd.Series([], dtype="datetime64[ns, UTC]"))


def test_a_reference_of_another_model_is_refused(world, tmp_path):
    other = tmp_path / "other.csv"
    make_synthetic(1500, n_numeric=3, n_categorical=1, seed=9).rename(columns={"num_0": "speed"}).to_csv(other,
                                                                                                       index=False)
    other_run = open_run(tmp_path / "other-run")
    prepare_data(other_run, DataConfig(data_path=str(other), target="target"))
    params = MonitorParams(registry_dir=str(world["registry"].root), log_path=str(world["root"] / "log.parquet"),
                           retrain=False)
    with pytest.raises(MonitorError, match="data of another model"):
        monitor_log(params, reference_dir=other_run.path, run_dir=tmp_path / "out")


def test_cli_monitor_retrains_then_judges_its_promotion(world, tmp_path, capsys):
    registry = _copy_registry(world, tmp_path)
    stream = world["run"].file("data/stream.parquet")
    args = ["monitor", "--registry", str(registry.root), "--log", str(world["root"] / "log.parquet"),
            "--labels", str(stream), "--window", "2D", "--label-delay", "1D", "--n-bootstrap", "100",
            "--retrain-rows", "1500", "--retrain", "--out", str(tmp_path / "first")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "alert:" in out and "written to" in out
    decisions = json.loads((tmp_path / "first/monitoring/retraining.json").read_text())["decisions"]
    assert [d["action"] for d in decisions] == ["promoted"], decisions  # on the 1,500 latest rows, mostly drifted
    champion = registry.load("champion")  # it serves the stream now; the next call judges it against version 1
    assert champion.version == decisions[0]["challenger"]
    predict_file(champion, stream, tmp_path / "log2.parquet", inputs=True, time_column="timestamp", progress=False)
    assert main([*args[:4], str(tmp_path / "log2.parquet"), *args[5:-1], str(tmp_path / "second"),
                 "--rollback-rows", "100"]) == 0
    judged = json.loads((tmp_path / "second/monitoring/retraining.json").read_text())["decisions"]
    assert judged[0]["action"] in ("rolled back", "kept the promotion") and judged[0]["previous"] == 1, judged
    assert main(["monitor", "--registry", str(registry.root), "--log", str(tmp_path / "missing.parquet")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["monitor", "--registry", str(registry.root), "--log", str(world["root"] / "log.parquet"),
                 "--window", "1M"]) == 1
    assert "fixed length" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_every_task_is_monitored_and_retrained(kind, tmp_path):
    "A multi-class and a regression model through the whole loop: estimate, metric, alerts, retraining, rollback."
    from tables import multiclass, regression

    from mllifecycle.validate import make_estimator

    frame, target, metric = (multiclass(2400), "label", "accuracy") if kind == "multiclass" \
        else (regression(2400), "target", "rmse")
    frame["when"] = pd.date_range("2024-01-01", periods=len(frame), freq="2h")
    frame.to_csv(tmp_path / "table.csv", index=False)
    run = open_run(tmp_path / "run")
    prepared = prepare_data(run, DataConfig(data_path=str(tmp_path / "table.csv"), target=target, time_column="when"))
    train = prepared.pipeline.transform(prepared.splits["train"])
    estimator = make_estimator(kind, train, {"max_iter": 30}, 0).fit(features_matrix(train), train.target)
    save_sklearn_model(run, "hgb", estimator, kind, prepared.pipeline.classes_ if kind == "multiclass" else None)
    registry = Registry(tmp_path / "registry")
    registry.promote(registry.register(run, "hgb", notes={"metric": {"name": metric}}))
    predictor = registry.load("champion")
    predict_file(predictor, run.file("data/stream.parquet"), tmp_path / "log.parquet", inputs=True,
                 time_column="when", progress=False)
    log = read_log(tmp_path / "log.parquet")
    reference = model_reference(predictor, prepared.splits["train"], prepared.splits["valid"], metric)
    labels = join_labels(log, prepared.splits["stream"], target)
    params = MonitorParams(window="2D", label_delay="1D", min_rows=10, retrain_rows=1500, n_bootstrap=50,
                           rollback_rows=20, small_reference=0, wasserstein=1e-9, jensen_shannon=1e-9,
                           drift_share=0.01, consecutive=1, cooldown=3, retrain_on=["data_drift"])  # alerts at once
    result = monitor_windows(monitored_rows(log, predictor, labels, "1D"), reference, params, registry,
                             prepared.splits["train"], replay=True, workdir=tmp_path / "runs")
    assert result.windows["metric_served"].notna().any() and len(result.windows) >= 3
    assert np.isnan(result.windows["estimate"]).all() == (kind == "regression")  # CBPE: classifiers only
    actions = [d["action"] for d in result.decisions]
    assert actions and set(actions) <= {"promoted", "kept the champion", "rolled back", "kept the promotion"}, \
        result.decisions


def test_shadow_evidence_and_a_live_servers_metrics(world, tmp_path):
    "A log with a shadow model's answers gives a paired comparison; --metrics-url records a live server's figures."
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mllifecycle.batch import LOG_FORMAT
    from mllifecycle.serve import ServeConfig, ServerProcess

    log = world["log"]
    shadowed = log.assign(shadow_version=1, shadow_probability_0=log["probability_0"].to_numpy()[::-1],
                          shadow_probability_1=log["probability_1"].to_numpy()[::-1])  # a shadow that guesses
    table = pa.Table.from_pandas(shadowed, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), b"format": LOG_FORMAT.encode()}),
                   tmp_path / "shadowed.parquet")
    with ServerProcess(world["registry"].root, ServeConfig(log=False)) as server:
        params = MonitorParams(registry_dir=str(world["registry"].root), log_path=str(tmp_path / "shadowed.parquet"),
                               labels_path=str(world["run"].file("data/stream.parquet")), window="2D",
                               label_delay="1D", retrain=False, metrics_url=server.url, n_bootstrap=100)
        run, result = monitor_log(params, run_dir=tmp_path / "out")
    shadow = run.read_json("monitoring/retraining.json")["shadow"]
    assert shadow["rows"] == len(log) and shadow["gain"] < 0 and shadow["gain_ci"][1] < 0  # the served model wins
    system = run.read_json("monitoring/system.json")
    assert system["server"]["model_version"] == world["predictor"].version and system["process"]["rss_mb"] > 0
    assert system["serving"][0]["rows"] > 0
    with pytest.raises(MonitorError, match="cannot read"):
        monitor_log(MonitorParams(registry_dir=str(world["registry"].root), log_path=str(tmp_path / "shadowed.parquet"),
                                  retrain=False, metrics_url="http://127.0.0.1:9"), run_dir=tmp_path / "out2")
