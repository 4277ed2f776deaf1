"""Scheduled runs you can trust: N back-to-back deployment runs with nothing changed, on a busy machine.

In the project (after `make demo`: data imported, a champion promoted), starts what an operator starts:
`tuneloop dashboard` (a Prefect server with its own PREFECT_HOME), `tuneloop deploy`, and a process worker
on the deployment's pool; then `--busy` processes spinning on every core, and N runs of
`tuneloop-training/training`, one after another. Prints JSON: each run's final state and wall time,
how many Completed / Failed, how many promotions happened (target: N Completed, 0 Failed, 0 promotions),
and that every process it started is gone afterwards.

    .venv/bin/python bench/scheduled_runs.py --runs 20 --busy 2
"""

from __future__ import annotations

import argparse
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


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> bool:
    """SIGTERM the process group, SIGKILL what is left after 20 s; True when nothing of it remains."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.time() + 20
        while time.time() < deadline:
            if not subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).stdout.strip():
                proc.wait(5)
                return sig == signal.SIGTERM
            proc.poll()
            time.sleep(0.3)
    return False


def _wait_ok(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {seconds:.0f} s")


def _one_run(api: str, env: dict[str, str], deployment_id: str) -> dict:
    started = time.perf_counter()
    # what `prefect deployment run` does, keeping the run's id (the cron schedule queues runs of its own)
    response = httpx.post(f"{api}/deployments/{deployment_id}/create_flow_run", json={}, timeout=60)
    if response.status_code not in (200, 201):  # the server refused to create the run: report it, do not crash
        return {
            "state": f"NOT CREATED ({response.status_code})",
            "message": response.text[:200],
            "wall_s": round(time.perf_counter() - started, 1),
        }
    runs = [response.json()]
    while True:
        run = httpx.get(f"{api}/flow_runs/{runs[0]['id']}").json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return {
                "state": run["state_type"],
                "message": ((run.get("state") or {}).get("message") or "")[:200],
                "wall_s": round(time.perf_counter() - started, 1),
            }
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--busy", type=int, default=2, help="processes spinning on the CPU during the runs")
    args = parser.parse_args()
    from tuneloop import registry
    from tuneloop.config import load_params

    task = load_params().task.name
    if registry.champion(task) is None:
        raise SystemExit("run `make demo` first: the benchmark needs a champion and the demo data")
    promotions_before = len(registry.history(task))
    port, logs = _port(), Path(tempfile.mkdtemp(prefix="tuneloop-sched-"))
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(logs / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    client = {**env, "PREFECT_API_URL": api}
    started: list[subprocess.Popen] = [
        _start([sys.executable, "-m", "tuneloop", "dashboard", "--port", str(port)], env, logs / "server.log")
    ]
    results: list[dict] = []
    try:
        _wait_ok(f"{api}/health", 120)
        subprocess.run([sys.executable, "-m", "tuneloop", "deploy"], env=client, check=True, capture_output=True)
        deploy = load_params().deploy  # a worker per pool: the pipeline on the CPU pool, the train stage on the GPU's
        started += [
            _start(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", "1"],
                client,
                logs / f"worker-{pool}.log",
            )
            for pool in (deploy.cpu_pool, deploy.gpu_pool)
        ]
        started += [
            _start([sys.executable, "-c", "while True: pass"], env, logs / "busy.log") for _ in range(args.busy)
        ]
        deployment_id = httpx.get(f"{api}/deployments/name/tuneloop-training/training").json()["id"]
        for _ in range(args.runs):
            results.append(_one_run(api, client, deployment_id))
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        clean = [_stop(proc) for proc in reversed(started)]
    states = [r["state"] for r in results]
    print(
        json.dumps(
            {
                "runs": len(results),
                "completed": states.count("COMPLETED"),
                "failed": len(states) - states.count("COMPLETED"),
                "promotions": len(registry.history(task)) - promotions_before,
                "busy_processes": args.busy,
                "median_run_s": sorted(r["wall_s"] for r in results)[len(results) // 2] if results else None,
                "load_average_1m_at_end": os.getloadavg()[0],
                "all_processes_gone": all(clean),
                "failures": [r for r in results if r["state"] != "COMPLETED"],
                "logs": str(logs),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
