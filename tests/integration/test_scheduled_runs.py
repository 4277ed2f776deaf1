"""A real scheduled run: a Prefect server, `tuneloop deploy`, a process worker on `tuneloop-local`, and
deployment runs of the training flow with the tiny model. The first run trains, gates and promotes; a
second run with nothing changed ends Completed with "no new model". Everything started is gone after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import free_port, fresh_postgres_db, wait_http_ok
from tests.integration.test_training_flow import _configure
from tuneloop import registry

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@contextmanager
def process_group(cmd: list[str], env: dict[str, str], cwd: str, log) -> Iterator[subprocess.Popen]:
    """Start `cmd` in its own session; on exit, SIGTERM then SIGKILL its whole group and check it is empty."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait
            while time.time() < deadline and _group_alive(proc.pid):
                proc.poll()
                time.sleep(0.2)
        proc.wait(10)
        assert not _group_alive(proc.pid), f"{cmd[:4]} left processes behind"


def _group_alive(pgid: int) -> bool:
    alive = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return any(_state(pid) not in ("Z", "") for pid in alive)


def _state(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _wait_for_run(api: str, run_id: str, seconds: float) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(2)
    pytest.fail(f"flow run {run_id} did not finish within {seconds:.0f} s")


def _run_deployment(api: str) -> dict:
    """What `prefect deployment run tuneloop-training/training` does, keeping the new run's id (the cron
    schedule has runs of its own queued for later)."""
    deployment = httpx.get(f"{api}/deployments/name/tuneloop-training/training", timeout=10).json()
    created = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={}, timeout=30)
    assert created.status_code in (200, 201), created.text
    return _wait_for_run(api, created.json()["id"], 600)


def _artifacts(api: str, run_id: str) -> dict[str, dict]:
    found = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}, timeout=10)
    return {a["key"]: a for a in found.json() if a.get("key")}


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_scheduled_deployment_runs_on_a_real_worker(database, project, cli, tiny_model, store, tmp_path):
    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "300").exit_code == 0
    assert cli("data", "import", "build/demo.csv").exit_code == 0
    _configure(project, tiny_model)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if database == "postgres":
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = fresh_postgres_db("tuneloop_scheduled_test", driver="asyncpg")
    client = {**env, "PREFECT_API_URL": api}
    client.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    with open(tmp_path / "server.log", "w") as server_log, open(tmp_path / "worker.log", "w") as worker_log:
        with process_group(
            [sys.executable, "-m", "tuneloop", "dashboard", "--port", str(port)], env, str(project), server_log
        ):
            wait_http_ok(f"{api}/health", 120)
            deployed = subprocess.run(
                [sys.executable, "-m", "tuneloop", "deploy"],
                cwd=project,
                env=client,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert deployed.returncode == 0, deployed.stdout + deployed.stderr[-2000:]
            automations = httpx.post(f"{api}/automations/filter", json={}, timeout=10).json()
            trigger = next(a for a in automations if a["name"] == "retrain classifier on drift")
            assert "tuneloop.drift.detected" in trigger["trigger"]["expect"]
            assert trigger["actions"][0]["parameters"] == {"retrain": True}  # the drift event retrains
            with process_group(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "tuneloop-local", "--limit", "1"],
                client,
                str(project),
                worker_log,
            ):
                first = _run_deployment(api)
                assert first["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
                artifacts = _artifacts(api, first["id"])
                assert {"validation-report", "evaluation-metrics", "gate-verdict", "champion-model"} <= set(artifacts)
                champion = registry.champion()
                assert champion is not None and artifacts["champion-model"]["description"] == champion.tag

                second = _run_deployment(api)  # nothing changed
                assert second["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-4000:]
                again = _artifacts(api, second["id"])
                assert again["gate-verdict"]["description"] == "NO NEW MODEL"
                assert "no new model" in again["champion-model"]["description"]
                assert registry.champion().tag == champion.tag and len(registry.history()) == 1
