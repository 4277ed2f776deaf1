"""The service switching champions under load: failed requests, lost log rows and p99 during the switch.

After `make demo` (a champion in the store). Registers a second model of the same task (the champion's
weights with its classifier bias nudged by 1e-3: same answers, other weights, so a real load, verify
and swap), starts `bentoml serve` following the champion (`serve.follow_champion_s` 1 s), sends
--clients closed-loop clients for --seconds, promotes the second model a third of the way in, then
stops the service (SIGTERM: the prediction log is flushed) and reads the log. Prints JSON: requests,
failures, when the new tag first answered, p99 before the promotion ("steady") and from the
promotion until 5 s after the first new answer ("switch"), their ratio, and answered requests vs
logged rows. Targets (issue 13): 0 failed, 0 lost log rows, switch p99 <= 2 x steady p99. The
original champion is promoted back at the end.

    .venv/bin/python bench/champion_switch.py --clients 32 --seconds 45
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import monitor_pools as pools
from serve_overload import start  # the same start-up and readiness wait

REPO = Path(__file__).resolve().parents[1]


def nudged_copy(model_dir: Path, out: Path) -> Path:
    """The model with classifier.bias + 1e-3: other weights (another SHA-256), the same predictions."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    weights = load_file(out / "model.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] + 1e-3
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


async def load(port: int, texts: list[str], clients: int, seconds: float, promote_at=None, promote=None) -> list[dict]:
    """Closed-loop clients; `promote()` runs in a thread at `promote_at` seconds. One record per request."""
    import httpx

    records: list[dict] = []
    origin = time.perf_counter()
    end = origin + seconds
    if promote is not None:
        threading.Timer(promote_at, promote).start()

    async def client(k: int, http: httpx.AsyncClient) -> None:
        i = k
        while time.perf_counter() < end:
            started = time.perf_counter()
            record = {"t": started - origin}
            try:
                answer = await http.post("/classify", json={"texts": [texts[i % len(texts)]]})
                record["status"] = answer.status_code
                if answer.status_code == 200:
                    record["model"] = answer.json()[0]["model"]
                    record["request_id"] = answer.json()[0]["request_id"]
            except httpx.HTTPError as exc:
                record["status"] = type(exc).__name__
            record["ms"] = (time.perf_counter() - started) * 1000
            records.append(record)
            i += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    return records


def p99(values: list[float]) -> float | None:
    return round(float(np.percentile(values, 99)), 1) if values else None


def summarise(records: list[dict], promote_at: float, new_tag: str) -> dict:
    answered = [r for r in records if r["status"] == 200]
    first_new = min((r["t"] for r in answered if r["model"] == new_tag), default=None)
    steady = [r["ms"] for r in answered if r["t"] < promote_at]
    until = (first_new if first_new is not None else promote_at) + 5
    switch = [r["ms"] for r in answered if promote_at <= r["t"] <= until]
    return {
        "requests": len(records),
        "failed": len(records) - len(answered),
        "failures": sorted({str(r["status"]) for r in records if r["status"] != 200}),
        "promoted_at_s": round(promote_at, 1),
        "new_tag_first_answered_at_s": round(first_new, 1) if first_new is not None else None,
        "steady_p99_ms": p99(steady),
        "switch_p99_ms": p99(switch),
        "switch_vs_steady_p99": round(p99(switch) / p99(steady), 2) if steady and switch else None,
        "after_p99_ms": p99([r["ms"] for r in answered if r["t"] > until]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=45)
    args = parser.parse_args()

    from tuneloop import registry
    from tuneloop.demo import generate
    from tuneloop.predlog import read_window

    params, old = pools.demo_champion()
    work = Path(tempfile.mkdtemp(prefix="tuneloop-switch-"))
    new = registry.register(nudged_copy(Path(old.path), work / "nudged"), task=params.task.name)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["serve"]["follow_champion_s"] = 1.0
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    db = f"sqlite:///{work / 'log.db'}"
    env = {**os.environ, "TUNELOOP_PARAMS": str(work / "params.yaml"), "TUNELOOP_DB_URL": db}
    env.pop("TUNELOOP_MODEL_TAG", None)
    texts = generate(2000, seed=7)["text"].tolist()
    proc, port = start(env, work / "server.log")
    promote_at = args.seconds / 3
    try:
        asyncio.run(load(port, texts, 4, 5))  # warm-up
        records = asyncio.run(
            load(port, texts, args.clients, args.seconds, promote_at,
                 lambda: registry.promote(new.tag, reason="bench/champion_switch.py", forced=True))
        )  # fmt: skip
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)
        registry.promote(old.tag, reason="bench/champion_switch.py: back to the original champion", forced=True)
    report = summarise(records, promote_at, new.tag)
    answered_ids = {r["request_id"] for r in records if r["status"] == 200}
    logged = read_window(db)
    report["answered"] = len(answered_ids)
    report["logged_of_answered"] = int(logged["request_id"].isin(answered_ids).sum())
    report["logged_models"] = sorted(set(logged["model_tag"]))
    report["old_tag"], report["new_tag"] = old.tag, new.tag
    report["targets"] = {"failed": 0, "lost_log_rows": 0, "switch_vs_steady_p99": 2.0}
    report["load_average"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
