"""Benchmark the paired bootstrap of the validation stage against the naive loop.

    python bench/paired_bootstrap.py [--rows 50000] [--models 4] [--resamples 1000]

Both compute every model's AUROC on the same `--resamples` resamples of the test rows (the flights' full test split
has about 49,000 rows; the stage compares 4 candidates with 1,000 resamples):

- naive: for each resample, for each model, `torchmetrics.functional.classification.binary_auroc` on the gathered
  rows — the obvious loop;
- ours: `mllifecycle.validate.paired_bootstrap`, which draws the resamples in blocks and computes AUROC for a whole
  block at once by the rank-sum formula (average ranks for ties).

Both use the same resample indices, so their AUROCs must agree to float precision; the script checks that. The last
line printed is one JSON object.
"""
import argparse
import json
import time


def main():
    import numpy as np
    import torch
    from torchmetrics.functional.classification import binary_auroc

    from mllifecycle.validate import paired_bootstrap

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    target = (rng.random(args.rows) < 0.25).astype(np.int64)
    scores = {f"model_{j}": np.round(np.clip(target * 0.2 * (j + 1) + rng.random(args.rows), 0, None), 3)
              for j in range(args.models)}  # rounded: ties, as tree models produce

    started = time.perf_counter()
    ours = paired_bootstrap("auroc", target, scores, args.resamples, args.seed)
    ours_s = time.perf_counter() - started

    # the same resamples, drawn the way paired_bootstrap draws them (blocks from one seeded generator)
    draw = np.random.default_rng(args.seed)
    block = max(1, 2_000_000 // args.rows)
    index = np.concatenate([draw.integers(0, args.rows, size=(min(block, args.resamples - start), args.rows))
                            for start in range(0, args.resamples, block)])
    y = torch.as_tensor(target)
    tensors = {name: torch.as_tensor(s, dtype=torch.float64) for name, s in scores.items()}
    started = time.perf_counter()
    naive = {name: np.empty(args.resamples) for name in scores}
    for b in range(args.resamples):
        rows = torch.as_tensor(index[b])
        for name, s in tensors.items():
            naive[name][b] = float(binary_auroc(s[rows], y[rows]))
    naive_s = time.perf_counter() - started

    max_diff = max(float(np.max(np.abs(ours[n] - naive[n]))) for n in scores)
    print(f"{args.models} models × {args.resamples} resamples × {args.rows:,} rows")
    print(f"naive torchmetrics loop {naive_s:8.2f} s")
    print(f"paired_bootstrap        {ours_s:8.2f} s   speed-up {naive_s / ours_s:.1f}×   max |AUROC diff| {max_diff:.1e}")
    print(json.dumps({"rows": args.rows, "models": args.models, "resamples": args.resamples,
                      "naive_s": round(naive_s, 3), "ours_s": round(ours_s, 3),
                      "time_ratio_vs_naive": round(ours_s / naive_s, 4), "max_abs_diff": max_diff}))


if __name__ == "__main__":
    main()
