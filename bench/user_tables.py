"""Users' tables through `mllifecycle run` with its default parameters: what the selected model scores on the test
split, beside the trivial predictor and scikit-learn's HistGradientBoosting on the same rows.

    python bench/user_tables.py [--repeats 2] [--cases 3-class-300-rows,regression-thousands]

The tables are the generated ones of the test matrix (tests/tables.py): a binary table with a string target and
messy columns, 3- and 5-class (small; imbalanced), regression in the thousands and in the hundredths. Every figure
is read from the run's own artifacts (validation/selection.json, metrics.json, comparison.csv). With --repeats N each
table runs N times with the same seed, and the script says whether the winner changed.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tables import CASES  # noqa: E402

from mllifecycle.core import Run  # noqa: E402
from mllifecycle.pipeline import run_pipeline  # noqa: E402

def one_run(folder: Path, case: str, repeat: int) -> dict:
    make, target, _ = CASES[case]
    csv = folder / f"{case}.csv"
    if not csv.exists():
        make().to_csv(csv, index=False)
    started = time.perf_counter()
    run_path = run_pipeline({"data_path": str(csv), "target": target}, run_dir=folder / f"{case}-{repeat}",
                            runs_root=folder / f"runs-{case}-{repeat}")
    seconds = time.perf_counter() - started
    run = Run(run_path)
    metrics = run.read_json("validation/metrics.json")
    selection = run.read_json("validation/selection.json")
    comparison = pd.read_csv(run.artifact("validation/comparison.csv")).set_index("model")
    metric, reported = metrics["primary_metric"], selection["reported"]
    best_test = comparison[f"test_{metric}"].idxmax() if metric in ("auroc", "accuracy", "r2") \
        else comparison[f"test_{metric}"].idxmin()
    return {"case": case, "rows": sum(run.read_json("data/splits.json")["rows"].values()), "task": metrics["task"],
            "metric": metric, "chosen on": selection["chosen_on"]["split"], "winner": selection["winner"],
            "winner test": round(reported["value"], 4), "trivial test": round(reported["trivial"], 4),
            "hgb test": round(float(comparison.loc["hgb", f"test_{metric}"]), 4), "best on test": best_test,
            "seconds": round(seconds, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="runs per table with the same seed")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases.split(","):
            for repeat in range(args.repeats):
                rows.append(one_run(Path(tmp), case, repeat))
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False))
    if args.repeats > 1:
        stable = table.groupby("case")["winner"].nunique().eq(1)
        print(f"\nsame winner on every repeat: {int(stable.sum())} of {len(stable)} tables")


if __name__ == "__main__":
    main()
