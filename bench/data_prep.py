"""Benchmark the data stage on synthetic rows: cleaning, feature-pipeline fit and transform, against scikit-learn.

    python bench/data_prep.py [--rows 1000000] [--repeats 3]

The parent process generates the data and writes it to Parquet; a child process reads it and measures, so the memory
figures start from a clean interpreter. Compared on the same frame, in the same run:

- ours: `FeaturePipeline(numeric=..., categorical=...)` → standardised float32 numerics + integer category codes;
- scikit-learn: `ColumnTransformer([StandardScaler → numerics, OrdinalEncoder(unknown → -1) → categoricals])`.

Times are medians of `--repeats` runs. `peak_rss_over_input` is the process's peak resident memory while cleaning,
fitting and transforming, above the interpreter's memory before the data was loaded, divided by the size of the
input frame (so the input frame itself counts as 1.0). The last line printed is one JSON object.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def measure(path: str, repeats: int) -> dict:
    import psutil

    process = psutil.Process()
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OrdinalEncoder, StandardScaler

    from mllifecycle.data import CleanConfig, FeaturePipeline, clean_frame

    baseline = process.memory_info().rss  # interpreter + libraries, before any data
    df = pd.read_parquet(path)
    input_bytes = int(df.memory_usage(deep=True).sum())
    numeric = [c for c in df.columns if c.startswith("num_")]
    categorical = [c for c in df.columns if c.startswith("cat_")]

    peak = {"rss": process.memory_info().rss}
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak["rss"] = max(peak["rss"], process.memory_info().rss)
            time.sleep(0.002)

    def timed(fn):
        times, result = [], None
        for _ in range(repeats):
            result = None  # free the previous repeat's output first: the peak is that of one pass, not two
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        return float(np.median(times)), result

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clean_s, (cleaned, _) = timed(lambda: clean_frame(df, CleanConfig(target="target")))
    del df  # the stage goes on with the cleaned frame
    fit_s, pipeline = timed(lambda: FeaturePipeline(numeric=numeric, categorical=categorical).fit(cleaned))
    transform_s, features = timed(lambda: pipeline.transform(cleaned))
    sampling.set()
    sampler.join()
    peak_rss = peak["rss"]

    full = FeaturePipeline(numeric=numeric, categorical=categorical, datetime=["timestamp"],
                           derived={"ratio": "num_0 / (1 + num_1 ** 2)"}).fit(cleaned)
    full_transform_s, _ = timed(lambda: full.transform(cleaned))

    sklearn = ColumnTransformer([
        ("numeric", StandardScaler(), numeric),
        ("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), categorical),
    ]).fit(cleaned)
    sklearn_s, reference = timed(lambda: sklearn.transform(cleaned))

    max_abs_diff = float(np.abs(features.numeric - reference[:, :len(numeric)]).max())
    # categorical parity: both encodings must induce the same partition of the rows
    ours_codes, theirs_codes = features.categorical, reference[:, len(numeric):]
    same_partition = all(pd.crosstab(ours_codes[:, j], theirs_codes[:, j]).astype(bool).sum(axis=1).eq(1).all()
                         for j in range(len(categorical)))
    rows = len(cleaned)
    return {
        "rows": rows, "columns": cleaned.shape[1], "numeric": len(numeric), "categorical": len(categorical),
        "input_mb": round(input_bytes / 2**20, 1),
        "clean_s": round(clean_s, 3), "fit_s": round(fit_s, 3), "transform_s": round(transform_s, 3),
        "full_transform_s": round(full_transform_s, 3), "sklearn_transform_s": round(sklearn_s, 3),
        "clean_fit_transform_s": round(clean_s + fit_s + transform_s, 3),
        "transform_rows_per_s": round(rows / transform_s),
        "full_transform_rows_per_s": round(rows / full_transform_s),
        "time_ratio_vs_sklearn": round(transform_s / sklearn_s, 4),
        "max_abs_diff": max_abs_diff, "categorical_codes_match_sklearn": bool(same_partition),
        "peak_rss_over_input": round((peak_rss - baseline) / input_bytes, 3),
        "cpu_count": os.cpu_count(), "repeats": repeats,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.repeats)))
        return
    from mllifecycle.data import make_synthetic

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "synthetic.parquet"
        start = time.perf_counter()
        df = make_synthetic(args.rows, n_numeric=14, n_categorical=6, n_categories=50, seed=0)
        generate_s = time.perf_counter() - start
        df.to_parquet(path, index=False)
        print(f"generated {len(df):,} rows x {df.shape[1]} columns in {generate_s:.2f}s", flush=True)
        del df
        child = subprocess.run([sys.executable, __file__, "--child", str(path), "--repeats", str(args.repeats)],
                               capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(child.stderr)
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["generate_s"] = round(generate_s, 3)
    print(f"clean {result['clean_s']}s  fit {result['fit_s']}s  transform {result['transform_s']}s "
          f"({result['transform_rows_per_s']:,} rows/s; with datetime parts and a derived feature "
          f"{result['full_transform_s']}s)")
    print(f"scikit-learn ColumnTransformer transform {result['sklearn_transform_s']}s → ratio "
          f"{result['time_ratio_vs_sklearn']} (ours / scikit-learn); max |diff| {result['max_abs_diff']:.2e}")
    print(f"input frame {result['input_mb']} MB; peak memory {result['peak_rss_over_input']}x the input")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
