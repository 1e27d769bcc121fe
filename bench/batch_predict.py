"""Batch inference on a large file: `mllifecycle.batch.predict_file` (streaming row groups, read ahead, two chunks
scored at once on threads, written as it goes) against the chunked read-all way (read the whole file into memory,
then `Predictor.predict` on 1 M-row slices and write the result at the end), through the same Predictor, on the
same machine.

    python bench/batch_predict.py [--rows 10000000] [--folder bench/out/batch]

The input is a synthetic Parquet file of `--rows` rows × 30 columns (24 numeric, 6 categorical), written in 1 M-row
row groups; the model is a torch linear model over the features and embeddings (what a default run chose as its
champion here) trained on 20,000 rows of the same generator, served from a registry. Each way runs in its own
process so that its peak RSS is its own. Last line: one JSON object.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SLICE_ROWS = 1_000_000


def make_input(path: Path, rows: int, seed: int = 0, row_group_rows: int = SLICE_ROWS):
    "The synthetic file, generated and written 1 M rows at a time (bounded memory), in row groups of `row_group_rows`."
    from mllifecycle.data import make_synthetic

    writer, done, part = None, 0, 0
    while done < rows:
        n = min(SLICE_ROWS, rows - done)
        frame = make_synthetic(n, n_numeric=24, n_categorical=6, missing_frac=0.01, seed=seed + part,
                               start=f"2024-01-{1 + part % 28:02d}")
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=row_group_rows)
        done, part = done + n, part + 1
    writer.close()


def make_registry(folder: Path) -> Path:
    "A registry whose champion is a torch linear model (a default run's champion) trained on 20,000 generated rows."
    from mllifecycle.core import open_run
    from mllifecycle.data import DataParams, make_synthetic, prepare_data
    from mllifecycle.registry import Registry
    from mllifecycle.train import TrainConfig, fit, save_model

    generated = make_synthetic(20_000, n_numeric=24, n_categorical=6, missing_frac=0.01, seed=99)
    generated.to_parquet(folder / "train.parquet")
    run = open_run(folder / "run")
    prepared = prepare_data(run, DataParams(data_path=str(folder / "train.parquet"), target="target"))
    train, valid = (prepared.pipeline.transform(prepared.splits[s]) for s in ("train", "valid"))
    config = TrainConfig(epochs=3, depth=0, dropout=0.0, lr=3e-2)  # the "linear" candidate, as a default run picks
    save_model(run, "linear", fit(train, valid, config, classes=prepared.pipeline.classes_, device="cpu",
                                  progress=False))
    registry = Registry(folder / "registry")
    registry.promote(registry.register(run, "linear"))
    return registry.root


def prepared(folder: Path, rows: int, row_group_rows: int = SLICE_ROWS) -> tuple[Path, Path]:
    "The benchmark's input file and registry under `folder`, made when they are not there yet."
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "" if row_group_rows == SLICE_ROWS else f"-{row_group_rows}"
    source = folder / f"synthetic-{rows}{suffix}.parquet"
    if not source.exists():
        started = time.perf_counter()
        make_input(source, rows, row_group_rows=row_group_rows)
        print(f"wrote {source} ({source.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - started:.0f} s",
              flush=True)
    if not (folder / "registry" / "registry.json").exists():
        make_registry(folder)
    return source, folder / "registry"


def run_apart(script: str, *arguments) -> dict:
    "Run `script --one ARGUMENTS` in a process of its own (so that its peak RSS is its own); its last line's JSON."
    done = subprocess.run([sys.executable, script, "--one", *map(str, arguments)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def naive(predictor, source: Path, output: Path) -> int:
    "Read it all, predict 1 M-row slices, write at the end."
    import pandas as pd

    table, parts = pq.read_table(source), []
    for start in range(0, table.num_rows, SLICE_ROWS):
        frame = table.slice(start, SLICE_ROWS).to_pandas()
        parts.append(predictor.predict(frame).to_frame())
    out = pd.concat(parts, ignore_index=True)
    out.to_parquet(output)
    return len(out)


def one_way(mode: str, registry: str, source: str, output: str) -> dict:
    "Run one way in this process; its rows/s and peak RSS."
    from mllifecycle.batch import predict_file
    from mllifecycle.registry import Registry

    predictor = Registry(registry).load("champion")
    started = time.perf_counter()
    if mode == "naive":
        rows = naive(predictor, Path(source), Path(output))
    else:
        rows = predict_file(predictor, source, output, progress=False)["rows"]
    seconds = time.perf_counter() - started
    return {"mode": mode, "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--folder", default="bench/out/batch")
    parser.add_argument("--one", nargs=4, metavar=("MODE", "REGISTRY", "INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_way(*args.one)))
        return
    folder = Path(args.folder)
    source, registry = prepared(folder, args.rows)
    results = {}
    for mode in ("naive", "streaming"):
        results[mode] = run_apart(__file__, mode, registry, source, folder / f"out-{mode}.parquet")
        print(mode, results[mode], flush=True)
    streaming, chunked = results["streaming"], results["naive"]
    print(json.dumps({"rows": args.rows, "rows_per_s": streaming.get("rows_per_s"),
                      "naive_rows_per_s": chunked.get("rows_per_s"),
                      "ratio": round(streaming["rows_per_s"] / chunked["rows_per_s"], 2)
                      if "rows_per_s" in streaming and "rows_per_s" in chunked else None,
                      "peak_rss_gb": streaming.get("peak_rss_gb"), "naive_peak_rss_gb": chunked.get("peak_rss_gb")}))


if __name__ == "__main__":
    main()
