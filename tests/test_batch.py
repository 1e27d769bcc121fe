"""Batch inference: the same answers as `Predictor.predict`, in parts that add up, and a clear error with no output
file on a corrupt or bad input; `predict --time-column` on nanosecond and zoned times; a killed job leaves nothing
behind once rerun; a job in parts on a Dask LocalCluster gives the local answers, every row once, whatever fails."""
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import mllifecycle, run_command, wait_for
from mllifecycle.batch import MANIFEST_FILE, BatchError, log_inputs, predict_dataset, predict_file, read_log
from mllifecycle.core import ArtifactError, EngineError, dask_client
from mllifecycle.data import DataError
from mllifecycle.registry import Registry


@pytest.fixture(scope="module")
def scoring(served_registry):
    registry = Registry(served_registry["root"])
    frame = pd.concat([served_registry["prepared"].splits[s] for s in ("test", "stream")], ignore_index=True)
    return registry, frame


@pytest.mark.parametrize("ref", ["champion", 2])  # HGB and torch
def test_parquet_and_csv_give_predictors_answers(scoring, tmp_path, ref):
    registry, frame = scoring
    predictor = registry.load(ref)
    frame.to_parquet(tmp_path / "in.parquet", row_group_size=97)
    frame.to_csv(tmp_path / "in.csv", index=False)
    expected = predictor.predict(frame)
    for source in ("in.parquet", "in.csv"):
        done = predict_file(predictor, tmp_path / source, tmp_path / f"{source}.out.parquet", chunk_rows=50,
                            inputs=True, progress=False)
        out = read_log(done["output"])
        assert done["rows"] == len(frame) == len(out)
        assert list(out["prediction"]) == list(expected.predictions)
        np.testing.assert_allclose(out["probability_1"], expected.probabilities[:, 1], rtol=1e-6)
        assert (out["key.order_id"] == frame["order_id"].astype(str)).all()  # keys kept, as text
        assert (out["row"] == np.arange(len(frame))).all() and (out["model_version"] == predictor.version).all()
        pd.testing.assert_series_equal(log_inputs(out)["cat_0"], frame["cat_0"].astype(object), check_names=False,
                                       check_dtype=False)


def test_parts_split_a_folder_of_parquet_files_exactly(scoring, tmp_path):
    registry, frame = scoring
    predictor = registry.load("champion")
    (tmp_path / "parts").mkdir()
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 3)):
        frame.iloc[rows].to_parquet(tmp_path / "parts" / f"part-{i}.parquet", row_group_size=100)
    outputs = [read_log(predict_file(predictor, tmp_path / "parts", tmp_path / f"out-{i}.parquet", part=f"{i}/4",
                                     progress=False)["output"]) for i in (1, 2, 3, 4)]
    rows = np.sort(np.concatenate([o["row"].to_numpy() for o in outputs]))
    np.testing.assert_array_equal(rows, np.arange(len(frame)))  # every row exactly once
    merged = pd.concat(outputs).sort_values("row")
    np.testing.assert_allclose(merged["probability_1"], predictor.predict(frame).probabilities[:, 1], rtol=1e-6)


def test_a_truncated_parquet_file_is_a_clear_error_and_no_output(scoring, tmp_path):
    registry, frame = scoring
    frame.to_parquet(tmp_path / "in.parquet")
    data = (tmp_path / "in.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.parquet is not a readable Parquet file"):
        predict_file(registry.load("champion"), tmp_path / "cut.parquet", tmp_path / "out.parquet", progress=False)
    assert not (tmp_path / "out.parquet").exists() and not list(tmp_path.glob(".out.parquet*"))


def test_a_csv_with_a_bad_row_names_the_rows_and_leaves_no_output(scoring, tmp_path):
    registry, frame = scoring
    frame.head(300).to_csv(tmp_path / "in.csv", index=False)
    lines = (tmp_path / "in.csv").read_text().splitlines()
    lines[120] = lines[120] + ",an,extra,field"  # a row with too many fields
    (tmp_path / "ragged.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="ragged.csv cannot be read as CSV.*line 121"):
        predict_file(registry.load("champion"), tmp_path / "ragged.csv", tmp_path / "out.parquet", chunk_rows=50,
                     progress=False)
    bad = frame.head(300).astype({"num_1": str})
    bad.loc[bad.index[170], "num_1"] = "twelve"
    bad.to_csv(tmp_path / "typo.csv", index=False)
    with pytest.raises(DataError, match=r"rows 150–199 of typo.csv.*'num_1'.*'twelve'"):
        predict_file(registry.load("champion"), tmp_path / "typo.csv", tmp_path / "out.parquet", chunk_rows=50,
                     progress=False)
    (tmp_path / "old.parquet").write_bytes(b"an existing output")
    with pytest.raises(DataError):
        predict_file(registry.load("champion"), tmp_path / "typo.csv", tmp_path / "old.parquet", chunk_rows=50,
                     progress=False)
    assert (tmp_path / "old.parquet").read_bytes() == b"an existing output"  # never corrupted
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_predict_command(scoring, tmp_path, mllifecycle_here):
    "The console script scores a file; bad input is one readable line each (run in-process: no imports to wait on)."
    registry, frame = scoring
    frame.head(100).to_parquet(tmp_path / "in.parquet")
    ok = mllifecycle("predict", "--registry", str(registry.root), "--input", "in.parquet", "--output", "out.parquet",
                     "--no-progress", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "100 rows" in ok.stdout and len(pq.read_table(tmp_path / "out.parquet")) == 100
    for args, fragment in ((["--input", "nowhere.parquet"], "does not exist"),
                           (["--input", "in.parquet", "--part", "5/4"], "between 1 and N"),
                           (["--input", "in.parquet", "--alias", "nobody"], "no version has alias 'nobody'")):
        bad = mllifecycle_here("predict", "--registry", str(registry.root), "--output", "x.parquet", *args,
                               cwd=tmp_path)
        assert bad.returncode == 1 and fragment in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (tmp_path / "x.parquet").exists()
    missing = mllifecycle_here("serve", "--registry", str(tmp_path / "no-registry"), cwd=tmp_path)
    assert missing.returncode == 1 and "no model registry" in missing.stderr


# --- predict --time-column on nanosecond and zoned timestamps -------------------------------------------------

@pytest.fixture(scope="module")
def scoring_input(served_registry, tmp_path_factory):
    "The messy table's test rows as pandas writes them: nanosecond timestamps, one a sub-microsecond value."
    folder = tmp_path_factory.mktemp("scoring")
    frame = served_registry["prepared"].splits["test"].reset_index(drop=True).copy()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_localize(None).astype("datetime64[ns]") + pd.to_timedelta(
        np.arange(len(frame)), unit="ns")
    frame.to_parquet(folder / "ns.parquet")
    return {"folder": folder, "frame": frame}


@pytest.mark.slow
@pytest.mark.parametrize("zone", [None, "America/New_York"])
def test_predict_takes_nanosecond_and_zoned_time_columns(served_registry, scoring_input, tmp_path, zone):
    frame = scoring_input["frame"].copy()
    if zone:
        frame["timestamp"] = frame["timestamp"].dt.tz_localize("UTC").dt.tz_convert(zone)
    frame.to_parquet(tmp_path / "in.parquet")
    result = mllifecycle("predict", "--registry", str(served_registry["root"]), "--input", "in.parquet", "--output",
                         "out.parquet", "--inputs", "--time-column", "timestamp", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    log = read_log(tmp_path / "out.parquet")
    expected = pd.to_datetime(frame["timestamp"], utc=True).dt.floor("us")
    assert (log["timestamp"].reset_index(drop=True) == expected.astype("datetime64[us, UTC]")).all()


@pytest.mark.slow
def test_predict_refuses_a_time_column_it_cannot_read(served_registry, scoring_input, tmp_path, mllifecycle_here):
    frame = scoring_input["frame"].assign(when=np.arange(len(scoring_input["frame"])))
    frame.to_parquet(tmp_path / "in.parquet")
    base = ["predict", "--registry", str(served_registry["root"]), "--input", "in.parquet", "--output", "out.parquet",
            "--no-progress"]
    for column, fragment in (("when", "column 'when' holds numbers"), ("nope", "no column 'nope'")):
        result = mllifecycle_here(*base, "--time-column", column, cwd=tmp_path)
        assert result.returncode == 1 and fragment in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]  # no output, no temporary


# --- a killed predict leaves nothing behind --------------------------------------------------------------------

def big_input(served_registry, path: Path, copies: int = 150) -> Path:
    frame = served_registry["prepared"].splits["test"]
    pd.concat([frame] * copies, ignore_index=True).to_parquet(path, row_group_size=20_000)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_predict_leaves_no_temporary_file_after_the_rerun(served_registry, tmp_path, sig):
    source = big_input(served_registry, tmp_path / "big.parquet")
    script = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
              "from mllifecycle.cli import main; sys.exit(main())")
    command = [sys.executable, "-c", script, "predict", "--registry", str(served_registry["root"]), "--input",
               str(source), "--output", str(tmp_path / "scored.parquet"), "--chunk-rows", "2000", "--no-progress"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(tmp_path.glob(".scored.parquet.*.tmp")) or process.poll() is not None,
                 what="the job's temporary file")
        assert process.poll() is None, "the job finished before it could be killed: give it more rows"
        process.send_signal(sig)
        try:
            status = process.wait(60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack, for the failure message
            try:
                stderr = process.communicate(timeout=2)[1]  # what it writes while it has not exited
            except subprocess.TimeoutExpired:
                process.kill()
                stderr = process.communicate()[1]
            pytest.fail(f"the job did not exit within 60 s of {sig.name}: {stderr[-6000:]}")
    finally:
        process.kill()
    if sig == signal.SIGTERM:  # clean-up ran: nothing left, exit 143 with one line
        assert status == 143 and "terminated" in process.stderr.read()
        assert not list(tmp_path.glob(".scored.parquet.*"))
    else:
        assert status == -signal.SIGKILL and list(tmp_path.glob(".scored.parquet.*.tmp"))  # what a kill leaves
    rerun = run_command(command)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(tmp_path.glob(".scored.parquet.*")), list(tmp_path.iterdir())
    assert len(pd.read_parquet(tmp_path / "scored.parquet")) == len(pd.read_parquet(source))


# --- a job in parts, on threads or a Dask LocalCluster of two workers ------------------------------------------

ANSWERS = ["row", "model_version", "prediction", "probability_0", "probability_1", "timestamp"]


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


@pytest.mark.slow
@pytest.mark.parametrize("ref", ["champion", 2])  # HGB and torch
def test_dask_output_equals_the_local_output_row_for_row(served_registry, dataset, dask_cluster, tmp_path, ref):
    folder, frame = dataset
    options = dict(inputs=True, time_column="timestamp", chunk_rows=50, progress=False)
    local = predict_dataset(served_registry["root"], ref, folder, tmp_path / "local", **options)
    on_dask = predict_dataset(served_registry["root"], ref, folder, tmp_path / "dask", client=dask_cluster, **options)
    assert local["rows"] == on_dask["rows"] == len(frame) and local["parts"] == on_dask["parts"] == 6
    expected, found = read_log(tmp_path / "local"), read_log(tmp_path / "dask")
    columns = [c for c in expected.columns if c not in ("request_id", "latency_ms")]
    pd.testing.assert_frame_equal(found[columns], expected[columns])  # exactly: same values, same order
    manifest = json.loads((tmp_path / "dask" / MANIFEST_FILE).read_text())
    assert manifest["rows"] == len(frame) and sum(p["rows"] for p in manifest["parts"]) == len(frame)
    assert manifest["model_version"] == served_registry["versions"][0 if ref == "champion" else 1]


@pytest.mark.slow
def test_a_worker_killed_mid_job_loses_and_repeats_no_row(served_registry, dataset, dask_cluster, tmp_path):
    folder, frame = dataset
    marker = tmp_path / "killed"
    patch_workers(dask_cluster, first_row=320, action="kill", marker=str(marker))
    try:
        done = predict_dataset(served_registry["root"], 1, folder, tmp_path / "out", client=dask_cluster, progress=False)
    finally:
        unpatch_workers(dask_cluster)
    assert marker.exists()  # a worker did die on the unit of rows 320–399, and Dask ran that unit again
    assert done["rows"] == len(frame)
    every_row_once(read_log(tmp_path / "out"), len(frame))
    dask_cluster.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


@pytest.mark.slow
def test_a_failed_part_leaves_the_finished_parts_and_a_rerun_completes_the_job(served_registry, dataset, dask_cluster,
                                                                             tmp_path):
    folder, frame = dataset
    out = tmp_path / "out"
    last = 520  # the last unit's first row (part-2.parquet's second row group)
    patch_workers(dask_cluster, first_row=last, action="raise")
    try:
        with pytest.raises(BatchError, match=r"unit 5 \(part-2.parquet, row group 1\) failed: .*injected failure.*run the job again"):
            predict_dataset(served_registry["root"], 1, folder, out, client=dask_cluster, progress=False)
    finally:
        unpatch_workers(dask_cluster)
    assert not (out / MANIFEST_FILE).exists() and len(list(out.glob("part-*.parquet"))) >= 1
    with pytest.raises(ArtifactError, match="unfinished batch job"):
        read_log(out)  # half a job is never read as a whole log
    done = predict_dataset(served_registry["root"], 1, folder, out, client=dask_cluster, progress=False)
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


@pytest.mark.slow
def test_a_corrupt_or_mixed_part_is_an_error_before_any_output(served_registry, dataset, dask_cluster, tmp_path):
    folder, frame = dataset
    bad = tmp_path / "bad"
    bad.mkdir()
    frame.iloc[:100].to_parquet(bad / "a.parquet")
    frame.iloc[100:].astype({"num_1": str}).to_parquet(bad / "b.parquet")
    with pytest.raises(BatchError, match="column 'num_1' holds text in input part .*b.parquet but numbers"):
        predict_dataset(served_registry["root"], 1, bad, tmp_path / "out", client=dask_cluster, progress=False)
    (bad / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(BatchError, match="b.parquet is not a readable Parquet file"):
        predict_dataset(served_registry["root"], 1, bad, tmp_path / "out", client=dask_cluster, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_predict_on_a_local_cluster_writes_a_finished_folder(served_registry, dataset, tmp_path):
    folder, frame = dataset
    done = mllifecycle("predict", "--registry", served_registry["root"], "--input", str(folder / "*.parquet"),
                       "--output", tmp_path / "scored", "--engine", "dask", "--scheduler", "local:2", "--no-progress",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "dask: 2 worker(s)" in done.stdout and f"{len(frame):,} rows → " in done.stdout
    every_row_once(read_log(tmp_path / "scored"), len(frame))
