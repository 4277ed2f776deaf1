"""Cost of monitoring, two sections, printed as JSON.

1. `embedding`: should the service log a projected embedding with each prediction? Side by side on
   the served variant, interleaved rounds: predict_proba (what the service ran) vs
   predict_with_embedding (the same forward pass + mean-pool + 384x32 projection), one text per
   call and batches of 16; and the throughput of computing embeddings after the fact, extrapolated
   to 100k logged texts (what monitoring would pay per run without the logged column).
2. `window`: one monitoring run over --rows logged predictions, end to end from the SQL log
   (read_window, descriptors, novelty, Evidently reports, estimate, verdict, HTML report, workspace
   snapshot) in a child process, on SQLite and on PostgreSQL (127.0.0.1:5432, trust auth) when
   reachable: wall time, the child's CPU seconds (imports included; on this shared 2-core machine
   the wall time depends on the other engineers' load, the CPU time much less) and peak RSS.
   Rows are demo pool texts with their logged embeddings, repeated to --rows, after --history older
   rows; --feedback-share of all of them carry a feedback label (the estimate's calibration reads
   the newest monitor.calibration_feedback_rows labeled rows before the window).

    PYTHONPATH=src .venv/bin/python bench/monitor_cost.py --model /tmp/mon-demo/models/candidate \\
        --data /tmp/mon-demo/data/prepared/val.csv /tmp/mon-demo/data/prepared/test.csv --rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import monitor_pools as pools


def embedding_cost(model: Path, backend: str, rounds: int, threads: int) -> dict:
    import torch

    from tuneloop.compress import for_serving
    from tuneloop.model import load_classifier, predict_proba, predict_with_embedding

    torch.set_num_threads(threads)  # on a loaded machine 2 spinning threads stall each other (measured 0.5-0.9 s/text)
    clf = for_serving(load_classifier(model), backend)
    texts = pools.pool_rows("none")["text"].tolist()[:512]
    timings: dict[str, list[float]] = {k: [] for k in ("proba_1", "embed_1", "proba_16", "embed_16")}
    for _ in range(rounds):  # interleaved, so load changes hit both alike
        for size in (1, 16):
            for name, fn in (("proba", predict_proba), ("embed", predict_with_embedding)):
                started = time.perf_counter()
                for start in range(0, 128, size):
                    fn(clf, texts[start : start + size], batch_size=16)
                timings[f"{name}_{size}"].append((time.perf_counter() - started) / (128 / size) * 1000)
    started = time.perf_counter()
    predict_with_embedding(clf, texts, batch_size=64)
    per_text = (time.perf_counter() - started) / len(texts)
    median = {k: float(np.median(v)) for k, v in timings.items()}
    return {
        "ms_per_call": {k: round(v, 2) for k, v in median.items()},
        "overhead_single_pct": round(100 * (median["embed_1"] / median["proba_1"] - 1), 1),
        "overhead_batch16_pct": round(100 * (median["embed_16"] / median["proba_16"] - 1), 1),
        "bytes_per_row": 32 * 4,
        "recompute_100k_s": round(per_text * 100_000, 1),
        "threads": threads,
    }


def fill_log(url: str, tag: str, rows: int, model: Path, backend: str, feedback_share: float) -> None:
    """`rows` predictions of `tag`, texts and embeddings from the scored demo pools, a minute apart; every
    1/feedback_share-th of them gets its true label as feedback."""
    from tuneloop.predlog import Prediction, PredictionLog

    pool = pools.scored_pool(model, "none", backend)
    plog = PredictionLog(url, flush_interval_s=3600, max_buffer=10**9)
    start = datetime.now(UTC) - timedelta(minutes=rows)
    for i in range(rows):
        row = pool.iloc[i % len(pool)]
        plog.log(
            Prediction(
                request_id=f"bench{i:012d}", text=row["text"], predicted=row["predicted"], confidence=row["confidence"],
                top_k=json.loads(row["top_k"]), model_tag=tag, latency_ms=5.0, created_at=start + timedelta(minutes=i),
                embedding=row["embedding"],
            )
        )  # fmt: skip
        if i % 20000 == 19999:
            plog.flush()
    plog.flush()
    step = round(1 / feedback_share) if feedback_share else 0
    labeled = [(f"bench{i:012d}", pool.iloc[i % len(pool)]["label"]) for i in range(0, rows, step)] if step else []
    for chunk in range(0, len(labeled), 5000):
        plog.record_feedback_many(labeled[chunk : chunk + 5000])
    plog.close()


CHILD = """
import json, resource, sys, time
from tuneloop.config import load_params
from tuneloop.monitor.run import run_monitoring
params = load_params(sys.argv[1]).monitor.model_copy(update={"workspace": sys.argv[3], "state_dir": sys.argv[4]})
started = time.perf_counter()
verdict = run_monitoring(params, db_url=sys.argv[2], last=int(sys.argv[5]))
print(json.dumps({"seconds": round(time.perf_counter() - started, 1), "rows": verdict.window.rows,
                  "calibration_feedback_rows": verdict.estimate.calibration_feedback_rows if verdict.estimate else None,
                  "status": verdict.status, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "cpu_s_whole_process": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1)}))
"""


def window_cost(url: str, rows: int, args: argparse.Namespace, tmp: Path) -> dict:
    """Register the champion with its reference, fill the log, time one run in a child process."""
    from tuneloop import registry
    from tuneloop.monitor.reference import write_reference

    ref = write_reference(pools.reference(args.model, args.data, args.backend), tmp / "reference.parquet")
    entry = registry.register(args.model, reference=ref)
    registry.promote(entry.tag, reason="bench")
    started = time.perf_counter()
    fill_log(url, entry.tag, rows + args.history, args.model, args.backend, args.feedback_share)
    filled = time.perf_counter() - started
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(args.params), url, str(tmp / "ws"), str(tmp / "state"), str(rows)],
        capture_output=True, text=True, env=os.environ,
    )  # fmt: skip
    if child.returncode:
        return {"database": url.split(":")[0], "error": child.stderr[-2000:]}
    result = json.loads(child.stdout.strip().splitlines()[-1])
    return {
        "database": url.split(":")[0],
        "logged_rows": rows + args.history,
        "feedback_share": args.feedback_share,
        "fill_s": round(filled, 1),
        "child_wall_s": round(time.perf_counter() - started, 1),
        **result,
    }


def postgres_url() -> str | None:
    try:
        import psycopg

        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3, autocommit=True
        ) as c:
            c.execute("DROP DATABASE IF EXISTS tuneloop_monitor_bench WITH (FORCE)")
            c.execute("CREATE DATABASE tuneloop_monitor_bench")
    except Exception as exc:
        print(json.dumps({"postgresql": f"skipped: {str(exc).splitlines()[0]}"}))
        return None
    return "postgresql+psycopg://postgres@127.0.0.1:5432/tuneloop_monitor_bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml").resolve())
    parser.add_argument("--backend", default="torch-int8")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=20_000, help="older rows logged before the window")
    parser.add_argument("--feedback-share", type=float, default=0.2, help="share of logged rows with a label")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the embedding section")
    parser.add_argument("--sections", nargs="*", default=["embedding", "window"])
    args = parser.parse_args()
    print(json.dumps({"load_average": os.getloadavg(), "cpus": os.cpu_count()}), flush=True)
    if "embedding" in args.sections:
        print(
            json.dumps({"embedding": embedding_cost(args.model, args.backend, args.rounds, args.threads)}), flush=True
        )
    if "window" in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["BENTOML_HOME"] = str(Path(tmp) / "bentoml")
            urls = [f"sqlite:///{tmp}/log.db", postgres_url()]
            for url in [u for u in urls if u]:
                print(json.dumps({"window": window_cost(url, args.rows, args, Path(tmp))}), flush=True)


if __name__ == "__main__":
    main()
