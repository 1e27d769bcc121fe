"Generated tables of the kinds users bring: each with a known signal, messy columns, and a target of its own kind."
import numpy as np
import pandas as pd


def _noise(rng, n, scale=1.0):
    return rng.normal(0, scale, n)


def binary_mixed(n: int = 600, seed: int = 0) -> pd.DataFrame:
    "Churn-like: a string target, missing values, an ID, booleans, a date, integer-coded and high-cardinality columns."
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    income = rng.gamma(3, 15_000, n)
    plan = rng.choice(["basic", "Basic ", "premium", "family"], n, p=[0.35, 0.1, 0.3, 0.25])
    region = rng.integers(1, 6, n)  # an integer-coded category
    member = rng.random(n) < 0.4
    score = (0.08 * (age - 45)) ** 2 - 1.5 + 1.2 * (np.char.strip(plan.astype(str)) == "premium") \
        - 0.8 * member + 0.5 * (region == 3) + _noise(rng, n, 0.7)
    frame = pd.DataFrame({
        "customer id": rng.permutation(n) + 10_000,  # named like an identifier
        "age": age, "monthly income": income.round(2), "plan": plan, "region code": region, "is_member": member,
        "signup date": pd.date_range("2021-01-01", periods=n, freq="13h").strftime("%Y-%m-%d"),
        "constant": 1, "referrer": [f"ref-{v}" for v in rng.integers(0, n // 2, n)],  # high cardinality
        "churned": np.where(score > 0, "yes", "no")})
    frame.loc[rng.random(n) < 0.08, "age"] = np.nan
    frame.loc[rng.random(n) < 0.05, "monthly income"] = np.nan
    frame.loc[rng.random(n) < 0.03, "plan"] = None
    return frame


def multiclass(n: int = 300, n_classes: int = 3, rare_share: float | None = None, seed: int = 0) -> pd.DataFrame:
    "Classes decided by thresholds on a nonlinear score; `rare_share` makes the last class that rare."
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    shape = rng.choice(["round", "square", "oval"], n)
    score = x1 + np.sin(2 * x2) + 0.8 * (shape == "round") + _noise(rng, n, 0.25)
    edges = np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1])
    if rare_share is not None:
        common = np.quantile(score, np.linspace(0, 1 - rare_share, n_classes)[1:-1])
        edges = np.r_[common, np.quantile(score, 1 - rare_share)]
    labels = np.array([f"class_{k}" for k in range(n_classes)])[np.searchsorted(edges, score)]
    frame = pd.DataFrame({"x1": x1, "x2": x2, "shape": shape, "weight kg": rng.uniform(1, 9, n).round(1),
                          "label": labels})
    frame.loc[rng.random(n) < 0.05, "x2"] = np.nan
    return frame


def regression(n: int = 500, scale: float = 1000.0, offset: float = 5000.0, seed: int = 0) -> pd.DataFrame:
    "A price-like target `scale` × a nonlinear signal + `offset`: thousands by default, hundredths with scale 0.01."
    rng = np.random.default_rng(seed)
    rooms = rng.integers(1, 7, n)
    area = rng.uniform(20, 200, n)
    district = rng.choice(["north", "south", "east", "west", "centre"], n)
    signal = 0.8 * rooms + 0.02 * area + np.where(district == "centre", 2.0, 0.0) + np.sin(area / 20)
    frame = pd.DataFrame({"rooms": rooms, "area m2": area.round(1), "district": district,
                          "has garden": rng.random(n) < 0.3, "target": scale * (signal + _noise(rng, n, 0.3)) + offset})
    frame.loc[rng.random(n) < 0.05, "area m2"] = np.nan
    return frame


def leaky(n: int = 400, seed: int = 0) -> pd.DataFrame:
    "A regression table in which two columns add up to the target: a leak the data stage must flag."
    rng = np.random.default_rng(seed)
    frame = regression(n, seed=seed)
    frame["base price"] = (frame["target"] * rng.uniform(0.6, 0.9, n)).round(6)
    frame["surcharge"] = frame["target"] - frame["base price"]
    return frame


CASES = {  # name → (table maker, target, task kind): the test matrix and bench/user_tables.py share these
    "binary-string-target-messy": (lambda: binary_mixed(600), "churned", "binary"),
    "3-class-300-rows": (lambda: multiclass(300), "label", "multiclass"),
    "5-class-imbalanced": (lambda: multiclass(1500, n_classes=5, rare_share=0.04), "label", "multiclass"),
    "regression-thousands": (lambda: regression(500), "target", "regression"),
    "regression-hundredths": (lambda: regression(500, scale=0.01, offset=0.05), "target", "regression"),
}
