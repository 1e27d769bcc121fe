"""Benchmark the validation stage's latency clock against wall-clock timing, on a quiet and on a busy CPU.

    python bench/latency_clock.py [--rows 5000] [--rounds 8] [--burners 2]

Selection compares candidates' latency per row, so the figure must not depend on what else the machine is doing.
On one model (HistGradientBoosting on a synthetic table, chosen by the validation stage and loaded from its
registry as serving loads it), each
round measures the same 256-row batch two ways:

- naive (the stage's former clock): wall-clock time (`time.perf_counter`), median of 7 timed calls, the math
  libraries' thread pools left as they are;
- ours: `mllifecycle.validate.measure_latency` — CPU time of the predicting thread, on one math thread, the least
  of 7 timed calls.

`--rounds` rounds run on a quiet CPU, then as many with `--burners` processes spinning beside it (each a pure-Python
loop on a core). Per clock it prints the median over rounds on each machine state, the busy / quiet ratio of those
medians (1.0: the load changes nothing) and the spread (max / min over the busy rounds). The last line printed is
one JSON object.
"""
import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path


def burn(stop):
    "Keep one core busy until `stop` is set."
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def wall_clock_ms_per_row(predictor, batch, repeats=7):
    "The former clock: wall-clock median of `repeats` calls, per row."
    predictor.predict(batch)
    timed = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict(batch)
        timed.append(time.perf_counter() - started)
    return 1000 * statistics.median(timed) / len(batch)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--burners", type=int, default=2)
    args = parser.parse_args()

    from mllifecycle.data import DataParams, data_stage, make_synthetic
    from mllifecycle.registry import Registry
    from mllifecycle.validate import LATENCY_BATCH_ROWS, ValidateParams, measure_latency, validate_stage

    folder = Path(tempfile.mkdtemp(prefix="latency-clock-"))
    make_synthetic(args.rows, n_numeric=8, n_categorical=3, seed=0).to_csv(folder / "data.csv", index=False)
    run = str(folder / "run")  # the data and validation stages, HistGradientBoosting only: its champion is timed
    prepared = data_stage(DataParams(run_dir=run, data_path=str(folder / "data.csv"), target="target")).prepared
    validate_stage(ValidateParams(run_dir=run, candidates=["hgb"], cv_folds=0, n_bootstrap=200,
                                  registry_dir=str(folder / "registry")))
    predictor = Registry(folder / "registry").load("champion")
    test = prepared.splits["test"]
    batch = test.sample(n=LATENCY_BATCH_ROWS, replace=len(test) < LATENCY_BATCH_ROWS, random_state=0)

    def rounds():
        return ([wall_clock_ms_per_row(predictor, batch) for _ in range(args.rounds)],
                [measure_latency(predictor, test)["latency_ms_per_row"] for _ in range(args.rounds)])

    quiet_wall, quiet_cpu = rounds()
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.burners)]
    for p in burners:
        p.start()
    time.sleep(1.0)  # let the burners take their cores
    try:
        busy_wall, busy_cpu = rounds()
    finally:
        stop.set()
        for p in burners:
            p.join(timeout=10)

    results = {}
    for name, quiet, busy in (("wall_clock", quiet_wall, busy_wall), ("thread_cpu", quiet_cpu, busy_cpu)):
        q, b = statistics.median(quiet), statistics.median(busy)
        results[name] = {"quiet_ms_per_row": round(q, 4), "busy_ms_per_row": round(b, 4),
                         "busy_over_quiet": round(b / q, 3), "busy_spread": round(max(busy) / min(busy), 3)}
        print(f"{name:10s}  quiet {q:.4f} ms/row  busy {b:.4f} ms/row  busy/quiet {b / q:.2f}x  "
              f"busy spread (max/min) {max(busy) / min(busy):.2f}x")
    print(json.dumps({"bench": "latency_clock", "rows": args.rows, "rounds": args.rounds, "burners": args.burners,
                      "batch_rows": LATENCY_BATCH_ROWS, **results,
                      "load_effect_ratio": round(results["wall_clock"]["busy_over_quiet"]
                                                 / results["thread_cpu"]["busy_over_quiet"], 3)}))


if __name__ == "__main__":
    main()
