"""The calibrated drift rule: its false-alarm rate is its level at any window size and cardinality, it still catches
drift (a two-category swap included), and Evidently's rule, asked for by name, gives the numbers it always gave."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

from mllifecycle.drift import DriftThresholds, dataset_drift, reference_profile, window_drift

ZIPF = 1 / np.arange(1, 51) / np.sum(1 / np.arange(1, 51))
CODES = np.array([f"w{k}" for k in range(2000)])


def population(rng, rows: int) -> pd.DataFrame:
    "One population: a continuous column, one with heavy ties, and categorical columns of 2, 50 and 2,000 values."
    return pd.DataFrame({"continuous": rng.normal(size=rows), "ties": np.round(rng.gamma(2.0, 1.5, rows)),
                         "cat2": np.where(rng.random(rows) < 0.3, "a", "b"),
                         "cat50": np.array([f"v{k}" for k in range(50)])[rng.choice(50, rows, p=ZIPF)],
                         "cat2000": CODES[rng.integers(0, 2000, rows)]})


@pytest.mark.parametrize("window_rows,reference_rows", [(50, 20_000), (500, 20_000), (50_000, 1_000_000)])
def test_false_alarm_rate_is_the_level_for_every_kind_of_column(window_rows, reference_rows):
    rng = np.random.default_rng(window_rows)
    profile = reference_profile(population(rng, reference_rows))
    n_windows, level = 300, 0.05
    flags = pd.DataFrame([window_drift(profile, population(rng, window_rows)).set_index("column")["p_value"] < level
                          for _ in range(n_windows)])
    spread = 3 * np.sqrt(level * (1 - level) / n_windows)  # three binomial standard deviations
    rates = flags.mean()
    assert ((rates > level - spread) & (rates < level + spread)).all(), rates.to_dict()
    tests = window_drift(profile, population(rng, window_rows)).set_index("column")["test"].to_dict()
    assert tests["continuous"] == "ks" and tests["ties"] == "ks_permutation"
    assert tests["cat2000"] == ("chi2" if window_rows == 50_000 else "chi2_permutation")  # Cochran's rule


def test_high_cardinality_noise_is_not_drift_but_evidently_calls_it_drift():
    rng = np.random.default_rng(7)
    profile = reference_profile(population(rng, 20_000))
    table = window_drift(profile, population(rng, 550)).set_index("column")
    assert table.loc["cat2000", "jensen_shannon"] > 0.5 and table.loc["cat2000", "drifted_evidently"]
    assert not table["drifted"].any()


def test_a_two_category_swap_is_flagged_where_jensen_shannon_misses_it():
    rng = np.random.default_rng(3)
    shares = np.arange(12, 0, -1) / np.arange(12, 0, -1).sum()
    values = np.array([f"v{k}" for k in range(12)])
    profile = reference_profile(pd.DataFrame({"c": values[rng.choice(12, 20_000, p=shares)]}))
    swapped = shares.copy()
    swapped[[0, 4]] = swapped[[4, 0]]  # the commonest and the fifth change places
    table = window_drift(profile, pd.DataFrame({"c": values[rng.choice(12, 3000, p=swapped)]})).iloc[0]
    assert table["jensen_shannon"] < DriftThresholds().jensen_shannon and not table["drifted_evidently"]
    assert table["drifted"] and table["p_value"] < 1e-3


@pytest.mark.parametrize("shift", ["covariate", "categories"])
def test_injected_drift_is_caught_within_one_window(shift):
    rng = np.random.default_rng(11)
    profile = reference_profile(population(rng, 20_000))
    found = []
    for k in range(6):  # three windows without drift, then three with it
        window = population(rng, 500)
        if k >= 3 and shift == "covariate":
            window["ties"] += 1
        if k >= 3 and shift == "categories":
            window["cat50"] = np.where(rng.random(500) < 0.3, "v49", window["cat50"])
        found.append(window_drift(profile, window).set_index("column")["drifted"])
    column = "ties" if shift == "covariate" else "cat50"
    assert [bool(f[column]) for f in found] == [False, False, False, True, True, True]


def test_the_calibrated_verdicts_do_not_depend_on_other_columns_or_their_order():
    rng = np.random.default_rng(5)
    profile = reference_profile(population(rng, 5000))
    window = population(rng, 400)
    whole = window_drift(profile, window).set_index("column")
    alone = window_drift(profile, window[["cat2000"]], columns=["cat2000"]).set_index("column")
    reordered = window_drift(profile, window[window.columns[::-1]], columns=list(window.columns[::-1]))
    assert alone.loc["cat2000", "p_value"] == whole.loc["cat2000", "p_value"]
    assert reordered.set_index("column").loc[whole.index, "p_value"].tolist() == whole["p_value"].tolist()
    assert window_drift(profile, window)["p_value"].tolist() == whole["p_value"].tolist()  # seeded: the same again


@pytest.mark.parametrize("reference_rows", [800, 20_000])
def test_the_evidently_rule_gives_the_numbers_it_always_gave(reference_rows):
    rng = np.random.default_rng(2)
    profile = reference_profile(population(rng, reference_rows))
    window = population(rng, 600)
    window["continuous"] += 0.2
    table = window_drift(profile, window, DriftThresholds(rule="evidently")).set_index("column")
    numeric = table["kind"] == "numeric"
    if reference_rows <= 1000:  # p-value tests, BH across the columns
        raw = np.where(numeric, table["ks_p"], table["chi2_p"]).astype(float)
        assert np.allclose(table["p_adjusted"], false_discovery_control(raw, method="bh"), rtol=0, atol=0)
        assert (table["drifted"] == (table["p_adjusted"] < 0.05)).all()
        assert table["test"].tolist() == np.where(numeric, "ks", "chi2").tolist()
    else:  # fixed distances
        statistic = np.where(numeric, table["wasserstein_norm"], table["jensen_shannon"]).astype(float)
        assert table["statistic"].astype(float).tolist() == statistic.tolist()
        assert (table["drifted"] == (statistic >= 0.1)).all()
        assert table["test"].tolist() == np.where(numeric, "wasserstein", "jensen_shannon").tolist()
    assert set(table["rule"]) == {"evidently"} and "calibrated_p" not in table


def test_seasonal_columns_are_reported_apart_from_the_share():
    table = pd.DataFrame({"column": ["month", "dest", "distance"], "drifted": [True, True, False]})
    found = dataset_drift(table, seasonal=["month"])
    assert (found["share"], found["names"], found["seasonal"]) == (0.5, ["dest"], ["month"])
    assert dataset_drift(table, DriftThresholds(seasonal_in_share=True), seasonal=["month"])["share"] == 2 / 3


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
