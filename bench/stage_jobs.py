"""What a job pays for its notebook's chapter: `mllifecycle run`'s default pipeline with the stage jobs as they run
(`job_notebook`: the exported code as one cell, the chapter's examples and tests left out) against

- whole notebooks (the naive way: every library test re-run inside every job, on the job's data where they touch
  it), and
- a cell per export (the jobs as they were: each exported cell its own cell, with the chapter's prose — papermill
  saves the output notebook as every cell starts and ends).

    python bench/stage_jobs.py [--rounds 1]

The variants run the same stages with the same default parameters on the same machine, alternating, each into a
fresh run directory and registry; the script prints seconds per stage and the ratios. The last line printed is one
JSON object.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import nbformat
import pandas as pd

import mllifecycle.pipeline as pipeline
from mllifecycle.core import read_json


def whole_notebook(path):
    "The naive job: the stage notebook as it is, chapter tests included."
    return nbformat.read(str(path), as_version=4)


def cell_per_export(path):
    "The former job: prose and every exported cell kept as cells, then the parameters cell and all after it."
    nb = nbformat.read(str(path), as_version=4)
    start = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    nb.cells = [cell for i, cell in enumerate(nb.cells) if i >= start or cell.cell_type == "markdown"
                or (cell.cell_type == "code" and pipeline.is_exported(cell))]
    return nb


def timed_run(folder: Path, make_job) -> dict:
    original = pipeline.job_notebook
    pipeline.job_notebook = make_job
    try:
        started = time.perf_counter()
        run_path = pipeline.run_pipeline({}, run_dir=folder / "run", runs_root=folder)
        total = time.perf_counter() - started
    finally:
        pipeline.job_notebook = original
    stages = read_json(run_path / "report" / "pipeline.json")["stages"]
    return {**{s["stage"]: s["seconds"] for s in stages}, "total": round(total, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of both variants")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, make_job in (("whole notebooks", whole_notebook), ("a cell per export", cell_per_export),
                                   ("stage jobs", pipeline.job_notebook)):
                rows.append({"variant": name, "round": round_ + 1,
                             **timed_run(Path(tmp) / f"{name.replace(' ', '-')}-{round_}", make_job)})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows).groupby("variant").median(numeric_only=True).drop(columns="round")
    print("\nmedian seconds per stage\n" + table.round(1).to_string())
    ratios = {}
    for other in ("whole notebooks", "a cell per export"):
        ratio = table.loc[other] / table.loc["stage jobs"]
        ratios[other] = {k: round(float(v), 2) for k, v in ratio.items()}
        print(f"\n{other} / stage jobs: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    print(json.dumps({"bench": "stage_jobs", "rounds": args.rounds,
                      "seconds": {k: round(float(v), 1) for k, v in table.loc["stage jobs"].items()},
                      "ratio_whole_notebooks": ratios["whole notebooks"],
                      "ratio_cell_per_export": ratios["a cell per export"]}))


if __name__ == "__main__":
    main()
