"Training stage: resume after SIGTERM/SIGKILL, torchrun DDP, a study shared by two workers, and bad input."
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import STEP_LIMIT_S, run_command, run_together
from mllifecycle.core import ArtifactError, ParamError, Run, open_run
from mllifecycle.data import DataParams, DataError, FeaturePipeline, make_synthetic, prepare_data
from mllifecycle.train import TrainParams, load_model, train_stage

CLI = shutil.which("mllifecycle")
# Slow enough to be stopped mid-training (small batches, no early stop), fast enough for CI.
RESUMABLE = ["-p", "epochs", "12", "-p", "batch_size", "32", "-p", "patience", "100", "-p", "n_trials", "0",
             "-p", "width", "64", "-p", "num_threads", "1"]


def train_command(run_dir, *params):
    return [CLI, "train", "--run-dir", str(run_dir), "-p", "progress", "false", *params]


def train_cli(run_dir, *params, **kwargs):
    return run_command(train_command(run_dir, *params), **kwargs)


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory):
    "A run directory holding an 8,000-flight sample, prepared once and copied by each test."
    path = tmp_path_factory.mktemp("prepared") / "run"
    prepare_data(open_run(path, seed=0), DataParams(sample_rows=8000))
    return path


@pytest.fixture
def run_dir(prepared_run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(prepared_run, path)
    return path


@pytest.fixture(scope="module")
def reference_weights(prepared_run, tmp_path_factory):
    "Final weights of an uninterrupted CLI run with the RESUMABLE settings."
    path = tmp_path_factory.mktemp("reference") / "run"
    shutil.copytree(prepared_run, path)
    result = train_cli(path, *RESUMABLE)
    assert result.returncode == 0, result.stderr
    return load_file(str(path / "models/mlp/weights.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_run_resumes_to_the_same_weights(run_dir, reference_weights, signum):
    checkpoint = run_dir / "models/mlp/checkpoint.pt"
    process = subprocess.Popen(train_command(run_dir, *RESUMABLE), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    def written_checkpoints(count):  # wait (bounded) until `count` checkpoints have been written
        seen, previous, deadline = 0, None, time.time() + STEP_LIMIT_S
        while seen < count and process.poll() is None and time.time() < deadline:
            stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
            if stamp is not None and stamp != previous:
                seen, previous = seen + 1, stamp
            time.sleep(0.005)
        return seen

    assert written_checkpoints(2) == 2, process.communicate()  # the signal lands inside the third epoch
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=STEP_LIMIT_S)
    assert process.returncode != 0, "training finished before the signal; make the run slower"
    assert not (run_dir / "models/mlp/weights.safetensors").exists()
    if signum == signal.SIGTERM:
        assert process.returncode == 143 and "interrupted" in stderr and "resume" in stderr, stderr

    resumed = train_cli(run_dir, *RESUMABLE)
    assert resumed.returncode == 0, resumed.stderr
    config = Run(run_dir).read_json("models/mlp/config.json")
    assert config["training"]["resumed_from"] >= 1
    weights = load_file(str(run_dir / "models/mlp/weights.safetensors"))
    assert weights.keys() == reference_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, reference_weights[name]), name


@pytest.mark.slow
def test_torchrun_trains_with_two_cpu_processes(run_dir):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
               CLI, "train", "--run-dir", str(run_dir), "-p", "epochs", "3", "-p", "n_trials", "0",
               "-p", "progress", "false", "-p", "num_threads", "1"]
    result = run_command(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = Run(run_dir)
    config = run.read_json("models/mlp/config.json")
    assert config["training"]["world_size"] == 2
    history = run.read_json("models/mlp/history.json")
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert config["metric"]["valid"] > 0.6  # AUROC well above chance
    assert str(run_dir) in result.stdout


@pytest.mark.slow
def test_two_workers_share_one_study(run_dir):
    journal = run_dir / "shared-study.log"
    workers = run_together([train_command(
        run_dir, "-p", "n_trials", "8", "-p", "epochs", "2", "-p", "train_final", "false", "-p", "tune_worker", str(k),
        "-p", "storage", str(journal), "-p", "num_threads", "1",
        "-p", "search_space", '{"width": {"choices": [16, 32]}, "depth": 1}') for k in range(2)])
    for worker in workers:
        assert worker.returncode == 0, worker.stderr
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="mllifecycle", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert 8 <= len(finished) <= 10  # each worker stops once the study has 8; one may be mid-trial then
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers contributed
    assert not (run_dir / "models/mlp").exists()  # tuning-only workers train no final model
    # the final training joins the finished study and trains with its best parameters
    final = train_cli(run_dir, "-p", "n_trials", "8", "-p", "epochs", "2", "-p", "storage", str(journal),
                      "-p", "search_space", '{"width": {"choices": [16, 32]}, "depth": 1}')
    assert final.returncode == 0, final.stderr
    config = Run(run_dir).read_json("models/mlp/config.json")
    assert config["hyperparameters"]["width"] == study.best_params["width"]
    assert config["tuning"]["best_trial"] == study.best_trial.number


def test_same_seed_same_metrics(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    params = dict(epochs=3, n_trials=0, progress=False, width=32)
    first = train_stage(TrainParams(run_dir=str(run_dir), **params)).result
    second = train_stage(TrainParams(run_dir=str(other), **params)).result
    strip = lambda history: [{k: v for k, v in h.items() if k not in ("seconds", "train_samples_per_s")}
                             for h in history]
    assert strip(first.history) == strip(second.history)
    different = train_stage(TrainParams(run_dir=str(other), resume=False, seed=1, **params)).result
    assert strip(different.history) != strip(first.history)


# -- bad input: each is a typed error naming the problem, and leaves no model behind

@pytest.mark.parametrize("params, message", [
    ({"lr": 0}, "lr must be a finite number > 0"),
    ({"lr": -0.1}, "lr must be a finite number > 0"),
    ({"batch_size": 0}, "batch_size must be an integer ≥ 1"),
    ({"epochs": -3}, "epochs must be an integer ≥ 1"),
    ({"optimizer": "adagrad"}, "unknown optimizer 'adagrad'"),
    ({"activation": "swish"}, "unknown activation 'swish'"),
    ({"model_name": "../escape"}, "model name"),
    ({"search_space": {"lr": {"low": 1}}}, "search_space: lr"),
    ({"metric": "rmse"}, "does not apply to binary"),
    ({"amp": True}, "amp (bf16 autocast) is for CUDA devices"),
])
def test_bad_parameters_are_refused(run_dir, params, message):
    with pytest.raises(ParamError, match=re.escape(message)):
        train_stage(TrainParams(run_dir=str(run_dir), progress=False, **params))
    assert not (run_dir / "models").exists()


def test_cuda_on_a_machine_without_it_is_a_clear_error(run_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ParamError, match="CUDA is not available"):
        train_stage(TrainParams(run_dir=str(run_dir), device="cuda", progress=False))
    result = train_cli(run_dir, "-p", "device", "cuda")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("mllifecycle: error: ") and "CUDA is not available" in result.stderr


def test_unknown_cli_parameter_is_one_line(run_dir):
    result = train_cli(run_dir, "-p", "learning_rate", "0.1")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("mllifecycle: error: unknown training parameter(s) ['learning_rate']")
    assert "Traceback" not in result.stderr


def test_corrupt_checkpoint_is_refused(run_dir):
    checkpoint = run_dir / "models/mlp/checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ArtifactError, match="corrupt or not a checkpoint"):
        train_stage(TrainParams(run_dir=str(run_dir), n_trials=0, progress=False))
    assert checkpoint.read_bytes() == b"not a checkpoint at all"  # never silently overwritten
    # starting over is an explicit choice
    assert train_stage(TrainParams(run_dir=str(run_dir), n_trials=0, epochs=1, resume=False,
                                   progress=False)).result.resumed_from is None


def test_checkpoint_from_other_settings_is_refused(run_dir):
    train_stage(TrainParams(run_dir=str(run_dir), n_trials=0, epochs=2, width=32, progress=False))
    with pytest.raises(ArtifactError, match=r"different settings.*width: 32 → 64"):
        train_stage(TrainParams(run_dir=str(run_dir), n_trials=0, epochs=2, width=64, progress=False))
    # the learning-rate schedule spans all epochs, so more epochs is a different run ...
    with pytest.raises(ArtifactError, match=r"epochs: 2 → 4"):
        train_stage(TrainParams(run_dir=str(run_dir), n_trials=0, epochs=4, width=32, progress=False))
    # ... except with a constant rate, where training simply continues from the checkpoint
    constant = dict(run_dir=str(run_dir), n_trials=0, width=32, schedule="constant", patience=10, progress=False)
    train_stage(TrainParams(epochs=2, resume=False, **constant))
    longer = train_stage(TrainParams(epochs=4, **constant)).result
    assert longer.resumed_from == 2 and len(longer.history) == 4


def test_feature_pipeline_that_does_not_match_the_data(run_dir):
    other = make_synthetic(500, n_numeric=3, n_categorical=1, seed=0)
    foreign = FeaturePipeline(numeric=["num_0", "num_1", "num_2"], categorical=["cat_0"], target="delayed").fit(other)
    Run(run_dir).write_json("features/pipeline.json", foreign.to_dict())
    with pytest.raises(DataError, match="lacks column"):
        train_stage(TrainParams(run_dir=str(run_dir), n_trials=0, progress=False))


def test_model_refuses_features_from_another_pipeline(run_dir):
    stage = train_stage(TrainParams(run_dir=str(run_dir), n_trials=0, epochs=1, progress=False))
    model = load_model(stage.run, "mlp")
    frame = make_synthetic(200, n_numeric=3, n_categorical=1, seed=0)
    features = FeaturePipeline(numeric=["num_0", "num_1", "num_2"], categorical=["cat_0"]).fit_transform(frame)
    with pytest.raises(DataError, match="different feature pipeline"):
        model.predict(features)


def test_tampered_weights_are_refused(run_dir):
    stage = train_stage(TrainParams(run_dir=str(run_dir), n_trials=0, epochs=1, progress=False))
    weights = run_dir / "models/mlp/weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        load_model(stage.run, "mlp")


def test_tuning_under_torchrun_is_refused(run_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ParamError, match="tuning does not run under torchrun"):
        train_stage(TrainParams(run_dir=str(run_dir), n_trials=3, progress=False))


def test_regression_on_a_users_csv(tmp_path):
    frame = make_synthetic(3000, n_numeric=4, n_categorical=2, task="regression", seed=5)
    frame.to_csv(tmp_path / "prices.csv", index=False)
    run = open_run(tmp_path / "run", seed=0)
    prepared = prepare_data(run, DataParams(data_path=str(tmp_path / "prices.csv"), target="target"))
    assert prepared.schema.task == "regression"
    stage = train_stage(TrainParams(run_dir=str(run.path), n_trials=2, epochs=3, progress=False))
    config = run.read_json("models/mlp/config.json")
    assert config["kind"] == "regression" and config["metric"]["name"] == "rmse"
    assert stage.study is not None and len(stage.study.trials) == 2
    test = prepared.splits["test"]
    predictions = load_model(run, "mlp").predict(prepared.pipeline.transform(test))
    rmse = float(np.sqrt(np.mean((predictions - test["target"].to_numpy()) ** 2)))
    assert rmse < 0.8 * test["target"].std()  # in the target's units, and better than predicting the mean


def test_tuning_with_an_rdb_storage_url(run_dir):
    url = f"sqlite:///{run_dir / 'study.db'}"
    stage = train_stage(TrainParams(run_dir=str(run_dir), n_trials=3, epochs=2, storage=url, study_name="rdb",
                                    search_space={"width": {"choices": [16, 32]}, "depth": 1}, progress=False))
    assert len(stage.study.trials) == 3
    best = Run(run_dir).read_json("tuning/best.json")
    assert best["study_name"] == "rdb" and sum(best["trials"].values()) == 3
    assert not (run_dir / "tuning/journal.log").exists()  # the URL was used, not the default journal


def test_model_refuses_a_feature_pipeline_changed_after_training(run_dir):
    stage = train_stage(TrainParams(run_dir=str(run_dir), n_trials=0, epochs=1, progress=False))
    rows = stage.run.artifact("data/valid.parquet")
    assert len(load_model(stage.run).predict_frame(pd.read_parquet(rows))) == len(pd.read_parquet(rows))
    refit = FeaturePipeline.load(stage.run.artifact("features/pipeline.json"))
    refit.numeric_stats_[next(iter(refit.numeric_stats_))]["mean"] += 1.0  # same shape, other statistics
    stage.run.write_json("features/pipeline.json", refit.to_dict())
    with pytest.raises(ArtifactError, match="changed after model 'mlp' was trained"):
        load_model(stage.run)
