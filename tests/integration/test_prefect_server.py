"""`tuneloop dashboard` against PostgreSQL: a real Prefect server on 127.0.0.1:5432's database, a real
flow run and the scheduled training deployment created by `tuneloop deploy` land in it."""

import os
import subprocess
import sys

import pytest

from tests.conftest import free_port, fresh_postgres_db, wait_http_ok
from tests.integration.conftest import prefect_api

DB = "tuneloop_prefect_test"


@pytest.mark.postgres
def test_dashboard_on_postgres_records_runs_and_the_scheduled_deployment(project, tmp_path):
    url, port = fresh_postgres_db(DB, driver="asyncpg"), free_port()
    env = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "tuneloop", "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_http_ok(f"{api}/health", 120)
        client_env = {**env, "PREFECT_API_URL": api}
        client_env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
        code = "from prefect import flow\n@flow(name='pg-smoke')\ndef f():\n    return 42\nprint(f())"
        ran = subprocess.run([sys.executable, "-c", code], env=client_env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0 and ran.stdout.strip().endswith("42"), ran.stderr[-2000:]
        deployed = subprocess.run(
            [sys.executable, "-m", "tuneloop", "deploy"],
            cwd=project,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr[-2000:]

        runs = prefect_api("POST", f"{api}/flow_runs/filter", json={}).json()
        assert any(r["state_type"] == "COMPLETED" for r in runs)
        deployment = prefect_api("GET", f"{api}/deployments/name/tuneloop-training/training").json()
        assert deployment["work_pool_name"] == "tuneloop-cpu"
        stage = prefect_api("GET", f"{api}/deployments/name/tuneloop-train-stage/train").json()
        assert stage["work_pool_name"] == "tuneloop-gpu"
        assert deployment["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={DB}") as conn:
            assert conn.execute("SELECT count(*) FROM flow_run").fetchone()[0] >= 1  # it really is PostgreSQL
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
