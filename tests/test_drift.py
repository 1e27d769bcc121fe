"""Drift statistics against scipy, false-alarm rates on i.i.d. windows, and each injected drift caught by its detector."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mllifecycle.drift import (DriftError, categorical_statistics, category_counts,
                               numeric_statistics, reference_profile, window_drift)


def _numeric(reference, current):
    reference = np.sort(reference)
    edges = np.quantile(reference, np.linspace(0, 1, 11)[1:-1])
    counts = np.diff(np.searchsorted(reference, edges, "right"), prepend=0, append=len(reference))
    return numeric_statistics(reference, current, edges, counts)


@pytest.mark.parametrize("n_ref,n_cur,ties", [(800, 300, False), (5000, 12000, False), (30000, 20000, False),
                                              (2000, 3000, True), (20000, 15000, True)])
def test_numeric_statistics_equal_scipy(n_ref, n_cur, ties):
    rng = np.random.default_rng(n_ref + n_cur)
    reference, current = rng.normal(0, 1, n_ref), rng.normal(0.05, 1.1, n_cur)
    if ties:  # discrete values: many ties inside and across the samples
        reference, current = np.round(reference * 3), np.round(current * 3)
    found = _numeric(reference, current)
    ks = stats.ks_2samp(reference, current)
    assert abs(found["ks"] - ks.statistic) < 1e-12
    assert abs(found["ks_p"] - ks.pvalue) < 1e-9
    assert abs(found["wasserstein"] - stats.wasserstein_distance(reference, current)) < 1e-9


def test_numeric_statistics_skip_missing_values():
    rng = np.random.default_rng(1)
    reference, current = rng.normal(size=3000), rng.normal(size=2000)
    current[::10] = np.nan
    found = _numeric(reference, current)
    assert found["missing"] == 200 and found["rows"] == 1800
    assert abs(found["ks"] - stats.ks_2samp(reference, current[~np.isnan(current)]).statistic) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_categorical_statistics_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    reference = rng.choice(list("abcdef"), 3000, p=[0.3, 0.25, 0.2, 0.15, 0.07, 0.03])
    current = rng.choice(list("abcdeg"), 1500, p=[0.2, 0.25, 0.25, 0.15, 0.1, 0.05])  # g: unseen, f: gone
    profile = reference_profile(pd.DataFrame({"c": reference}))
    column = profile.columns["c"]
    ref_counts, cur_counts = np.r_[column["counts"], 0], category_counts(pd.Series(current), column["categories"])
    found = categorical_statistics(ref_counts, cur_counts)
    used = (ref_counts + cur_counts) > 0
    chi2 = stats.chi2_contingency(np.vstack([ref_counts[used], cur_counts[used]]), correction=False)
    assert abs(found["chi2"] - chi2.statistic) < 1e-9
    assert abs(found["chi2_p"] - chi2.pvalue) < 1e-9
    assert abs(found["jensen_shannon"] - jensenshannon(ref_counts / ref_counts.sum(),
                                                       cur_counts / cur_counts.sum())) < 1e-9


def test_two_proportion_z_test_is_chi2_on_a_2x2_table():
    ref, cur = np.array([700, 300]), np.array([330, 170])
    found = categorical_statistics(ref, cur)
    pooled = (ref[1] + cur[1]) / (ref.sum() + cur.sum())
    z = (cur[1] / cur.sum() - ref[1] / ref.sum()) / np.sqrt(pooled * (1 - pooled) * (1 / ref.sum() + 1 / cur.sum()))
    assert abs(found["chi2"] - z ** 2) < 1e-9
    assert abs(found["chi2_p"] - 2 * stats.norm.sf(abs(z))) < 1e-9


def test_false_alarm_rate_within_level_on_iid_windows():
    rng = np.random.default_rng(42)
    shares = [0.4, 0.3, 0.2, 0.1]

    def sample(n):
        return pd.DataFrame({"x": rng.gamma(2.0, 1.0, n), "c": rng.choice(list("abcd"), n, p=shares)})

    profile = reference_profile(sample(900))  # ≤ 1000 rows: the p-value tests decide
    n_windows, level = 300, 0.05
    flags = {"ks": 0, "chi2": 0, "either, after BH": 0}
    for _ in range(n_windows):
        table = window_drift(profile, sample(400)).set_index("column")
        flags["ks"] += table.loc["x", "ks_p"] < level
        flags["chi2"] += table.loc["c", "chi2_p"] < level
        flags["either, after BH"] += table["drifted"].any()
    bound = n_windows * level + 3 * np.sqrt(n_windows * level * (1 - level))  # three binomial standard deviations
    for name, count in flags.items():
        assert count <= bound, f"{name}: {count} false alarms in {n_windows} windows (bound {bound:.0f})"


def test_window_drift_bad_input():
    profile = reference_profile(pd.DataFrame({"x": np.arange(100.0), "c": ["a", "b"] * 50}))
    with pytest.raises(DriftError, match="empty"):
        window_drift(profile, pd.DataFrame({"x": [], "c": []}))
    with pytest.raises(DriftError, match="has no column"):
        window_drift(profile, pd.DataFrame({"x": [1.0]}))
    with pytest.raises(DriftError, match="no column"):
        window_drift(profile, pd.DataFrame({"x": [1.0], "c": ["a"]}), columns=["y"])
    table = window_drift(profile, pd.DataFrame({"x": [np.nan, np.nan], "c": ["zzz", None]})).set_index("column")
    assert table.loc["c", "unseen"] == 2  # a missing value is unseen too when the reference had none
    assert table.loc["x", "missing"] == 2 and np.isnan(table.loc["x", "ks"])  # no values left: no statistic


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
