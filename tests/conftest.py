"Shared fixtures: small real and synthetic datasets written to a temporary folder, and the default run."
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

LIFECYCLE = ("core", "data", "train", "registry", "validate", "batch", "serve", "deploy", "drift", "retrain", "monitor",
             "report", "tracking", "pipeline", "runs", "cli")  # the modules (and chapters) in lifecycle order: each imports only earlier ones


@pytest.fixture
def synthetic_csv(tmp_path):
    "A 3,000-row synthetic CSV with a timestamp, numerics, categoricals and a binary target `y`."
    from mllifecycle.data import make_synthetic

    df = make_synthetic(3000, n_numeric=5, n_categorical=3, seed=3).rename(columns={"target": "y"})
    path = tmp_path / "synthetic.csv"
    df.to_csv(path, index=False)
    return path


def artifact_files(run_dir):
    "Every file under a run directory except the executed notebooks of the report and the writers' lock files."
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.is_file() and "report" not in p.relative_to(run_dir).parts and not p.name.endswith(".lock"))


def messy_table(n_rows: int = 1500, seed: int = 11):
    "Every column kind serving must handle: numerics with gaps, a boolean, text with gaps, a timestamp, a key."
    import numpy as np

    from mllifecycle.data import make_synthetic

    df = make_synthetic(n_rows, n_numeric=3, n_categorical=2, missing_frac=0.05, seed=seed)
    rng = np.random.default_rng(seed)
    df["flag"] = rng.random(n_rows) < 0.3
    df.loc[rng.random(n_rows) < 0.05, "cat_1"] = None
    df["order_id"] = np.arange(n_rows) + 10_000
    return df


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory):
    "A registry holding an HGB model (v1, champion), a torch network (v2) and a second HGB (v3) of the messy table."
    from sklearn.ensemble import HistGradientBoostingClassifier

    from mllifecycle.core import open_run
    from mllifecycle.data import DataParams, prepare_data
    from mllifecycle.registry import Registry, categorical_mask, features_matrix, save_sklearn_model
    from mllifecycle.train import TrainConfig, fit, save_model

    root = tmp_path_factory.mktemp("served")
    messy_table().to_csv(root / "messy.csv", index=False)
    run = open_run(root / "run")
    prepared = prepare_data(run, DataParams(data_path=str(root / "messy.csv"), target="target",
                                            id_columns=["order_id"], derived={"ratio": "num_0 / (num_1 + 3)"}))
    train, valid = (prepared.pipeline.transform(prepared.splits[s]) for s in ("train", "valid"))
    classes = prepared.pipeline.classes_
    for name, iterations in (("hgb", 20), ("hgb_b", 5)):
        model = HistGradientBoostingClassifier(max_iter=iterations, categorical_features=categorical_mask(train),
                                               random_state=0)
        save_sklearn_model(run, name, model.fit(features_matrix(train), train.target), "binary", classes)
    save_model(run, "net", fit(train, valid, TrainConfig(epochs=2), classes=classes, device="cpu", progress=False))
    registry = Registry(root / "registry")
    versions = [registry.register(run, "hgb", threshold=0.4), registry.register(run, "net"),
                registry.register(run, "hgb_b")]
    registry.promote(versions[0])
    registry.promote(versions[1], alias="challenger")
    return {"root": registry.root, "run": run, "prepared": prepared, "versions": versions}


@pytest.fixture(scope="session")
def drift_world(tmp_path_factory):
    "A run on 8,000 synthetic rows (concept drift at 85%), an HGB champion in a registry, and the stream's batch log."
    from sklearn.ensemble import HistGradientBoostingClassifier

    from mllifecycle.batch import predict_file, read_log
    from mllifecycle.core import open_run
    from mllifecycle.data import DataParams, make_synthetic, prepare_data
    from mllifecycle.registry import Registry, categorical_mask, features_matrix, save_sklearn_model

    root = tmp_path_factory.mktemp("monitor")
    make_synthetic(8000, n_numeric=4, n_categorical=2, drift="concept", drift_start=0.85, freq="10min", seed=3) \
        .to_csv(root / "data.csv", index=False)
    run = open_run(root / "run")
    prepared = prepare_data(run, DataParams(data_path=str(root / "data.csv"), target="target"))
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


def chromium() -> str | None:
    "Debian's Chromium (or $CHROMIUM); None when there is no browser to drive."
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def launch_chromium(playwright):
    "Chromium through Playwright, headless, with its own calls home turned off (so a test sees only the page's)."
    return playwright.chromium.launch(executable_path=chromium(), args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


def copy_registry(registry, folder):
    "A copy of `registry` under `folder`, for a test that moves its aliases."
    from mllifecycle.registry import Registry

    shutil.copytree(registry.root, Path(folder) / "registry")
    return Registry(Path(folder) / "registry")


# How long a step of a test's command may go without progress before the test calls it a hang. A step is one stage
# of `mllifecycle run` (each "[k/n] stage: …" line starts the next) or the whole of any other command, so a run's
# limit grows with its stages. Generous: a default train stage takes about 30 s on a quiet two-core machine and was
# seen at 430 s on a busy one. Set MLLIFECYCLE_TEST_STEP_S to change it.
STEP_LIMIT_S = float(os.environ.get("MLLIFECYCLE_TEST_STEP_S", 1800))
STAGE_LINE = re.compile(r"^\[\d+/\d+\] (\S+): (running|ok|failed)\b")


def run_command(command, *, cwd=None, env=None, limit_s=STEP_LIMIT_S):
    """Run `command` to its end and return its `CompletedProcess` (text output captured), as `subprocess.run` does.

    A step that shows no progress for `limit_s` seconds is a hang: the command and every process it started (a
    notebook's kernel, torchrun's workers) are killed and the test fails, naming the command and the stage."""
    process = subprocess.Popen([str(c) for c in command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    out, err, step = [], [], {"since": time.monotonic(), "stage": None}

    def read(stream, lines):
        for line in stream:
            lines.append(line)
            if match := STAGE_LINE.match(line):
                step.update(since=time.monotonic(), stage=match[1] if match[2] == "running" else None)

    readers = [threading.Thread(target=read, args=(process.stdout, out), daemon=True),
               threading.Thread(target=read, args=(process.stderr, err), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        while process.poll() is None and time.monotonic() - step["since"] < limit_s:
            time.sleep(0.2)
    finally:  # a hang, or the test interrupted: nothing it started outlives it
        hung = process.poll() is None
        if hung:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for reader in readers:
            reader.join(timeout=10)
    if hung:
        name = " ".join([Path(str(command[0])).name, *map(str, command[1:])])[:300]
        where = f" in its {step['stage']} stage" if step["stage"] else ""
        tail = ("".join(out)[-1000:] + "".join(err)[-2000:]).strip()
        pytest.fail(f"`{name}` hung{where}: no progress for {limit_s:.0f} s (MLLIFECYCLE_TEST_STEP_S); "
                    f"its last output:\n{tail}", pytrace=False)
    return subprocess.CompletedProcess(command, process.returncode, "".join(out), "".join(err))


def run_together(commands, **kwargs):
    "Run `commands` at the same time, each with `run_command`; their `CompletedProcess`es in order."
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: run_command(command, **kwargs), commands))


def mllifecycle(*args, cwd, **kwargs):
    "Run the installed console script, as a user would."
    return run_command([shutil.which("mllifecycle"), *args], cwd=cwd, **kwargs)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    "`mllifecycle run` with no arguments, as a new user runs it first: its working directory, run directory and output."
    cwd = tmp_path_factory.mktemp("default")
    result = mllifecycle("run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(cwd=cwd, run_dir=Path(result.stdout.strip().splitlines()[-1]), result=result)
