"""Fixtures and helpers shared by the integration tests: the Prefect test server, process groups (servers,
workers) that leave nothing behind, deployment runs through the API."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the session's in-process flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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


def wait_for_run(api: str, run_id: str, seconds: float) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(2)
    pytest.fail(f"flow run {run_id} did not finish within {seconds:.0f} s")


def run_deployment_and_wait(api: str, name: str, seconds: float) -> dict:
    """What `prefect deployment run NAME` does, keeping the new run's id (a cron schedule has runs of its own
    queued for later), then wait for that run to end."""
    deployment = httpx.get(f"{api}/deployments/name/{name}", timeout=10).json()
    created = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run", json={}, timeout=30)
    assert created.status_code in (200, 201), created.text
    return wait_for_run(api, created.json()["id"], seconds)
