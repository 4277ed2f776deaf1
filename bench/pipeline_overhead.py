"""Orchestration overhead of the Prefect training flow.

Runs, in the project (after `make demo` has imported the demo data), the same work twice, each
in its own process with its own empty BentoML store:
- direct: every step called straight from the library, each timed: the DVC stages forced to run
  (validate, prepare, train, evaluate), release (gate, register, promote), package;
- flow: `training_pipeline(force=True)` under Prefect (a temporary local server when
  PREFECT_API_URL is unset, as on a fresh machine).
Prints JSON: per-step direct times, the flow's wall time, overhead = flow wall - sum of direct
steps, and overhead as a share of the flow run (target: <= 10%).

    .venv/bin/python bench/pipeline_overhead.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def direct() -> dict[str, float]:
    from tuneloop.config import load_params
    from tuneloop.package import build_bento
    from tuneloop.pipeline import repro
    from tuneloop.release import release

    times: dict[str, float] = {}
    for stage in ("validate", "prepare", "pretrain", "train", "evaluate"):
        times[stage] = repro(stage, force=True).seconds
    start = time.perf_counter()
    done = release(
        load_params(),
        Path("models/candidate"),
        Path("data/prepared/test.csv"),
        eval_dir=Path("reports/eval"),
        gate_dir=Path("reports/gate"),
        reason="bench",
    ).raise_if_refused()
    times["release"] = time.perf_counter() - start
    start = time.perf_counter()
    build_bento(str(done.champion))
    times["package"] = time.perf_counter() - start
    return times


def flow() -> dict[str, float]:
    from tuneloop.pipeline import load_flow

    start = time.perf_counter()
    state = load_flow("flows/training.py", "training_pipeline")(force=True, return_state=True)
    wall = time.perf_counter() - start
    if not state.is_completed():
        raise SystemExit(f"flow run ended {state.name}: {state.message}")
    return {"flow_wall": wall}


def _child(mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "BENTOML_HOME": home,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "BENTOML_DO_NOT_TRACK": "true",
            "HF_HUB_OFFLINE": "1",
        }
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
        done = subprocess.run([sys.executable, __file__, "--mode", mode], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["direct", "flow"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(direct() if args.mode == "direct" else flow()))
        return
    if not Path("data/raw/corpus.csv").exists():
        raise SystemExit("run `make demo` first: the benchmark uses the demo corpus in data/raw/")
    steps = _child("direct")
    wall = _child("flow")["flow_wall"]
    total = sum(steps.values())
    print(
        json.dumps(
            {
                "direct_steps_s": {k: round(v, 2) for k, v in steps.items()},
                "direct_total_s": round(total, 2),
                "flow_wall_s": round(wall, 2),
                "overhead_s": round(wall - total, 2),
                "overhead_share": round((wall - total) / wall, 4),
                "target_share": 0.10,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
