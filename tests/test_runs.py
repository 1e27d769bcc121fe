"""Runs side by side: `mllifecycle runs` and `compare` on the runs the suite makes; a run being written, one
terminated, one unreadable; the README's optuna-dashboard command on a run's study."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import chromium, launch_chromium, mllifecycle
from mllifecycle.core import Run


def runs_json(root, cwd):
    result = mllifecycle("runs", str(root), "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return {row["id"]: row for row in json.loads(result.stdout)}


@pytest.mark.slow
def test_runs_lists_every_run_with_its_state_data_and_results(runs_world):
    rows = runs_json(runs_world.root, runs_world.work)
    assert set(rows) == {runs_world.default.name, "same-data", "other-table", "failed"}  # the registry is not a run
    default, same, other, failed = (rows[p.name] for p in (runs_world.default, runs_world.same, runs_world.other,
                                                            runs_world.failed))
    assert default["state"] == "complete" and set(default["stages"].values()) == {"ok"} and len(default["stages"]) == 5
    assert default["changed"] == {} and default["monitoring"] and default["alerts"] is not None
    reported = Run(runs_world.default).read_json("validation/selection.json")["reported"]
    assert (default["value"], default["ci_low"], default["ci_high"]) == (reported["value"], reported["ci_low"],
                                                                        reported["ci_high"])
    assert same["sha256"] == default["sha256"] and same["changed"] == {
        "n_trials": 0, "epochs": 2, "cv_folds": 0, "candidates": ["mlp", "linear"]}
    assert other["target"] == "y" and other["rows"] == 3000 and other["sha256"] != default["sha256"]
    assert other["version"] == 2 and other["alias"] is None  # the shared registry's champion is a model of other data
    assert failed["state"] == "failed" and failed["stages"]["data"] == "failed" and failed["winner"] is None
    created = [row["created"] for row in json.loads(mllifecycle("runs", str(runs_world.root), "--json",
                                                                cwd=runs_world.work).stdout)]
    assert created == sorted(created, reverse=True)  # newest first

    table = mllifecycle("runs", str(runs_world.root), cwd=runs_world.work)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "created", "state", "stages"] and len(lines) == 5
    line = next(l for l in lines if l.startswith(runs_world.default.name))
    assert f"[{reported['ci_low']:.4g}, {reported['ci_high']:.4g}]" in line and "5 ok" in line
    assert "data failed" in next(l for l in lines if l.startswith("failed "))


@pytest.mark.slow
def test_an_unreadable_run_is_one_line_and_a_missing_folder_one_error(failed_run, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(failed_run, root / "fine")
    shutil.copytree(failed_run, root / "broken")
    (root / "broken" / "report" / "pipeline.json").write_text('{"stages": ')
    result = mllifecycle("runs", str(root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    broken = [l for l in result.stdout.splitlines() if l.startswith("broken")]
    assert len(broken) == 1 and "unreadable" in broken[0] and "pipeline.json is not valid JSON" in broken[0]
    assert any(l.startswith("fine") for l in result.stdout.splitlines())
    missing = mllifecycle("runs", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0
    assert "no runs folder at" in missing.stderr


@pytest.mark.slow
def test_a_run_being_written_is_shown_running_and_a_terminated_one_interrupted(tmp_path):
    process = subprocess.Popen([shutil.which("mllifecycle"), "run", "--run-dir", "runs/live", "-p", "sample_rows",
                                "3000"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        deadline, row = time.monotonic() + 300, None
        while time.monotonic() < deadline and process.poll() is None:
            if (tmp_path / "runs" / "live" / "report" / "pipeline.json").exists():
                row = runs_json(tmp_path / "runs", tmp_path).get("live")
                if row and row["stages"].get("data") == "ok":  # the data stage done, the train stage running
                    break
            time.sleep(1)
        assert row is not None and row["state"] == "running", row
        statuses = list(row["stages"].values())
        running = statuses.index("running")  # the stage being executed; every later one waits
        assert set(statuses[:running]) == {"ok"} and set(statuses[running + 1:]) == {"pending"}, row["stages"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143, process.stderr.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    row = runs_json(tmp_path / "runs", tmp_path)["live"]
    statuses = list(row["stages"].values())
    stopped = statuses.index("interrupted")
    assert row["state"] == "interrupted" and len(statuses) == 5, row
    assert set(statuses[:stopped]) == {"ok"} and set(statuses[stopped + 1:]) <= {"not run"}, row["stages"]


def direct_paired_bootstrap(target, a, b, n_bootstrap, seed, confidence=0.95):
    "B minus A's AUROC on resampled rows, one resample at a time with scikit-learn: the stored scores, resampled."
    rng = np.random.default_rng(seed)
    n, differences = len(target), []
    for _ in range(n_bootstrap):
        rows = rng.integers(0, n, size=n)
        differences.append(roc_auc_score(target[rows], b[rows]) - roc_auc_score(target[rows], a[rows]))
    return np.quantile(differences, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])


@pytest.mark.slow
def test_compare_on_the_same_test_rows_is_a_paired_bootstrap_of_the_stored_scores(runs_world):
    "Two runs on the same data: the difference is paired, and equals a direct bootstrap of their stored per-row scores."
    base = runs_world.same
    out = runs_world.work / "same.html"
    result = mllifecycle("compare", str(runs_world.default), str(base), "--html", str(out), "--json",
                         "--n-bootstrap", "300", cwd=runs_world.work)
    assert result.returncode == 0, result.stderr
    comparison = json.loads(result.stdout[:result.stdout.rstrip().rfind("\n")])
    assert result.stdout.rstrip().splitlines()[-1] == str(out)
    difference = comparison["differences"][0]
    assert difference["method"] == "paired", difference
    rows = [pd.read_parquet(p / "validation" / "test_rows.parquet") for p in (runs_world.default, base)]
    winners = [Run(p).read_json("validation/selection.json")["winner"] for p in (runs_world.default, base)]
    target = rows[0]["target"].to_numpy()
    assert np.array_equal(target, rows[1]["target"].to_numpy())
    a, b = rows[0][winners[0]].to_numpy(), rows[1][winners[1]].to_numpy()
    low, high = direct_paired_bootstrap(target, a, b, 300, seed=0)
    assert difference["ci_low"] == pytest.approx(low, abs=1e-9) and difference["ci_high"] == pytest.approx(high, abs=1e-9)
    assert difference["difference"] == pytest.approx(roc_auc_score(target, b) - roc_auc_score(target, a), abs=1e-12)
    assert comparison["params"]["train.n_trials"] == [4, 0] and "data.sample_rows" not in comparison["params"]
    assert comparison["data_differs"] == []  # the same data, the same splits
    assert set(comparison["candidates"]) >= {"mlp", "linear", "hgb"}


@pytest.mark.slow
def test_compare_across_tables_is_unpaired_and_says_so(runs_world):
    result = mllifecycle("compare", str(runs_world.default), str(runs_world.other), "--json", cwd=runs_world.work)
    assert result.returncode == 0, result.stderr
    comparison = json.loads(result.stdout[:result.stdout.rstrip().rfind("\n")])
    difference = comparison["differences"][0]
    assert difference["method"] == "unpaired" and "test splits differ" in difference["why"]
    a, b = (Run(p).read_json("validation/selection.json")["reported"] for p in (runs_world.default, runs_world.other))
    se = [(r["ci_high"] - r["ci_low"]) / (2 * 1.959963984540054) for r in (a, b)]
    half = 1.959963984540054 * np.hypot(*se)
    assert difference["difference"] == pytest.approx(b["value"] - a["value"], abs=1e-12)
    assert (difference["ci_low"], difference["ci_high"]) == pytest.approx(
        (b["value"] - a["value"] - half, b["value"] - a["value"] + half), abs=1e-9)
    assert "sha256" in comparison["data_differs"] and "target" in comparison["data_differs"]
    page = Path(result.stdout.rstrip().splitlines()[-1])
    assert page.parent == runs_world.root and page.name.startswith("compare-") and page.is_file()
    text = mllifecycle("compare", str(runs_world.default), str(runs_world.other), "--html", str(page),
                       cwd=runs_world.work)
    assert "unpaired" in text.stdout and "parameters that differ" in text.stdout


@pytest.mark.parametrize("args, message", [
    (["only-one"], "at least two run directories"),
    (["missing-a", "missing-b"], "is not a run directory"),
    (["RUN", "RUN", "--confidence", "1.5"], "--confidence must be between 0 and 1"),
])
def test_compare_refuses_bad_input_in_one_line(failed_run, tmp_path, args, message, mllifecycle_here):
    args = [str(failed_run) if a == "RUN" else str(tmp_path / a) if not a.startswith("-") and
            not a[0].isdigit() else a for a in args]
    result = mllifecycle_here("compare", *args, cwd=tmp_path)
    assert result.returncode == 1 and message in result.stderr and result.stderr.strip().count("\n") == 0, result


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no Chromium installed: `apt-get install -y chromium` (Debian) "
                                                "or set CHROMIUM to a Chromium binary to run the browser test")
def test_the_comparison_page_opens_offline_with_its_figures(runs_world):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    out = runs_world.work / "three.html"
    result = mllifecycle("compare", str(runs_world.default), str(runs_world.same), str(runs_world.other), "--html",
                         str(out), cwd=runs_world.work)
    assert result.returncode == 0, result.stderr
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page()
        problems, outside = [], []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("file://", "data:")) else None)
        page.goto(out.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        cells = page.evaluate("Array.from(document.querySelectorAll('#differences td')).map(t => t.textContent)")
        browser.close()
    assert not problems and not outside, (problems, outside)
    assert len(images) == 2 and all(images)  # learning curves and the monitoring metric, overlaid
    assert headings[:2] == ["Test metric differences", "Runs"]
    assert "95% paired" in cells and "95% unpaired" in cells


@pytest.mark.slow
def test_the_readmes_optuna_dashboard_command_opens_a_runs_study(small_run, tmp_path):
    "`optuna-dashboard RUN/tuning/journal.log` (the README's command) serves the run's study with all its trials."
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install -e '.[dev]')")
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    journal = small_run.run_dir / "tuning" / "journal.log"
    process = subprocess.Popen([shutil.which("optuna-dashboard"), str(journal), "--host", "127.0.0.1", "--port",
                                str(port), "--server", "wsgiref", "--quiet"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, studies = time.monotonic() + 60, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                studies = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2).json()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert studies is not None, process.stderr.read() if process.poll() is not None else "no answer in 60 s"
        summary = studies["study_summaries"]
        assert [s["study_name"] for s in summary] == [Run(small_run.run_dir).read_json("tuning/best.json")["study_name"]]
        study = httpx.get(f"http://127.0.0.1:{port}/api/studies/{summary[0]['study_id']}", timeout=10).json()
        assert len(study["trials"]) == len(pd.read_csv(small_run.run_dir / "tuning" / "trials.csv"))
        assert httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=10).status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
