"""Serving throughput and latency at 64 concurrent clients: `mllifecycle serve` against (1) the naive server — a
synchronous FastAPI endpoint calling `Predictor.predict` once per request, what people write first — and (3) an
upper bound — a minimal batching endpoint that feeds pre-built features to the same model, with no validation, no
feature pipeline and no log. Same model (the champion of a default run), same machine, one run.

    python bench/serve_load.py [--seconds 15] [--clients 64] [--registry DIR]

Without --registry the script makes a default run (data, train, validate) under bench/out/serve first. The load
generator is a separate process (aiohttp, one connection per client), so it does not share the server's GIL. Then
it times each step of one request in process, to say where the time goes. Last line: one JSON object.
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()


# --- the two reference servers ----------------------------------------------------------------------------------------

def naive_app(registry: str):
    "What people write first: a synchronous endpoint, `Predictor.predict` once per request."
    from fastapi import FastAPI

    from mllifecycle.registry import Registry

    predictor, app = Registry(registry).load("champion"), FastAPI()

    @app.post("/predict")
    def predict(record: dict):
        return predictor.predict(record).to_records()[0]

    @app.get("/ready")
    def ready():
        return {"status": "ready"}

    return app


def bound_app(registry: str, rows_path: str):
    """The upper bound: a raw ASGI app (the stack `mllifecycle serve` answers /predict on) batching pre-built
    features — no parsing of the body, no validation, no pipeline, no metrics, no log."""
    import gc
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    import orjson
    import pandas as pd

    from mllifecycle.registry import Registry
    from mllifecycle.serve import limit_threads

    limit_threads(1)
    predictor = Registry(registry).load("champion")
    features = predictor.features(pd.read_parquet(rows_path).head(256))
    pending, executor = [], ThreadPoolExecutor(1)
    arrived = None

    def score(futures):
        n = len(futures)
        scores = predictor.scores(replace(features, numeric=features.numeric[:n], categorical=features.categorical[:n]))
        bodies = [orjson.dumps({"p": float(s)}) for s in np.ravel(scores)[:n]]
        loop = futures[0].get_loop()
        loop.call_soon_threadsafe(lambda: [f.set_result(b) for f, b in zip(futures, bodies)])

    async def batches():
        loop = asyncio.get_running_loop()
        while True:
            if not pending:
                arrived.clear()
                await arrived.wait()
            batch = pending[:64]
            del pending[:64]
            await loop.run_in_executor(executor, score, batch)

    async def send_json(send, body: bytes):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send):
        nonlocal arrived
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    arrived = asyncio.Event()
                    asyncio.get_running_loop().create_task(batches())
                    gc.collect()
                    gc.freeze()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/ready":
            return await send_json(send, b'{"status": "ready"}')
        more = True
        while more:  # the body, unread
            more = (await receive()).get("more_body", False)
        future = asyncio.get_running_loop().create_future()
        pending.append(future)
        arrived.set()
        await send_json(send, await future)

    return app


# --- the load generator -------------------------------------------------------------------------------------------

async def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    "`clients` connections, each posting the next body as soon as the last answer arrived, for `seconds`."
    import aiohttp

    latencies, statuses = [], {}
    stop_at = time.perf_counter() + seconds

    async def client(i: int, session):
        n = i
        while time.perf_counter() < stop_at:
            tick = time.perf_counter()
            async with session.post(f"{url}/predict", data=bodies[n % len(bodies)],
                                    headers={"content-type": "application/json"}) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append(time.perf_counter() - tick)
            n += clients

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, session) for i in range(clients)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "rps": round(len(ms) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "statuses": {str(k): v for k, v in statuses.items()}}


# --- orchestration ------------------------------------------------------------------------------------------------

def default_registry(folder: Path) -> tuple[Path, Path]:
    "The registry and run of a default run (data, train, validate), made once under `folder`."
    from mllifecycle.pipeline import run_pipeline

    run = folder / "run"
    if not (run / "validation" / "registry.json").exists():
        print("making a default run (data, train, validate) ...", flush=True)
        run_pipeline({}, run_dir=run, runs_root=folder, stages=["data", "train", "validate"])
    return Path(json.loads((run / "validation" / "registry.json").read_text())["registry"]), run


def start(kind: str, registry: Path, rows: Path, port: int, log_dir: Path) -> subprocess.Popen:
    if kind == "serve":
        command = [sys.executable, "-c", "import sys; from mllifecycle.cli import main; sys.exit(main())", "serve",
                   "--registry", str(registry), "--port", str(port), "--log-dir", str(log_dir)]
    else:
        command = [sys.executable, str(HERE), "--app", kind, str(registry), str(rows), str(port)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120):
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} was not ready after {timeout} s")


def measure(kind: str, registry: Path, rows: Path, bodies_path: Path, args) -> dict:
    from mllifecycle.serve import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(kind, registry, rows, port, Path(args.folder) / f"log-{kind}")
    try:
        wait_ready(url, process)
        run = lambda seconds: subprocess.run([sys.executable, str(HERE), "--load", url, str(bodies_path),
                                              str(args.clients), str(seconds)], capture_output=True, text=True)
        run(2)  # warm-up
        done = run(args.seconds)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        process.terminate()
        process.wait(60)


def where_the_time_goes(registry: Path, rows: Path, bodies: list[bytes]) -> dict:
    "Microseconds per step of one request (batch of 1) and per record in a batch of 64, in process."
    import pandas as pd

    from mllifecycle.registry import Registry
    from mllifecycle.serve import RecordEncoder, RequestParser, answer_body, limit_threads, record_type

    limit_threads(1)
    predictor = Registry(registry).load("champion")
    parser, encoder = RequestParser(record_type(predictor)), RecordEncoder(predictor)

    def per_call(fn, repeat=300):
        fn()
        tick = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - tick) / repeat * 1e6

    one = bodies[0]
    many = b"[" + b",".join(bodies[:64]) + b"]"
    out = {}
    for label, body, n in (("1 record", one, 1), ("64 records", many, 64)):
        records, is_list = parser.parse(body)
        features = encoder(records)
        scores = predictor.scores(features)
        answers = predictor.decide(scores)
        steps = {"parse + validate": per_call(lambda: parser.parse(body)),
                 "feature pipeline (record path)": per_call(lambda: encoder(records)),
                 "model": per_call(lambda: predictor.scores(features)),
                 "decide": per_call(lambda: predictor.decide(scores)),
                 "serialise": per_call(lambda: answer_body(answers, 0, n, request_id="id", version=1, is_list=is_list))}
        frame = pd.DataFrame(json.loads(body) if is_list else [json.loads(body)])
        steps["(the frame path: Predictor.predict)"] = per_call(lambda: predictor.predict(frame), 50)
        out[label] = {k: round(v / n, 1) for k, v in steps.items()}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--registry", help="serve this registry's champion (default: a default run's)")
    parser.add_argument("--folder", default="bench/out/serve")
    parser.add_argument("--app", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.app:  # a reference server, in its own process
        import uvicorn

        kind, registry, rows, port = args.app
        app = naive_app(registry) if kind == "naive" else bound_app(registry, rows)
        uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False)
        return
    if args.load:  # the load generator, in its own process
        url, bodies_path, clients, seconds = args.load
        bodies = [line.encode() for line in Path(bodies_path).read_text().splitlines()]
        print(json.dumps(asyncio.run(load(url, bodies, int(clients), float(seconds)))))
        return

    import pandas as pd

    from mllifecycle.batch import input_columns
    from mllifecycle.registry import Registry

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    if args.registry:
        registry, rows = Path(args.registry), None
    else:
        registry, run = default_registry(folder)
        rows = run / "data" / "test.parquet"
    predictor = Registry(registry).load("champion")
    if rows is None:  # the test split of the run the champion came from
        manifest = Registry(registry).package("champion").read_json("manifest.json")
        rows = Path(manifest["source_run"]) / "data" / "test.parquet"
    test = pd.read_parquet(rows).head(1000)
    records = json.loads(test[input_columns(predictor)].to_json(orient="records", date_format="iso", date_unit="us"))
    bodies_path = folder / "bodies.jsonl"
    bodies_path.write_text("\n".join(json.dumps(r) for r in records))
    print(f"champion: version {predictor.version} ({predictor.name}, {predictor.family}); {args.clients} clients, "
          f"{args.seconds:.0f} s each; {os.cpu_count()} CPUs", flush=True)
    results = {}
    for kind in ("naive", "bound", "serve"):
        results[kind] = measure(kind, registry, rows, bodies_path, args)
        print(f"{kind:>6}: {results[kind]}", flush=True)
    steps = where_the_time_goes(registry, rows, [json.dumps(r).encode() for r in records])
    print("\nmicroseconds per record, in process (one thread):")
    print(pd.DataFrame(steps).to_string())
    ours, naive, bound = results["serve"], results["naive"], results["bound"]
    print(json.dumps({"model": predictor.name, "family": predictor.family, "clients": args.clients,
                      "naive_rps": naive["rps"], "naive_p99_ms": naive["p99_ms"], "bound_rps": bound["rps"],
                      "bound_p99_ms": bound["p99_ms"], "rps": ours["rps"], "p50_ms": ours["p50_ms"],
                      "p95_ms": ours["p95_ms"], "p99_ms": ours["p99_ms"],
                      "errors": {k: v for k, v in ours["statuses"].items() if k != "200"},
                      "ratio": round(ours["rps"] / naive["rps"], 2),
                      "bound_fraction": round(ours["rps"] / bound["rps"], 2)}))


if __name__ == "__main__":
    main()
