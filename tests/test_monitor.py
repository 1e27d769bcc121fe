"""Monitoring on a small synthetic world with a known concept drift: the replay's decisions, bad input, the CLI;
every task monitored and retrained; the label-free estimates' bands and the multivariate detectors; drift on a Dask
LocalCluster equal to the local drift, or within a sketch's bound."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import copy_registry, mllifecycle, wait_for
from mllifecycle.batch import predict_file, read_log
from mllifecycle.cli import main
from mllifecycle.core import open_run
from mllifecycle.data import DataError, DataParams, make_synthetic, prepare_data
from mllifecycle.monitor import (MonitorError, MonitorParams, join_labels, log_windows, model_reference,
                                 monitor_log, monitor_windows, monitored_rows)
from mllifecycle.registry import Registry, features_matrix, save_sklearn_model
from mllifecycle.serve import ServeError


def test_the_replay_retrains_after_the_drift_and_keeps_the_better_model(drift_world, tmp_path):
    "Retraining on the latest 900 rows, nearly all of the new concept: promoting, then keeping, are the right actions."
    prepared, predictor, log = drift_world["prepared"], drift_world["predictor"], drift_world["log"]
    reference = model_reference(predictor, prepared.splits["train"], prepared.splits["valid"], "auroc")
    params = MonitorParams(window="2D", label_delay="1D", retrain_rows=900, n_bootstrap=100, rollback_rows=100)
    registry = copy_registry(drift_world["registry"], tmp_path)
    labels = join_labels(log, prepared.splits["stream"], "target")
    result = monitor_windows(monitored_rows(log, predictor, labels, "1D"), reference, params, registry=registry,
                             history=prepared.splits["train"], replay=True, workdir=tmp_path / "runs")
    assert [a["signal"] for a in result.alerts] == ["performance"], result.alerts
    assert [d["action"] for d in result.decisions] == ["promoted", "kept the promotion"], result.decisions
    assert all(d["comparison"]["gain_ci"][0] > 0 for d in result.decisions)  # neither decision is a close call
    promoted = result.decisions[0]["challenger"]
    assert registry.resolve("champion") == promoted and result.decisions[1]["champion"] == promoted
    after = result.windows["window"] > result.decisions[0]["window"]
    assert (result.windows.loc[after, "metric_served"] > result.windows.loc[after, "metric_no_retraining"]).all()
    # with no retraining, the served scores are the logged ones
    quiet = monitor_windows(monitored_rows(log, predictor, labels, "1D"), reference,
                            MonitorParams(window="2D", label_delay="1D", retrain=False), replay=True)
    assert np.array_equal(quiet.scores_served, quiet.scores_logged) and not quiet.decisions


def test_bad_logs_and_labels_get_clear_errors_or_documented_skips(drift_world):
    prepared, predictor, log = drift_world["prepared"], drift_world["predictor"], drift_world["log"]
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
    with pytest.raises(DataError, match="does not know"):
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


def test_a_reference_of_another_model_is_refused(drift_world, tmp_path):
    other = tmp_path / "other.csv"
    make_synthetic(1500, n_numeric=3, n_categorical=1, seed=9).rename(columns={"num_0": "speed"}).to_csv(other,
                                                                                                       index=False)
    other_run = open_run(tmp_path / "other-run")
    prepare_data(other_run, DataParams(data_path=str(other), target="target"))
    params = MonitorParams(registry_dir=str(drift_world["registry"].root), log_path=str(drift_world["root"] / "log.parquet"),
                           retrain=False)
    with pytest.raises(MonitorError, match="data of another model"):
        monitor_log(params, reference_dir=other_run.path, run_dir=tmp_path / "out")


@pytest.mark.slow
def test_cli_monitor_retrains_then_judges_its_promotion(drift_world, tmp_path, capsys):
    registry = copy_registry(drift_world["registry"], tmp_path)
    stream = drift_world["run"].file("data/stream.parquet")
    args = ["monitor", "--registry", str(registry.root), "--log", str(drift_world["root"] / "log.parquet"),
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
    # the retrained model answers the drifted stream far better than version 1: keeping it is the one right action
    assert (judged[0]["action"], judged[0]["previous"]) == ("kept the promotion", 1), judged
    assert judged[0]["comparison"]["gain_ci"][0] > 0
    assert main(["monitor", "--registry", str(registry.root), "--log", str(tmp_path / "missing.parquet")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["monitor", "--registry", str(registry.root), "--log", str(drift_world["root"] / "log.parquet"),
                 "--window", "1M"]) == 1
    assert "fixed length" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_every_task_is_monitored_and_retrained(kind, tmp_path):
    """A multi-class and a regression model whose stream follows another concept (classes rotated, the target
    mirrored): the loss of performance alerts, retraining on the new concept is promoted, and the promotion is kept."""
    from tables import multiclass, regression

    from mllifecycle.validate import make_estimator

    frame, target, metric = (multiclass(2400), "label", "accuracy") if kind == "multiclass" \
        else (regression(2400), "target", "rmse")
    frame["when"] = pd.date_range("2024-01-01", periods=len(frame), freq="2h")
    stream = np.arange(len(frame)) >= 0.75 * len(frame)  # the stream split: the latest quarter
    if kind == "multiclass":
        frame.loc[stream, target] = frame.loc[stream, target].map(
            {"class_0": "class_1", "class_1": "class_2", "class_2": "class_0"})
    else:
        frame.loc[stream, target] = 2 * frame[target].mean() - frame.loc[stream, target]
    frame.to_csv(tmp_path / "table.csv", index=False)
    run = open_run(tmp_path / "run")
    prepared = prepare_data(run, DataParams(data_path=str(tmp_path / "table.csv"), target=target, time_column="when"))
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
    # one retraining, once six windows have breached: its 200 latest rows are all of the new concept
    params = MonitorParams(window="2D", label_delay="1D", min_rows=10, retrain_rows=200, n_bootstrap=100,
                           rollback_rows=20, consecutive=6, cooldown=100, retrain_on=["performance"])
    result = monitor_windows(monitored_rows(log, predictor, labels, "1D"), reference, params, registry=registry,
                             history=prepared.splits["train"], replay=True, workdir=tmp_path / "runs")
    assert result.windows["estimate"].notna().all()  # CBPE for classifiers, direct loss estimation for regression
    assert (result.windows["estimate_low"] <= result.windows["estimate_high"]).all()
    assert [d["action"] for d in result.decisions] == ["promoted", "kept the promotion"], result.decisions
    assert all(d["comparison"]["gain_ci"][0] > 0 for d in result.decisions)  # neither decision is a close call
    after = result.windows["window"] > result.decisions[0]["window"]
    better = result.windows["metric_served"] > result.windows["metric_no_retraining"]
    if metric == "rmse":
        better = result.windows["metric_served"] < result.windows["metric_no_retraining"]
    assert better[after].all() and not better[~after].any()


@pytest.mark.slow
def test_shadow_evidence_and_a_live_servers_metrics(drift_world, tmp_path):
    "A log with a shadow model's answers gives a paired comparison; --metrics-url records a live server's figures."
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mllifecycle.batch import LOG_FORMAT
    from mllifecycle.serve import ServeConfig, ServerProcess

    log = drift_world["log"]
    shadowed = log.assign(shadow_version=1, shadow_probability_0=log["probability_0"].to_numpy()[::-1],
                          shadow_probability_1=log["probability_1"].to_numpy()[::-1])  # a shadow that guesses
    table = pa.Table.from_pandas(shadowed, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}), b"format": LOG_FORMAT.encode()}),
                   tmp_path / "shadowed.parquet")
    with ServerProcess(drift_world["registry"].root, ServeConfig(log=False)) as server:
        params = MonitorParams(registry_dir=str(drift_world["registry"].root), log_path=str(tmp_path / "shadowed.parquet"),
                               labels_path=str(drift_world["run"].file("data/stream.parquet")), window="2D",
                               label_delay="1D", retrain=False, metrics_url=server.url, n_bootstrap=100)
        run, result = monitor_log(params, run_dir=tmp_path / "out")
    shadow = run.read_json("monitoring/retraining.json")["shadow"]
    assert shadow["rows"] == len(log) and shadow["gain"] < 0 and shadow["gain_ci"][1] < 0  # the served model wins
    system = run.read_json("monitoring/system.json")
    assert system["server"]["model_version"] == drift_world["predictor"].version and system["process"]["rss_mb"] > 0
    assert system["serving"][0]["rows"] > 0
    with pytest.raises(ServeError, match="cannot read"):
        monitor_log(MonitorParams(registry_dir=str(drift_world["registry"].root), log_path=str(tmp_path / "shadowed.parquet"),
                                  retrain=False, metrics_url="http://127.0.0.1:9"), run_dir=tmp_path / "out2")


# --- label-free estimates and multivariate detectors, with their bands; the detector study ------------------

@pytest.mark.parametrize("metric", ["auroc", "accuracy"])
def test_the_cbpe_band_covers_the_realised_metric_at_its_nominal_rate(metric):
    from types import SimpleNamespace

    from mllifecycle.monitor import cbpe_band, metric_value

    model = SimpleNamespace(kind="binary", threshold=0.5, classes=[0, 1])  # what the band reads of a predictor
    rng = np.random.default_rng(1)
    n_windows, covered = 300, 0
    for k in range(n_windows):
        scores = rng.beta(2, 3, 500)  # a calibrated model: each label is 1 with its score's probability
        target = (rng.random(500) < scores).astype(float)
        low, high = cbpe_band(model, metric, scores, None, seed=k)
        realised = metric_value(model, metric, target, scores)
        covered += low <= realised <= high
    spread = 3 * np.sqrt(0.95 * 0.05 / n_windows)
    assert abs(covered / n_windows - 0.95) < spread, covered / n_windows


def test_dle_band_covers_the_realised_rmse_at_its_nominal_rate():
    from mllifecycle.data import make_synthetic
    from mllifecycle.monitor import dle, fit_loss_model, metric_value, study_model

    n_windows, size = 300, 500
    data = make_synthetic(7000 + n_windows * size, n_numeric=6, n_categorical=2, n_categories=8, task="regression",
                          seed=4).drop(columns="timestamp")
    model = study_model(data.iloc[:4000], 0, "regression")
    valid = data.iloc[4000:7000]
    features = model.features(valid)
    loss = fit_loss_model(model, features, model.scores(features), model.encode_labels(valid["target"]))
    stream = data.iloc[7000:]
    features = model.features(stream)
    scores, target = model.scores(features), model.encode_labels(stream["target"])
    covered = 0
    for k in range(n_windows):
        rows = np.arange(k * size, (k + 1) * size)
        from mllifecycle.monitor import subset_features

        estimate, low, high = dle(loss, "rmse", subset_features(features, rows), scores[rows])
        covered += low <= metric_value(model, "rmse", target[rows], scores[rows]) <= high
    spread = 3 * np.sqrt(0.95 * 0.05 / n_windows)
    assert abs(covered / n_windows - 0.95) < spread, covered / n_windows


def test_the_multivariate_detectors_stay_quiet_without_drift_and_fire_on_a_shift():
    from mllifecycle.data import make_synthetic
    from mllifecycle.monitor import (domain_classifier, fit_multivariate, multivariate_matrix, reconstruction_signal,
                                     study_model)

    data = make_synthetic(16_000, n_numeric=6, n_categorical=2, n_categories=8, seed=1).drop(columns="timestamp")
    model = study_model(data.iloc[:4000], 0)
    state = fit_multivariate(model, data.iloc[:6000])
    quiet = {"reconstruction": 0, "domain": 0}
    for k in range(12):  # windows of the same population
        x = multivariate_matrix(model.features(data.iloc[6000 + 500 * k:6500 + 500 * k]), state["names"])
        quiet["reconstruction"] += reconstruction_signal(state, x)["breached"]
        quiet["domain"] += domain_classifier(state, x, seed=k)["breached"]
    assert quiet["reconstruction"] <= 1 and quiet["domain"] <= 1, quiet
    moved = data.iloc[6000:6500].assign(num_0=lambda d: d["num_0"] + d["num_0"].std())
    x = multivariate_matrix(model.features(moved), state["names"])
    assert reconstruction_signal(state, x)["breached"] and domain_classifier(state, x)["breached"]
def test_each_injected_drift_is_caught_by_its_detector():
    from mllifecycle.monitor import detector_study

    study = detector_study(kinds=("covariate", "prior", "concept"), widths=(0.0,), n_rows=12_000, window_rows=800)
    delay = study.pivot(index="detector", columns="drift", values="delay_windows")
    assert delay.loc["data drift: KS/chi² + BH", "covariate, abrupt"] <= 1
    assert delay.loc["label drift: chi²", "prior, abrupt"] <= 1
    assert delay.loc["ADWIN on errors", "concept, abrupt"] <= 1
    assert delay.loc["performance: AUROC", "concept, abrupt"] <= 1
    # and the input detectors are blind to drifts that leave the inputs alone
    assert np.isinf(delay.loc["data drift: KS/chi² + BH", "concept, abrupt"])


# --- drift on a Dask LocalCluster of two workers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def log_parts(drift_world, tmp_path_factory):
    "The drift world's batch log as four part files, as a server writes it."
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("log-parts")
    table = pq.read_table(drift_world["root"] / "log.parquet")
    for i, rows in enumerate(np.array_split(np.arange(table.num_rows), 4)):
        pq.write_table(table.slice(rows[0], len(rows)), folder / f"part-{i}.parquet")
    return folder


def monitor_params(drift_world, log_parts, **changes):
    from mllifecycle.monitor import MonitorParams

    return MonitorParams(registry_dir=str(drift_world["registry"].root), log_path=str(log_parts), window="2D",
                         label_delay="1D", retrain=False, n_bootstrap=100, multivariate=False, **changes)


@pytest.mark.slow
def test_dask_drift_equals_the_local_drift_exactly(drift_world, log_parts, dask_cluster, tmp_path):
    from mllifecycle.monitor import monitor_log

    _, local = monitor_log(monitor_params(drift_world, log_parts), run_dir=tmp_path / "local")
    run, on_dask = monitor_log(monitor_params(drift_world, log_parts), run_dir=tmp_path / "dask", client=dask_cluster)
    assert len(local.drift) > 0 and local.drift["window"].nunique() >= 3
    pd.testing.assert_frame_equal(on_dask.drift, local.drift)
    pd.testing.assert_frame_equal(on_dask.windows, local.windows)
    assert [a["signal"] for a in on_dask.alerts] == [a["signal"] for a in local.alerts]
    assert run.exists("monitoring/drift.json")


def test_back_to_back_cluster_drift_calls_on_one_cluster_all_finish_with_the_same_tables(log_parts, dask_cluster):
    """Each call scatters the profile under a fresh key and releases it. With a content-hashed key, a call could reuse
    the key the last call was releasing, and its tasks were cancelled for "lost dependencies" (a CI run's docs build)."""
    from mllifecycle.batch import log_files, log_inputs
    from mllifecycle.drift import DriftThresholds, reference_profile
    from mllifecycle.monitor import cluster_drift

    log = read_log(log_parts)
    inputs = log_inputs(log)
    profile = reference_profile(inputs)
    windows = log_windows(log["timestamp"], "2D")
    tables = [cluster_drift(dask_cluster, log_files(log_parts), profile, list(profile.columns), windows, None,
                            DriftThresholds()) for _ in range(6)]
    assert len(tables[0]) == len(windows) >= 3
    for later in tables[1:]:
        for window, table in tables[0].items():
            pd.testing.assert_frame_equal(later[window], table)

    def left_on_the_cluster(dask_scheduler):  # the profile and part tasks that no call holds any more
        return [k for k in dask_scheduler.tasks if str(k).startswith(("ReferenceProfile-", "log_part_drift-"))]

    wait_for(lambda: not dask_cluster.run_on_scheduler(left_on_the_cluster), 30, "the calls' data leaving the cluster")


@pytest.mark.slow
def test_dask_drift_from_sketches_stays_within_the_stated_bound(drift_world, log_parts, dask_cluster, tmp_path):
    from mllifecycle.monitor import monitor_log

    _, local = monitor_log(monitor_params(drift_world, log_parts), run_dir=tmp_path / "local")
    _, sketched = monitor_log(monitor_params(drift_world, log_parts, exact_values=0), run_dir=tmp_path / "dask",
                              client=dask_cluster)
    exact, found = local.drift.set_index(["window", "column"]), sketched.drift.set_index(["window", "column"])
    numeric = found["kind"] == "numeric"
    assert numeric.sum() >= 8 and (found.loc[numeric, "ks_error"] > 0).all()
    assert ((found["ks"] - exact["ks"]).abs()[numeric] <= found.loc[numeric, "ks_error"]).all()
    gap = (found["wasserstein_norm"] - exact["wasserstein_norm"]).abs()[numeric]
    assert (gap <= found.loc[numeric, "wasserstein_norm_error"]).all()
    for merged_exactly in ("psi", "missing_share"):  # counts over frozen bins: the same figures
        np.testing.assert_allclose(found[merged_exactly], exact[merged_exactly], rtol=1e-12)
    categorical = ~numeric
    pd.testing.assert_series_equal(found.loc[categorical, "chi2"], exact.loc[categorical, "chi2"])


@pytest.mark.slow
def test_cli_monitor_on_a_local_cluster(drift_world, log_parts, tmp_path):
    done = mllifecycle("monitor", "--registry", drift_world["registry"].root, "--log", log_parts, "--window", "2D",
                       "--label-delay", "1D", "--multivariate", "false", "--out", tmp_path / "out", "--engine", "dask",
                       "--scheduler", "local:2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "dask: 2 worker(s)" in done.stdout and "windows of 2D" in done.stdout
    assert (tmp_path / "out" / "monitoring" / "drift.json").exists()
