"""Drift statistics equal scipy's and the false-alarm rate on i.i.d. windows stays within the level; the calibrated
rule: its false-alarm rate is its level at any window size and cardinality, it still catches drift (a two-category
swap included), and Evidently's rule, asked for by name, gives the numbers it always gave."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon
from scipy.stats import false_discovery_control

from mllifecycle.drift import (DriftError, DriftThresholds, categorical_statistics, category_counts, dataset_drift,
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


# --- the calibrated rule -------------------------------------------------------------------------------------

ZIPF = 1 / np.arange(1, 51) / np.sum(1 / np.arange(1, 51))
CODES = np.array([f"w{k}" for k in range(2000)])


def population(rng, rows: int) -> pd.DataFrame:
    "One population: a continuous column, one with heavy ties, and categorical columns of 2, 50 and 2,000 values."
    return pd.DataFrame({"continuous": rng.normal(size=rows), "ties": np.round(rng.gamma(2.0, 1.5, rows)),
                         "cat2": np.where(rng.random(rows) < 0.3, "a", "b"),
                         "cat50": np.array([f"v{k}" for k in range(50)])[rng.choice(50, rows, p=ZIPF)],
                         "cat2000": CODES[rng.integers(0, 2000, rows)]})


@pytest.mark.parametrize("window_rows,reference_rows", [
    (50, 20_000), (500, 20_000), pytest.param(50_000, 1_000_000, marks=pytest.mark.slow)])
def test_false_alarm_rate_is_the_level_for_every_kind_of_column(window_rows, reference_rows):
    """Under no drift, each column's flags over `n` windows are Binomial(n, level): its rate must lie within three
    binomial standard deviations of the level.

    With n = 200 windows, σ = √(0.05 × 0.95 / 200) = 0.0154 and the band is 0.05 ± 0.0462 = (0.0038, 0.0962): 1 to
    19 flags of 200. That still bounds the rate from both sides: a rule that never flags fails, and so does one that
    flags twice as often as its level. (300 windows gave (0.0123, 0.0877). Below 172 windows 3σ exceeds the level,
    the band's lower end falls below zero, and a rule that never fires would pass.)

    The permutation tests draw 199 no-drift statistics instead of the default 999: a permutation p-value
    (1 + #{draws ≥ observed}) / (draws + 1) is at most 0.05 with probability 10/200 = 0.05 under no drift (at most
    that, for a statistic with ties), so the rate tested is the same; only the p-values are coarser."""
    rng = np.random.default_rng(window_rows)
    profile = reference_profile(population(rng, reference_rows))
    n_windows, level, thresholds = 200, 0.05, DriftThresholds(calibration_draws=199)
    flags = pd.DataFrame([window_drift(profile, population(rng, window_rows), thresholds).set_index("column")["p_value"]
                          < level for _ in range(n_windows)])
    spread = 3 * np.sqrt(level * (1 - level) / n_windows)  # three binomial standard deviations
    assert round(level - spread, 4) == 0.0038 and round(level + spread, 4) == 0.0962  # the docstring's band
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
