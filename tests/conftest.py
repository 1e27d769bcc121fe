"""Shared fixtures: small real and synthetic datasets written to a temporary folder; the default run, the small
profile (tests/small.yaml) and its run; a validated run; a folder of runs; a Dask cluster; the command runners."""
import functools
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

# As the `mllifecycle` command does for its own process: without jsonschema's IRI checker, whose import builds parsers
# for seconds in each pytest process that imports papermill or nbconvert (see `mllifecycle.cli.without_iri_checker`).
from mllifecycle.cli import without_iri_checker  # noqa: E402

without_iri_checker()

LIFECYCLE = ("core", "data", "train", "registry", "validate", "batch", "serve", "deploy", "drift", "retrain", "monitor",
             "report", "tracking", "pipeline", "runs", "cli")  # the modules (and chapters) in lifecycle order: each imports only earlier ones


# Under `pytest -n 2 --dist loadgroup` (the README's test command) each xdist worker builds its own session fixtures.
# The tests that share an expensive one go to one worker, so it is built once: fixture → the group of its tests.
SHARED_FIXTURES = {"default_run": "default-run", "runs_world": "default-run", "failed_run": "default-run",
                   "small_run": "small-run", "site": "docs-site", "dask_cluster": "dask", "reference_weights": "resume"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(config, items):
    "Put each test that uses a fixture of `SHARED_FIXTURES` in that fixture's xdist group."
    for item in items:
        group = next((g for fixture, g in SHARED_FIXTURES.items() if fixture in item.fixturenames), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True, scope="module")
def math_threads_restored():
    """Each test module starts with the math threads the session started with: a server built in-process pins
    PyTorch and the OpenMP/BLAS pools to its `threads`, and a model trained on other threads sums in another order."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch_threads, pools = torch.get_num_threads(), threadpool_info()
    yield
    torch.set_num_threads(torch_threads)
    threadpool_limits(limits=pools)


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


def wait_for(predicate, seconds: float = 120.0, what: str = "the condition", every: float = 0.02):
    "Poll `predicate` until it is true; fail the test, naming `what`, if it is not within `seconds`."
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(every)


def run_together(commands, **kwargs):
    "Run `commands` at the same time, each with `run_command`; their `CompletedProcess`es in order."
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: run_command(command, **kwargs), commands))


def mllifecycle(*args, cwd, **kwargs):
    "Run the installed console script, as a user would."
    return run_command([shutil.which("mllifecycle"), *args], cwd=cwd, **kwargs)


@pytest.fixture
def mllifecycle_here(capsys, monkeypatch):
    """`mllifecycle ARGS` in this process, from `cwd`: the `main` the console script calls, without the seconds a
    new Python process spends importing; its exit status and output as a `CompletedProcess`."""
    from mllifecycle.cli import main

    def call(*args, cwd):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        status = main([str(a) for a in args])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["mllifecycle", *map(str, args)], status, out.out, out.err)

    return call


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """`mllifecycle run` with no arguments, as a new user runs it first: its working directory, run directory and
    output. The suite's one run of the default parameters: every test that needs them only reads it (or a copy)."""
    cwd = tmp_path_factory.mktemp("default")
    result = mllifecycle("run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(cwd=cwd, run_dir=Path(result.stdout.strip().splitlines()[-1]), result=result)


SMALL_PROFILE = Path(__file__).with_name("small.yaml")


@functools.cache
def stage_parameters() -> dict[str, set[str]]:
    "Each stage's parameter names, read from its notebook's parameters cell as `mllifecycle run` reads them."
    from mllifecycle.pipeline import find_stages

    return {stage.name: set(stage.parameters) for stage in find_stages()}


def small_params(stages: str | None = None) -> dict:
    "The small profile's parameters that the stages of `--stages` (comma-separated; None: all) take."
    import yaml

    profile = yaml.safe_load(SMALL_PROFILE.read_text(encoding="utf-8"))
    names = stage_parameters()
    taken = set().union(*(names[s] for s in (stages.split(",") if stages else names)))
    return {k: v for k, v in profile.items() if k in taken}


def small_profile(folder, stages: str | None = None) -> Path:
    """The small profile as a parameters file for `mllifecycle run --params` in `folder`, holding what the stages
    of `--stages` take (a run refuses parameters none of its stages takes)."""
    import yaml

    path = Path(folder) / f"small-{(stages or 'all').replace(',', '-')}.yaml"
    path.write_text(yaml.safe_dump(small_params(stages), sort_keys=False), encoding="utf-8")
    return path


def small_run_command(cwd, *args, stages: str | None = None):
    "`mllifecycle run --params <the small profile> ARGS` (with `--stages STAGES` when given), as a user types it."
    where = ["--stages", stages] if stages else []
    return mllifecycle("run", "--params", small_profile(cwd, stages), *where, *args, cwd=cwd)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    "`mllifecycle run` on the flights with the small profile, all five stages: shared by the tests that read a run."
    cwd = tmp_path_factory.mktemp("small")
    result = small_run_command(cwd)
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(cwd=cwd, run_dir=Path(result.stdout.strip().splitlines()[-1]), result=result)


QUICK_VALIDATION = dict(candidate_epochs=4, cv_folds=2, n_bootstrap=200, device="cpu")  # validate_stage in tests


@pytest.fixture(scope="session")
def validated(tmp_path_factory):
    "A 6,000-flight run, trained and validated once; its registry lives beside it (the registry tests copy it)."
    from mllifecycle.core import open_run
    from mllifecycle.data import DataParams, prepare_data
    from mllifecycle.train import TrainParams, train_stage
    from mllifecycle.validate import ValidateParams, validate_stage

    root = tmp_path_factory.mktemp("validated")
    run = open_run(root / "run", seed=0)
    prepare_data(run, DataParams(sample_rows=6000))
    train_stage(TrainParams(run_dir=str(run.path), epochs=4, n_trials=0, progress=False, device="cpu"))
    stage = validate_stage(ValidateParams(run_dir=str(run.path), registry_dir=str(root / "registry"),
                                          **QUICK_VALIDATION))
    return root, stage


def closed_port_url() -> str:
    "A loopback URL nothing listens on."
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


QUICK_RUN = ["-p", "n_trials", "0", "-p", "epochs", "2", "-p", "cv_folds", "0"]  # a quick run: no tuning, no CV


@pytest.fixture(scope="session")
def failed_run(tmp_path_factory):
    "A run whose data stage failed (`-p target nope`): its record says so, and it has no results."
    work = tmp_path_factory.mktemp("failed")
    failed = mllifecycle("run", "--run-dir", "failed", "-p", "target", "nope", cwd=work)
    assert failed.returncode == 1 and "target column 'nope' not found" in failed.stderr, failed.stderr
    return work / "failed"


@pytest.fixture(scope="session")
def runs_world(default_run, failed_run, tmp_path_factory):
    """A folder of runs sharing one registry: a copy of the default run; the same data with other parameters
    (tracked to a server that is not there), whose model becomes the registry's champion; another table (tracked
    to a SQLite store), whose model is refused as champion because it is a model of other data; a failed run."""
    from mllifecycle.data import make_synthetic

    work = tmp_path_factory.mktemp("runs_world")
    root = work / "runs"
    shutil.copytree(default_run.run_dir, root / default_run.run_dir.name)
    same_data = mllifecycle("run", "--runs-root", "runs", "--run-dir", "runs/same-data", "--stages",
                            "data,train,validate", *QUICK_RUN, "-p", "candidates", '["mlp", "linear"]',
                            "-p", "tracking_uri", closed_port_url(), cwd=work)
    assert same_data.returncode == 0, same_data.stderr
    table = make_synthetic(3000, n_numeric=5, n_categorical=3, seed=3).rename(columns={"target": "y"})
    table.to_csv(work / "other.csv", index=False)
    store = work / "mlflow" / "mlflow.db"
    store.parent.mkdir()
    other = mllifecycle("run", "--runs-root", "runs", "--run-dir", "runs/other-table", "--stages", "data,train,validate",
                        *QUICK_RUN, "-p", "data_path", "other.csv", "-p", "target", "y", "-p", "tracking_uri",
                        f"sqlite:///{store}", cwd=work)
    assert other.returncode == 0, other.stderr
    shutil.copytree(failed_run, root / "failed")
    return SimpleNamespace(work=work, root=root, default=root / default_run.run_dir.name, same=root / "same-data",
                           other=root / "other-table", failed=root / "failed", store=store, same_result=same_data,
                           other_result=other)


@pytest.fixture(scope="session")
def dask_cluster():
    "A Dask LocalCluster of two one-thread worker processes and its client, closed at the end of the session."
    from mllifecycle.core import dask_client

    with dask_client("local:2", echo=None) as client:
        yield client
