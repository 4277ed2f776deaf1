"""Load benchmark of the real service: batched vs unbatched, side by side, plus SIGTERM under load.

For each mode it starts `bentoml serve tuneloop.serve.service:TextClassifier` (a real HTTP
process, the champion model or --model), drives it with N concurrent clients sending one text per
request, stops it with SIGTERM and counts the prediction-log rows. Prints JSON: req/s, texts/s,
p50/p95/p99 latency, errors, logged rows vs requests sent, for batched and unbatched, and their
ratio; then a SIGTERM sent mid-load: every answered request must be in the log.

    .venv/bin/python bench/serve_load.py --requests 600 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(params: dict, workdir: Path, tag: str | None) -> tuple[subprocess.Popen, str, str]:
    """Start the service with `params`; returns (process, base URL, log database URL)."""
    params_file = workdir / f"params-{time.time_ns()}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    db = f"sqlite:///{workdir / f'log-{time.time_ns()}.db'}"
    env = {**os.environ, "TUNELOOP_PARAMS": str(params_file), "TUNELOOP_DB_URL": db, "BENTOML_DO_NOT_TRACK": "true"}
    if tag:
        env["TUNELOOP_MODEL_TAG"] = tag
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "tuneloop.serve.service:TextClassifier",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base, db
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("the service did not become ready in 120 s")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(120)


async def drive(base: str, texts: list[str], requests: int, concurrency: int,
                answered: list[str] | None = None) -> dict:
    latencies: list[float] = []
    errors = 0
    statuses: dict[str, int] = {}
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        async def one(i: int) -> None:
            nonlocal errors
            async with gate:
                start = time.perf_counter()
                try:
                    response = await client.post("/classify", json={"texts": [texts[i % len(texts)]]})
                    ok = response.status_code == 200
                    key = str(response.status_code)
                except httpx.HTTPError as exc:
                    ok, key = False, type(exc).__name__
                statuses[key] = statuses.get(key, 0) + 1
                latencies.append((time.perf_counter() - start) * 1000)
                if ok and answered is not None:
                    answered.append(response.json()[0]["request_id"])
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - started
    lat = np.array(latencies)
    return {"requests": requests, "concurrency": concurrency, "req_per_s": round(requests / wall, 1),
            "texts_per_s": round(requests / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "errors": errors, "statuses": statuses, "wall_s": round(wall, 2)}


def logged(db: str) -> set[str]:
    from tuneloop.serve.predlog import PredictionLog

    plog = PredictionLog(db)
    ids = {row["request_id"] for row in plog.joined()}
    plog.close()
    return ids


def run_mode(params: dict, batching: bool, args: argparse.Namespace, texts: list[str], workdir: Path) -> dict:
    params = {**params, "serve": {**params["serve"], "batching": batching}}
    proc, base, db = start(params, workdir, args.model)
    try:
        asyncio.run(drive(base, texts, 32, min(8, args.concurrency)))  # warm-up, not measured
        result = asyncio.run(drive(base, texts, args.requests, args.concurrency))
    finally:
        stop(proc)
    result["requests_sent"] = args.requests + 32
    result["logged_rows"] = len(logged(db))
    return result


def sigterm_under_load(params: dict, args: argparse.Namespace, texts: list[str], workdir: Path) -> dict:
    proc, base, db = start(params, workdir, args.model)
    answered: list[str] = []

    async def load_then_stop() -> None:
        task = asyncio.create_task(drive(base, texts, args.requests, args.concurrency, answered))
        await asyncio.sleep(1.5)
        os.killpg(proc.pid, signal.SIGTERM)  # mid-load
        await task

    asyncio.run(load_then_stop())
    proc.wait(120)
    ids = logged(db)
    return {"answered": len(answered), "answered_and_logged": len(set(answered) & ids),
            "answered_missing_from_log": len(set(answered) - ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--model", help="model tag (default: the champion)")
    parser.add_argument("--data", type=Path, default=Path("data/prepared/test.csv"), help="texts to send")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()

    import pandas as pd

    texts = pd.read_csv(args.data)["text"].astype(str).tolist()
    params = yaml.safe_load(args.params.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        batched = run_mode(params, True, args, texts, workdir)
        unbatched = run_mode(params, False, args, texts, workdir)
        sigterm = sigterm_under_load(params, args, texts, workdir)
    print(json.dumps({"batched": batched, "unbatched": unbatched,
                      "ratio_req_per_s": round(batched["req_per_s"] / max(unbatched["req_per_s"], 1e-9), 2),
                      "sigterm_under_load": sigterm,
                      "targets": {"ratio": 2.5, "p95_ms": 250, "errors": 0}}, indent=2))


if __name__ == "__main__":
    main()
