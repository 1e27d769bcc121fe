"""Retraining on a small synthetic world with a known concept drift: promotion, a challenger kept out, rollback, failure."""
import pandas as pd

from conftest import copy_registry
from mllifecycle.core import Run
from mllifecycle.retrain import retrain_and_decide, retrain_model, rollback_if_worse


def test_retraining_promotes_a_better_challenger_and_keeps_a_worse_one_out(drift_world, tmp_path):
    registry, splits = copy_registry(drift_world["registry"], tmp_path), drift_world["prepared"].splits
    champion = registry.load("champion")
    drifted = splits["stream"]  # the concept changes inside it: retraining on it helps on its latest rows
    outcome = retrain_and_decide(registry, champion, drifted, "auroc", tmp_path / "better", n_bootstrap=200)
    assert outcome.decision["action"] == "promoted", outcome.decision
    assert outcome.decision["comparison"]["gain_ci"][0] > 0  # clearly better: promotion is the one right action
    assert registry.resolve("champion") == outcome.champion.version == outcome.decision["challenger"]

    # a challenger trained on the drifted concept, judged on rows of the original one: kept out
    original = pd.concat([splits["valid"], splits["test"]]).tail(1500)
    rows = pd.concat([drifted.tail(1200), original.tail(600)], ignore_index=True)
    before = registry.resolve("champion")
    kept = retrain_and_decide(registry, outcome.champion, rows, "auroc", tmp_path / "worse", holdout_frac=0.3,
                              margin=0.0, n_bootstrap=200)
    assert kept.decision["action"] == "kept the champion" and kept.champion is None, kept.decision
    assert registry.resolve("champion") == before
    assert registry.resolve("challenger") == kept.decision["challenger"]


def test_a_promotion_that_serves_worse_is_rolled_back(drift_world, tmp_path):
    registry, splits = copy_registry(drift_world["registry"], tmp_path), drift_world["prepared"].splits
    old = registry.load("champion")
    worse = retrain_model(old, splits["stream"].tail(1000), tmp_path / "drifted")  # fits the new concept only
    version = registry.register(Run(tmp_path / "drifted"), worse.name, threshold=worse.threshold)
    registry.promote(version, "champion", reason="monitoring: test")
    worse.version = version
    decision = rollback_if_worse(registry, worse, old, splits["test"], "auroc", n_bootstrap=200)
    assert decision["action"] == "rolled back", decision
    assert decision["comparison"]["gain_ci"][1] < 0  # clearly worse on the original concept
    assert registry.resolve("champion") == old.version
    same = rollback_if_worse(registry, old, old, splits["test"], "auroc", n_bootstrap=200)
    assert same["action"] == "kept the promotion" and same["comparison"]["gain"] == 0


def test_a_failed_retraining_leaves_the_champion_untouched(drift_world, tmp_path, monkeypatch):
    import mllifecycle.retrain as retrain

    registry = copy_registry(drift_world["registry"], tmp_path)
    before, versions = registry.state()["aliases"], registry.versions()

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(retrain, "retrain_model", broken)
    outcome = retrain_and_decide(registry, registry.load("champion"), drift_world["prepared"].splits["stream"],
                                 "auroc", tmp_path / "broken")
    assert (outcome.decision["action"], outcome.champion) == ("failed", None)
    assert "out of memory" in outcome.decision["error"]
    assert registry.state()["aliases"] == before and registry.versions() == versions
    too_few = retrain_and_decide(registry, registry.load("champion"), drift_world["prepared"].splits["stream"].head(40),
                                 "auroc", tmp_path / "few")
    assert too_few.decision["action"] == "failed" and "too few" in too_few.decision["error"]
