"""Batch inference on a Dask `LocalCluster` of two workers: the same answers as the local engine, every row exactly
once after a worker is killed or a part fails, and one clear error for an unreachable scheduler or a bad part."""
import json
import socket

import numpy as np
import pandas as pd
import pytest

from conftest import mllifecycle
from mllifecycle.batch import MANIFEST_FILE, BatchError, predict_dataset, read_log
from mllifecycle.core import ArtifactError, EngineError, dask_client

ANSWERS = ["row", "model_version", "prediction", "probability_0", "probability_1", "timestamp"]


@pytest.fixture(scope="module")
def client():
    "A LocalCluster of two one-thread worker processes, closed when the module's tests are done."
    with dask_client("local:2", echo=None) as client:
        yield client


@pytest.fixture(scope="module")
def dataset(served_registry, tmp_path_factory):
    "The messy table's test and stream rows as three Parquet parts of 120-row groups: 6 units of work."
    frame = pd.concat([served_registry["prepared"].splits[s] for s in ("test", "stream")], ignore_index=True)
    folder = tmp_path_factory.mktemp("dataset")
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_parquet(folder / f"part-{i}.parquet", row_group_size=120)
    return folder, frame


def patch_workers(client, first_row: int, action: str, marker: str | None = None):
    "Make the workers' `score_chunk` kill its process or raise on the chunk starting at `first_row` (once, by marker)."
    def install():
        import os
        from pathlib import Path

        import mllifecycle.batch as batch

        original = getattr(batch, "_unpatched_score_chunk", batch.score_chunk)
        batch._unpatched_score_chunk = original

        def score_chunk(*args, first, **kwargs):
            if first == first_row and (marker is None or not Path(marker).exists()):
                if marker is not None:
                    Path(marker).touch()
                if action == "kill":
                    os._exit(1)
                raise batch.BatchError("injected failure")
            return original(*args, first=first, **kwargs)

        batch.score_chunk = score_chunk

    client.run(install)


def unpatch_workers(client):
    def restore():
        import mllifecycle.batch as batch

        batch.score_chunk = getattr(batch, "_unpatched_score_chunk", batch.score_chunk)

    client.run(restore)


def every_row_once(log: pd.DataFrame, rows: int):
    np.testing.assert_array_equal(np.sort(log["row"].to_numpy()), np.arange(rows))


@pytest.mark.parametrize("ref", ["champion", 2])  # HGB and torch
def test_dask_output_equals_the_local_output_row_for_row(served_registry, dataset, client, tmp_path, ref):
    folder, frame = dataset
    options = dict(inputs=True, time_column="timestamp", chunk_rows=50, progress=False)
    local = predict_dataset(served_registry["root"], ref, folder, tmp_path / "local", **options)
    on_dask = predict_dataset(served_registry["root"], ref, folder, tmp_path / "dask", client=client, **options)
    assert local["rows"] == on_dask["rows"] == len(frame) and local["parts"] == on_dask["parts"] == 6
    expected, found = read_log(tmp_path / "local"), read_log(tmp_path / "dask")
    columns = [c for c in expected.columns if c not in ("request_id", "latency_ms")]
    pd.testing.assert_frame_equal(found[columns], expected[columns])  # exactly: same values, same order
    manifest = json.loads((tmp_path / "dask" / MANIFEST_FILE).read_text())
    assert manifest["rows"] == len(frame) and sum(p["rows"] for p in manifest["parts"]) == len(frame)
    assert manifest["model_version"] == served_registry["versions"][0 if ref == "champion" else 1]


def test_a_worker_killed_mid_job_loses_and_repeats_no_row(served_registry, dataset, client, tmp_path):
    folder, frame = dataset
    marker = tmp_path / "killed"
    patch_workers(client, first_row=320, action="kill", marker=str(marker))
    try:
        done = predict_dataset(served_registry["root"], 1, folder, tmp_path / "out", client=client, progress=False)
    finally:
        unpatch_workers(client)
    assert marker.exists()  # a worker did die on the unit of rows 320–399, and Dask ran that unit again
    assert done["rows"] == len(frame)
    every_row_once(read_log(tmp_path / "out"), len(frame))
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_a_failed_part_leaves_the_finished_parts_and_a_rerun_completes_the_job(served_registry, dataset, client,
                                                                             tmp_path):
    folder, frame = dataset
    out = tmp_path / "out"
    last = 520  # the last unit's first row (part-2.parquet's second row group)
    patch_workers(client, first_row=last, action="raise")
    try:
        with pytest.raises(BatchError, match=r"unit 5 \(part-2.parquet, row group 1\) failed: .*injected failure.*run the job again"):
            predict_dataset(served_registry["root"], 1, folder, out, client=client, progress=False)
    finally:
        unpatch_workers(client)
    assert not (out / MANIFEST_FILE).exists() and len(list(out.glob("part-*.parquet"))) >= 1
    with pytest.raises(ArtifactError, match="unfinished batch job"):
        read_log(out)  # half a job is never read as a whole log
    done = predict_dataset(served_registry["root"], 1, folder, out, client=client, progress=False)
    assert done["skipped"] >= 1 and done["rows"] == len(frame)
    every_row_once(read_log(out), len(frame))


def test_a_damaged_part_is_scored_again_and_another_job_is_refused(served_registry, dataset, tmp_path):
    folder, frame = dataset
    out = tmp_path / "out"
    first = predict_dataset(served_registry["root"], 1, folder, out, progress=False)
    part = out / "part-00004.parquet"
    part.write_bytes(part.read_bytes()[:-20])
    again = predict_dataset(served_registry["root"], 1, folder, out, progress=False)
    assert again["skipped"] == first["parts"] - 1  # only the damaged part was scored again
    every_row_once(read_log(out), len(frame))
    with pytest.raises(BatchError, match="holds another job .*differs in version"):
        predict_dataset(served_registry["root"], 3, folder, out, progress=False)


def test_a_corrupt_or_mixed_part_is_an_error_before_any_output(served_registry, dataset, client, tmp_path):
    folder, frame = dataset
    bad = tmp_path / "bad"
    bad.mkdir()
    frame.iloc[:100].to_parquet(bad / "a.parquet")
    frame.iloc[100:].astype({"num_1": str}).to_parquet(bad / "b.parquet")
    with pytest.raises(BatchError, match="column 'num_1' holds text in input part .*b.parquet but numbers"):
        predict_dataset(served_registry["root"], 1, bad, tmp_path / "out", client=client, progress=False)
    (bad / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(BatchError, match="b.parquet is not a readable Parquet file"):
        predict_dataset(served_registry["root"], 1, bad, tmp_path / "out", client=client, progress=False)
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_one_clear_line(served_registry, dataset, tmp_path):
    folder, _ = dataset
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EngineError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        with dask_client(f"tcp://127.0.0.1:{port}", timeout=1, echo=None):
            pass
    done = mllifecycle("predict", "--registry", served_registry["root"], "--input", folder, "--output",
                       tmp_path / "out", "--engine", "dask", "--scheduler", f"tcp://127.0.0.1:{port}", cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_predict_on_a_local_cluster_writes_a_finished_folder(served_registry, dataset, tmp_path):
    folder, frame = dataset
    done = mllifecycle("predict", "--registry", served_registry["root"], "--input", str(folder / "*.parquet"),
                       "--output", tmp_path / "scored", "--engine", "dask", "--scheduler", "local:2", "--no-progress",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "dask: 2 worker(s)" in done.stdout and f"{len(frame):,} rows → " in done.stdout
    every_row_once(read_log(tmp_path / "scored"), len(frame))


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


def test_dask_drift_equals_the_local_drift_exactly(drift_world, log_parts, client, tmp_path):
    from mllifecycle.monitor import monitor_log

    _, local = monitor_log(monitor_params(drift_world, log_parts), run_dir=tmp_path / "local")
    run, on_dask = monitor_log(monitor_params(drift_world, log_parts), run_dir=tmp_path / "dask", client=client)
    assert len(local.drift) > 0 and local.drift["window"].nunique() >= 3
    pd.testing.assert_frame_equal(on_dask.drift, local.drift)
    pd.testing.assert_frame_equal(on_dask.windows, local.windows)
    assert [a["signal"] for a in on_dask.alerts] == [a["signal"] for a in local.alerts]
    assert run.exists("monitoring/drift.json")


def test_dask_drift_from_sketches_stays_within_the_stated_bound(drift_world, log_parts, client, tmp_path):
    from mllifecycle.monitor import monitor_log

    _, local = monitor_log(monitor_params(drift_world, log_parts), run_dir=tmp_path / "local")
    _, sketched = monitor_log(monitor_params(drift_world, log_parts, exact_values=0), run_dir=tmp_path / "dask",
                              client=client)
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


def test_cli_monitor_on_a_local_cluster(drift_world, log_parts, tmp_path):
    done = mllifecycle("monitor", "--registry", drift_world["registry"].root, "--log", log_parts, "--window", "2D",
                       "--label-delay", "1D", "--multivariate", "false", "--out", tmp_path / "out", "--engine", "dask",
                       "--scheduler", "local:2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "dask: 2 worker(s)" in done.stdout and "windows of 2D" in done.stdout
    assert (tmp_path / "out" / "monitoring" / "drift.json").exists()
