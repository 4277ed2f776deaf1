"""A real scheduled run: a Prefect server, `tuneloop deploy`, a process worker on `tuneloop-cpu` (the train
stage in the same process: deploy.train_pool inline; tests/integration/test_work_pools.py has the GPU pool), and
deployment runs of the training flow with the tiny model: two started at once on a worker with room for both run one
after the other (the deployment's concurrency limit; side by side the second failed on DVC's lock); the first trains,
gates and promotes, the second, with nothing changed, ends Completed with "no new model". Everything started is gone
after."""

from __future__ import annotations

import os
from datetime import UTC, datetime
import subprocess
import sys

import pytest

from tests.conftest import free_port, fresh_postgres_db, wait_http_ok
from tests.integration.conftest import prefect_api, process_group, run_deployment, wait_for_run
from tests.integration.test_training_flow import _configure
from tuneloop import registry


def _artifacts(api: str, run_id: str) -> dict[str, dict]:
    found = prefect_api("POST", f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return {a["key"]: a for a in found.json() if a.get("key")}


def _at(timestamp: str | None) -> datetime:
    return datetime.fromisoformat(timestamp) if timestamp else datetime.max.replace(tzinfo=UTC)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_scheduled_deployment_runs_on_a_real_worker(database, project, cli, tiny_model, store, tmp_path):
    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "300").exit_code == 0
    assert cli("data", "import", "build/demo.csv").exit_code == 0
    _configure(project, tiny_model, ["deploy.train_pool=inline"])
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env["PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS"] = "3"  # a queued run retries sooner than 30 s
    env.pop("PREFECT_API_URL", None)
    if database == "postgres":
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = fresh_postgres_db("tuneloop_scheduled_test", driver="asyncpg")
    client = {**env, "PREFECT_API_URL": api, "PREFECT_WORKER_QUERY_SECONDS": "1"}  # picks runs up in 1 s, not 10
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
            automations = prefect_api("POST", f"{api}/automations/filter", json={}).json()
            trigger = next(a for a in automations if a["name"] == "retrain classifier on drift")
            assert "tuneloop.drift.detected" in trigger["trigger"]["expect"]
            assert trigger["actions"][0]["parameters"] == {"retrain": True}  # the drift event retrains
            for name, strategy in (
                ("tuneloop-training/training", "ENQUEUE"),
                ("tuneloop-monitoring/monitoring", "CANCEL_NEW"),
            ):
                deployment = prefect_api("GET", f"{api}/deployments/name/{name}").json()
                assert deployment["global_concurrency_limit"]["limit"] == 1, deployment  # one run at a time
                assert deployment["concurrency_options"]["collision_strategy"] == strategy
            with process_group(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "tuneloop-cpu", "--limit", "2"],
                client,
                str(project),
                worker_log,
            ):
                ids = [run_deployment(api, "tuneloop-training/training") for _ in range(2)]  # e.g. cron and drift
                first, second = sorted((wait_for_run(api, i, 900) for i in ids), key=lambda r: _at(r["start_time"]))
                worker_said = (tmp_path / "worker.log").read_text()[-4000:]
                assert first["state_type"] == second["state_type"] == "COMPLETED", worker_said
                assert _at(second["start_time"]) >= _at(first["end_time"]), (first, second)  # one after the other
                artifacts = _artifacts(api, first["id"])
                assert {"validation-report", "evaluation-metrics", "gate-verdict", "champion-model"} <= set(artifacts)
                champion = registry.champion()
                assert champion is not None and artifacts["champion-model"]["description"] == champion.tag

                again = _artifacts(api, second["id"])
                assert again["gate-verdict"]["description"] == "NO NEW MODEL"
                assert "no new model" in again["champion-model"]["description"]
                assert registry.champion().tag == champion.tag and len(registry.history()) == 1
