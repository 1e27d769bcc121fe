"""The detector study at two window sizes: every monitoring detector (the calibrated data-drift rule and Evidently's
fixed cut-offs, the multivariate detectors, the performance point and its interval, CBPE and its band, ADWIN) on
synthetic streams with known, injected drift, on windows of 500 and 5,000 rows, with high-cardinality categorical
columns (`--categories` values each).

    python bench/detector_study.py [--windows 500 5000] [--categories 500] [--seed 0]

For each window size the stream has 14 windows after the reference (`n_rows` = 14 windows / 0.7). Printed per window
size: each detector's false-alarm rate on windows before the drift (the no-drift stream included) and its delay in
windows after each drift starts (inf: never caught). Last line: one JSON object.
"""
import argparse
import json
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--categories", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from mllifecycle.monitor import DETECTORS, detector_study

    found = {}
    for rows in args.windows:
        start = time.perf_counter()
        study = detector_study(n_rows=int(rows * 14 / 0.7), window_rows=rows, n_categories=args.categories,
                               seed=args.seed)
        delay = study[study["drift"] != "none"].pivot(index="detector", columns="drift", values="delay_windows")
        false = study.groupby("detector", sort=False)["false_alarm_rate"].mean().rename("false alarms")
        table = delay.join(false).loc[list(DETECTORS)]
        print(f"\nwindows of {rows:,} rows, categorical columns of {args.categories} values "
              f"({time.perf_counter() - start:.0f} s)")
        print(table.to_string(float_format=lambda v: f"{v:.2f}"))
        found[str(rows)] = {name: {k: (None if v != v else (str(v) if v in (float("inf"),) else round(float(v), 4)))
                                   for k, v in row.items()} for name, row in table.to_dict("index").items()}
    print(json.dumps({"categories": args.categories, "seed": args.seed, "windows": found}))


if __name__ == "__main__":
    main()
