"The run directory under crashes and concurrent writers: atomic artifacts, and no lost update of a shared file."
import multiprocessing
import os
import sys

import pytest

from conftest import run_command
from mllifecycle.core import ArtifactError, Run, atomic_path, open_run, read_json, write_json

WRITERS, UPDATES = 4, 25


def crash_while_writing(target):
    "Write half of a new version of `target`, then die without cleanup (as a SIGKILL would)."
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write('{"version": ')
            f.flush()
            os._exit(1)


def test_a_crash_mid_write_leaves_the_old_artifact(tmp_path):
    target = write_json(tmp_path / "metrics.json", {"version": 1})
    process = multiprocessing.get_context("fork").Process(target=crash_while_writing, args=(target,))
    process.start()
    process.join(30)
    assert process.exitcode == 1
    assert read_json(target) == {"version": 1}  # the reader sees the old file, whole


def test_a_failing_writer_leaves_no_temporary_file(tmp_path):
    target = write_json(tmp_path / "a.json", {"ok": True})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and read_json(target) == {"ok": True}


def record_many(path, writer):
    run = Run(path)
    for i in range(UPDATES):
        run.record_params(f"stage{writer}_{i}", {"writer": writer, "i": i}, seed=writer)
        run.write_json(f"out/{writer}_{i}.json", {"writer": writer, "i": i})


def test_concurrent_writers_lose_no_params_or_checksums(tmp_path):
    context = multiprocessing.get_context("spawn")  # separate interpreters, as two stages or workers would be
    processes = [context.Process(target=record_many, args=(tmp_path, w)) for w in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    run = Run(tmp_path)
    assert len(run.params) == WRITERS * UPDATES
    assert run.params["stage2_7"] == {"seed": 2, "writer": 2, "i": 7}
    sums = read_json(tmp_path / "checksums.json")
    assert len(sums) == WRITERS * UPDATES
    for relpath in sums:
        run.checksum(relpath)  # every recorded checksum matches its file


def test_a_tampered_or_unrecorded_artifact_is_refused(tmp_path):
    run = open_run(tmp_path, stage="data", seed=0)
    run.write_json("data/schema.json", {"target": "y"})
    (tmp_path / "data" / "extra.json").write_text("{}")
    with pytest.raises(ArtifactError, match="has no recorded checksum"):
        run.read_json("data/extra.json")
    (tmp_path / "data" / "schema.json").write_text('{"target": "z"}')
    with pytest.raises(ArtifactError, match="does not match its checksum"):
        run.read_json("data/schema.json")


def test_the_data_stage_path_does_not_import_torch(tmp_path):
    code = ("import sys; from mllifecycle.core import open_run; import mllifecycle.data; "
            f"open_run({str(tmp_path)!r}, stage='data', seed=0); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = run_command([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    assert read_json(tmp_path / "env.json")["device"] is None
    open_run(tmp_path, stage="train", seed=0, torch=True)  # the first torch stage records the device
    import torch

    assert read_json(tmp_path / "env.json")["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
