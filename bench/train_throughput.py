"""Benchmark the training loop's throughput against the idiomatic DataLoader loop and the compute ceiling.

    python bench/train_throughput.py [--rows 1000000] [--batch-sizes 256 1024 4096] [--threads N] [--rounds 5]

On the same features (1 M synthetic rows: 24 numeric + 6 categorical columns) and the same model (the default
`TrainConfig`: 2 × 128 units, batch norm, dropout, 8-dimensional embeddings), per batch size B:

- (a) dataloader: `DataLoader(TensorDataset(numeric, categorical, target), batch_size=B, shuffle=True)`, each batch
  moved to the device, then the training step;
- (b) ceiling: the training step repeated on one fixed, pre-built batch of B rows on the device — no data handling;
- (c) ours: `mllifecycle.train.fit`, whose history records each epoch's training samples/s (the validation pass
  excluded; the epoch's shuffle and gather included).

The training step is the same in (a) and (b) as in `fit`: forward, loss, backward, gradient clipping, AdamW step.
CPU timings swing by ±15% from minute to minute (libgomp's thread scheduling), so threads are set explicitly and
the three are measured in interleaved rounds — (a), (b), then one epoch of (c) — and each ratio is the median of the
per-round ratios. (a) and (b) time about `--samples` rows after 10 warm-up steps. The last line printed is one JSON
object.
"""
import argparse
import json
import os
import statistics
import time
from dataclasses import replace


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="auto")
    parser.add_argument("--samples", type=int, default=300_000, help="rows timed per round for (a) and (b)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from mllifecycle.core import choose_device
    from mllifecycle.data import FeaturePipeline, make_synthetic
    from mllifecycle.train import ModelConfig, TabularMLP, TrainConfig, make_optimizer, device_data, fit, make_loss

    torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    amp = device.startswith("cuda")
    sync = torch.cuda.synchronize if amp else (lambda: None)

    frame = make_synthetic(args.rows + 20_000, n_numeric=24, n_categorical=6, n_categories=20, seed=0)
    pipeline = FeaturePipeline(numeric=[f"num_{i}" for i in range(24)], categorical=[f"cat_{i}" for i in range(6)],
                               target="target").fit(frame.iloc[:args.rows])
    train, valid = pipeline.transform(frame.iloc[:args.rows]), pipeline.transform(frame.iloc[args.rows:])
    del frame
    classes = pipeline.classes_

    def new_model(config):
        torch.manual_seed(0)
        model = TabularMLP(ModelConfig.build(train, 1, config)).to(device).train()
        return model, make_optimizer(model, config), make_loss("binary", train.target, None, 2, device)

    def step(model, optimizer, loss_fn, config, numeric, categorical, target):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(numeric, categorical), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), config.grad_clip)
        optimizer.step()

    def timed(batches, run_step, steps):
        "Samples/s over `steps` steps drawn from the iterator `batches` (after 10 warm-up steps)."
        for _ in range(10):
            run_step(*next(batches))
        sync()
        started, samples = time.perf_counter(), 0
        for _ in range(steps):
            numeric, categorical, target = next(batches)
            run_step(numeric, categorical, target)
            samples += len(target)
        sync()
        return samples / (time.perf_counter() - started)

    host = (torch.as_tensor(train.numeric), torch.as_tensor(train.categorical),
            torch.as_tensor(train.target, dtype=torch.float32))
    on_device = device_data(train, device, "binary")
    results = {}
    for batch_size in args.batch_sizes:
        config = TrainConfig(batch_size=batch_size)

        def dataloader_batches():
            while True:
                for numeric, categorical, target in DataLoader(TensorDataset(*host), batch_size=batch_size,
                                                               shuffle=True, pin_memory=amp):
                    yield (numeric.to(device, non_blocking=True), categorical.to(device, non_blocking=True),
                           target.to(device, non_blocking=True))

        def fixed_batch():
            batch = (on_device.numeric[:batch_size], on_device.categorical[:batch_size],
                     on_device.target[:batch_size])
            while True:
                yield batch

        model, optimizer, loss_fn = new_model(config)
        run_step = lambda n, c, t: step(model, optimizer, loss_fn, config, n, c, t)
        steps = max(20, args.samples // batch_size)
        rounds = []
        for _ in range(args.rounds):
            loader = timed(dataloader_batches(), run_step, steps)
            ceiling = timed(fixed_batch(), run_step, steps)
            result = fit(train, valid, replace(config, epochs=1), classes=classes, device=device, progress=False)
            rounds.append({"dataloader": loader, "ceiling": ceiling, "ours": result.history[0]["train_samples_per_s"]})
        entry = {name: statistics.median(r[name] for r in rounds) for name in ("dataloader", "ceiling", "ours")}
        entry["ceiling_fraction"] = statistics.median(r["ours"] / r["ceiling"] for r in rounds)
        entry["ratio_vs_dataloader"] = statistics.median(r["ours"] / r["dataloader"] for r in rounds)
        results[batch_size] = entry
        print(f"B={batch_size:5d}  dataloader {entry['dataloader']:12,.0f}  ceiling {entry['ceiling']:12,.0f}  "
              f"ours {entry['ours']:12,.0f} samples/s   ours/ceiling {entry['ceiling_fraction']:.3f}   "
              f"ours/dataloader {entry['ratio_vs_dataloader']:.2f}", flush=True)

    headline = results.get(1024) or results[max(results)]
    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if amp else f"cpu ({args.threads} threads)",
        "rows": args.rows, "model": "TabularMLP 72→128→128→1 (24 numeric + 6×8 embeddings), AdamW, clip 1.0",
        "batch_size": 1024 if 1024 in results else max(results),
        "samples_per_s": round(headline["ours"]), "ceiling_fraction": round(headline["ceiling_fraction"], 3),
        "ratio_vs_dataloader": round(headline["ratio_vs_dataloader"], 2),
        "by_batch_size": {b: {k: round(v, 3) for k, v in r.items()} for b, r in results.items()}}))


if __name__ == "__main__":
    main()
