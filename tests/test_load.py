"""Results do not depend on the machine's load: the same table and seed give the same winner and the same metrics
with two CPU-burning processes beside the job."""
import json
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest

from mllifecycle.data import DataParams, data_stage, make_synthetic
from mllifecycle.train import TrainParams, train_stage
from mllifecycle.validate import ValidateParams, validate_stage

BURNERS = 2
LATENCY_COLUMNS = ["latency_ms_per_row", "latency_ms_single"]  # measurements of the machine: compared apart


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A run of the data and training stages (no tuning, two epochs) on a 3,000-row synthetic table."
    root = tmp_path_factory.mktemp("load")
    make_synthetic(3000, n_numeric=5, n_categorical=3, seed=3).to_csv(root / "table.csv", index=False)
    data_stage(DataParams(run_dir=str(root / "base"), data_path=str(root / "table.csv"), target="target"))
    train_stage(TrainParams(run_dir=str(root / "base"), n_trials=0, epochs=2, device="cpu", progress=False))
    return root


def validate_copy(root, name, **limits):
    "Validate a copy of the trained run (its own registry): the selection, the metrics and the comparison table."
    shutil.copytree(root / "base", root / name)
    validate_stage(ValidateParams(run_dir=str(root / name), device="cpu", cv_folds=2, n_bootstrap=200,
                                  registry_dir=str(root / f"{name}-registry"), **limits))
    read = lambda relative: json.loads((root / name / "validation" / relative).read_text())
    return read("selection.json"), read("metrics.json"), pd.read_csv(root / name / "validation" / "comparison.csv")


def burning(count):
    "Start `count` processes that each keep a core busy."
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def test_a_busy_machine_changes_neither_the_winner_nor_the_metrics(trained):
    quiet_selection, quiet_metrics, quiet_table = validate_copy(trained, "quiet")
    # a latency limit the quiet figures meet with half to spare: a busy machine must not push a candidate past it
    limit = 1.5 * float(quiet_table["latency_ms_per_row"].max())
    burners = burning(BURNERS)
    try:
        time.sleep(0.5)
        assert all(p.poll() is None for p in burners)  # they are running
        busy_selection, busy_metrics, busy_table = validate_copy(trained, "busy", max_latency_ms=limit)
    finally:
        for p in burners:
            p.kill()
            p.wait(timeout=10)
    assert busy_selection["winner"] == quiet_selection["winner"]
    assert {c["status"] for c in busy_selection["candidates"].values()} <= {"selected", "lost"}  # none pushed out
    assert busy_metrics == quiet_metrics  # identical, not merely close
    pd.testing.assert_frame_equal(busy_table.drop(columns=LATENCY_COLUMNS), quiet_table.drop(columns=LATENCY_COLUMNS))
