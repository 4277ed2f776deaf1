"""A no-drift run never retrains: N monitoring runs, one after another, on fresh undrifted traffic.

After `make demo` (a champion with its stored reference). Each run appends --size predictions of
undrifted demo traffic (a generator seed the corpus never used, scored by the champion's served
variant with the embedding the service logs) to a SQLite prediction log, then runs
`tuneloop.monitor.run.run_monitoring` (what `tuneloop monitor run` and the monitoring flow run) on
the newest --size rows, with the policy's state (hysteresis, history) kept between runs. Prints
JSON: every run's status and drifted signals, and how many said retrain (target, issue 13: 0 of 20).

    PYTHONPATH=src .venv/bin/python bench/no_drift_runs.py --runs 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import monitor_pools as pools


def log_rows(url: str, tag: str, frame, start: datetime) -> None:
    from tuneloop.predlog import Prediction, PredictionLog

    plog = PredictionLog(url)
    for i, row in enumerate(frame.itertuples(index=False)):
        plog.log(
            Prediction(
                request_id=f"{int(start.timestamp()):010d}{i:022d}", text=row.text, predicted=row.predicted,
                confidence=row.confidence, top_k=json.loads(row.top_k), model_tag=tag, latency_ms=5.0,
                created_at=start + timedelta(seconds=i), embedding=row.embedding,
            )
        )  # fmt: skip
    plog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=200, help="rows per window (monitor.window's role)")
    parser.add_argument("--seed", type=int, default=777)
    args = parser.parse_args()

    from tuneloop.monitor.run import run_monitoring

    params, champion = pools.demo_champion()
    traffic = pools.scored_pool_rows(
        Path(champion.path), "none", params.serve.backend, rows=args.size * args.runs, seed=args.seed
    )
    work = Path(tempfile.mkdtemp(prefix="tuneloop-nodrift-"))
    monitor = params.monitor.model_copy(update={"workspace": str(work / "ws"), "state_dir": str(work / "state")})
    url = f"sqlite:///{work / 'log.db'}"
    start, runs = datetime.now(UTC) - timedelta(days=1), []
    for k in range(args.runs):
        log_rows(url, champion.tag, traffic.iloc[k * args.size : (k + 1) * args.size], start + timedelta(hours=k))
        started = time.perf_counter()
        now = start + timedelta(hours=k, minutes=30)
        verdict = run_monitoring(monitor, db_url=url, last=args.size, task=params.task.name, now=now)
        runs.append(
            {
                "status": verdict.status,
                "drifted": [s.name for s in verdict.signals if s.drifted and s.counts],
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    statuses = [r["status"] for r in runs]
    print(
        json.dumps(
            {
                "runs": args.runs,
                "window": args.size,
                "retrain_verdicts": statuses.count("retrain"),
                "drifted_windows": sum(s != "ok" for s in statuses),
                "statuses": statuses,
                "details": runs,
                "champion": champion.tag,
                "target_retrain_verdicts": 0,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
