"""Batch inference as a job in parts, locally and on a Dask `LocalCluster` of 1 and 2 workers: the same job (one
part per Parquet row group, `mllifecycle.batch.predict_dataset`) on the same file and machine.

    python bench/scale_out.py [--rows 10000000] [--row-group-rows 250000] [--workers 1 2] [--folder bench/out/scale]

The input and the model are `bench/batch_predict.py`'s: synthetic rows × 30 columns, a torch linear model from a
registry. Each way runs in its own process. For each it reports rows/s, the peak RSS of the process that scores
(the client's for the local way, each worker's on Dask), and the per-partition overhead: the wall time the workers
had, less the time the parts took to score, per part — scheduling, sending each task and its answer, and the
workers idle at the end. Loading the model, once per worker process, is timed apart (`model_load_s`). On a two-core machine a cluster cannot be faster than the local way; the
overhead says what more workers on more cores would cost. Last line: one JSON object.
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from batch_predict import prepared, run_apart  # noqa: E402  the same file and model as the batch benchmark


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def one_way(engine: str, workers: int, registry: str, source: str, output: str) -> dict:
    "Run the job in parts in this process (local threads) or on a new LocalCluster of `workers`; its figures."
    import shutil

    from mllifecycle.batch import job_model, predict_dataset
    from mllifecycle.core import dask_client
    from mllifecycle.registry import RegistryReader

    shutil.rmtree(output, ignore_errors=True)
    reader = RegistryReader(registry)
    model = (str(reader.root), reader.resolve("champion"))
    if engine == "local":
        started = time.perf_counter()
        job_model(*model)  # loaded once per process, as each worker does: timed apart
        load = time.perf_counter() - started
        started = time.perf_counter()
        done = predict_dataset(registry, "champion", source, output, progress=False, workers=workers)
        seconds = time.perf_counter() - started
        rss = {"client": peak_rss_gb()}
    else:
        with dask_client(f"local:{workers}", echo=None) as client:  # the cluster's start is not the job's
            started = time.perf_counter()
            client.run(job_model, *model)
            load = time.perf_counter() - started
            started = time.perf_counter()
            done = predict_dataset(registry, "champion", source, output, client=client, progress=False)
            seconds = time.perf_counter() - started
            rss = {f"worker {i}": value for i, value in enumerate(client.run(peak_rss_gb).values())}
    slots = workers
    manifest = json.loads((Path(output) / "_manifest.json").read_text())
    busy = sum(done["part_seconds"])
    return {"engine": engine, "workers": workers, "rows": done["rows"], "parts": done["parts"],
            "seconds": round(seconds, 2), "rows_per_s": round(done["rows"] / seconds),
            "peak_rss_gb": rss, "scoring_s": round(busy, 2), "model_load_s": round(load, 2),
            "overhead_ms_per_part": round(1000 * (seconds * slots - busy) / done["parts"], 1),
            "manifest_rows": manifest["rows"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--row-group-rows", type=int, default=250_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--folder", default="bench/out/scale")
    parser.add_argument("--one", nargs=5, metavar=("ENGINE", "WORKERS", "REGISTRY", "INPUT", "OUTPUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        engine, workers, *paths = args.one
        print(json.dumps(one_way(engine, int(workers), *paths)))
        return
    folder = Path(args.folder)
    source, registry = prepared(folder, args.rows, args.row_group_rows)
    ways = [("local", max(args.workers))] + [("dask", n) for n in args.workers]
    results = []
    for engine, workers in ways:
        results.append({"engine": engine, "workers": workers,
                        **run_apart(__file__, engine, workers, registry, source, folder / f"out-{engine}-{workers}")})
        print(results[-1], flush=True)
    local = results[0].get("rows_per_s")
    print(json.dumps({"rows": args.rows, "row_group_rows": args.row_group_rows, "local_rows_per_s": local,
                      "ways": {f"{r['engine']}:{r['workers']}": {k: r.get(k) for k in (
                          "rows_per_s", "peak_rss_gb", "overhead_ms_per_part", "model_load_s", "parts", "error")} for r in results},
                      "ratio_vs_local": {f"dask:{r['workers']}": round(r["rows_per_s"] / local, 2)
                                         for r in results[1:] if local and "rows_per_s" in r}}))


if __name__ == "__main__":
    main()
