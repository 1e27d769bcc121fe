"""`mllifecycle run` as a whole: progress and summary, one report, reproducible results, `--from`, `report`."""
import json
import re
import shutil

import pandas as pd
import pytest

from conftest import mllifecycle

from mllifecycle.core import read_json
from mllifecycle.pipeline import STAGE_PARAMS

STAGES = list(STAGE_PARAMS)


def test_run_shows_each_stage_and_ends_with_a_summary(default_run):
    lines = default_run.result.stdout.strip().splitlines()
    for i, stage in enumerate(STAGES, 1):
        assert f"[{i}/5] {stage}: running {next(n for n in lines if f'] {stage}: running' in n).split()[-1]}" in lines
        assert any(re.fullmatch(rf"\[{i}/5\] {stage}: ok in \d+\.\d s", line) for line in lines), stage
    summary = lines[-6:-1]
    assert [line.split(":")[0] for line in summary] == ["winner", "registry", "serving", "monitoring", "report"]
    selection = read_json(default_run.run_dir / "validation" / "selection.json")
    assert summary[0].startswith(f"winner: {selection['winner']} — test {selection['metric']} ")
    assert summary[-1] == f"report: {default_run.run_dir / 'report' / 'report.html'}"
    assert lines[-1] == str(default_run.run_dir)  # for scripts: run=$(mllifecycle run | tail -1)
    assert default_run.result.stderr == ""


def test_report_has_the_summary_then_every_stage_and_needs_no_network(default_run):
    page = (default_run.run_dir / "report" / "report.html").read_text(encoding="utf-8")
    for section in ("data", "model", "serving", "monitoring", "environment"):
        assert f'<section id="{section}">' in page, section
    positions = [page.index(f'id="stage-{stage}"') for stage in STAGES]
    assert positions == sorted(positions) and page.index('id="environment"') < positions[0]  # summary first
    assert page.count('class="badge ok"') >= 2 * len(STAGES) and "badge failed" not in page
    assert page.count("data:image/png;base64,") >= 10  # the summary's figures and the notebooks' plots, embedded
    assert page.count('<details class="code">') > 20  # code folded
    loaded = re.findall(r'<(?:img|script|link|iframe|source|audio|video)\b[^>]*?(?:src|href)="([^"]*)"', page)
    assert loaded and all(u.startswith("data:") for u in loaded)  # nothing the browser would fetch
    env = read_json(default_run.run_dir / "env.json")
    assert str(env["seed"]) in page and (env["git"]["commit"] or "—") in page
    record = read_json(default_run.run_dir / "report" / "pipeline.json")
    assert all(e["seconds"] > 0 and e["started"] for e in record["stages"])


TIMINGS = re.compile(r"seconds|latency|_per_s$|^(workers|registry|started|created|datetime_\w+|duration|p\d\d_ms|max_ms"
                     r"|user_attrs_worker|request_id|sha256|rss_mb)$")


def without_timings(value):
    "A JSON value without the figures that measure time or name this machine's paths and processes."
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not TIMINGS.search(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_same_parameters_and_seed_give_identical_metrics_and_predictions(default_run, tmp_path):
    again = mllifecycle("run", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    first, second = default_run.run_dir, tmp_path / again.stdout.strip().splitlines()[-1]
    checksums = [read_json(r / "checksums.json") for r in (first, second)]
    for name in ("data/train.parquet", "data/valid.parquet", "data/test.parquet", "data/stream.parquet",
                 "features/pipeline.json", "models/mlp/weights.safetensors", "models/linear/weights.safetensors",
                 "validation/metrics.json", "validation/cv.json", "monitoring/drift.json", "monitoring/alerts.json"):
        assert checksums[0][name] == checksums[1][name], name  # byte for byte
    for name in ("validation/selection.json", "tuning/best.json", "models/mlp/history.json", "models/hgb/config.json",
                 "monitoring/performance.json", "monitoring/retraining.json"):
        assert without_timings(read_json(first / name)) == without_timings(read_json(second / name)), name
    for name, read in (("validation/comparison.csv", pd.read_csv), ("tuning/trials.csv", pd.read_csv),
                       ("deploy/predictions.parquet", pd.read_parquet)):
        a, b = read(first / name), read(second / name)
        kept = [c for c in a.columns if not TIMINGS.search(c)]
        pd.testing.assert_frame_equal(a[kept], b[kept], obj=name)


def test_from_reruns_a_stage_and_adds_to_the_record(default_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(default_run.run_dir, run_dir)
    (run_dir / "report" / "report.html").unlink()
    result = mllifecycle("run", "--run-dir", "run", "--from", "monitor", "-p", "consecutive", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[1/1] monitor: running 05_monitor.ipynb" in result.stdout and "data: running" not in result.stdout
    record = read_json(run_dir / "report" / "pipeline.json")
    assert [e["stage"] for e in record["stages"]] == STAGES + ["monitor"]  # appended, not overwritten
    assert record["params"]["consecutive"] == 3 and read_json(run_dir / "params.json")["monitor"]["consecutive"] == 3
    assert (run_dir / "report" / "report.html").exists()
    # a stage before the one to start from must have run: a copy without its training is refused
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    record["stages"] = [e for e in record["stages"] if e["stage"] != "train"]
    (broken / "report" / "pipeline.json").write_text(json.dumps(record))
    refused = mllifecycle("run", "--run-dir", "broken", "--from", "validate", cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "stage 'train' has not run successfully" in refused.stderr


def test_report_command_rebuilds_the_report(default_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(default_run.run_dir, run_dir)
    (run_dir / "report" / "report.html").unlink()
    result = mllifecycle("report", "copy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(run_dir / "report" / "report.html")
    assert 'id="stage-monitor"' in (run_dir / "report" / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("args, fragment", [(["nowhere"], "run directory not found"),
                                            (["."], "is not a run directory")])
def test_report_command_refuses_what_is_not_a_run(tmp_path, args, fragment):
    result = mllifecycle("report", *args, cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("mllifecycle: error: ") and fragment in result.stderr
    assert result.stderr.count("\n") == 1
