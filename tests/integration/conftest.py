"""Fixtures and helpers shared by the integration tests: the Prefect test server, process groups (servers,
workers) that leave nothing behind, deployment runs through the API, an S3-compatible server (Moto)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


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


RETRIED = {429, 502, 503}


def prefect_api(method: str, url: str, *, json: object = None, timeout: float = 30) -> httpx.Response:
    """One call to the Prefect API, retried as Prefect's own client retries (429, 502, 503 with backoff): a
    server on SQLite answers 503 while another writer holds the database, and the client is expected to retry."""
    for attempt in range(6):
        response = httpx.request(method, url, json=json, timeout=timeout)
        if response.status_code not in RETRIED:
            return response
        time.sleep(min(2**attempt, 10))
    return response


def wait_for_run(api: str, run_id: str, seconds: float) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        run = prefect_api("GET", f"{api}/flow_runs/{run_id}").json()
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(2)
    pytest.fail(f"flow run {run_id} did not finish within {seconds:.0f} s")


def run_deployment(api: str, name: str) -> str:
    """What `prefect deployment run NAME` does, keeping the new run's id (a cron schedule has runs of its own
    queued for later)."""
    deployment = prefect_api("GET", f"{api}/deployments/name/{name}").json()
    created = prefect_api("POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json={})
    assert created.status_code in (200, 201), created.text
    return str(created.json()["id"])


def run_deployment_and_wait(api: str, name: str, seconds: float) -> dict:
    """Run deployment NAME now and wait for that run to end."""
    return wait_for_run(api, run_deployment(api, name), seconds)


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/team"

    def settings(self) -> list[str]:
        return ["--set", f"store.url={self.url}", "--set", f"store.endpoint_url={self.endpoint}"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Moto S3 server process on a free port for the session; skipped with the reason where it cannot start."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"moto[server] is not installed ({exc}): pip install -e '.[dev]'")
    port, log = free_port(), tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as out:  # a file, not a pipe: the server logs every request and would fill a pipe
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            if httpx.get(endpoint, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            last = (log.read_text(errors="replace").strip().splitlines() or ["no answer within 30 s"])[-1]
            pytest.skip(f"Moto's S3 server did not start on 127.0.0.1:{port}: {last}")
        time.sleep(0.2)
    yield endpoint
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(10)


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A fresh bucket on the server, and AWS credentials in the environment only (as the store wants them)."""
    import boto3

    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "tuneloop-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "tuneloop-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")  # never the developer's ~/.aws
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = f"tuneloop-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return S3(s3_server, bucket)


def pull_elsewhere(home: Path, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tuneloop models pull ARGS` as another machine would: its own process and BentoML home."""
    return subprocess.run(
        [sys.executable, "-m", "tuneloop", "models", "pull", *args],
        cwd=work,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def serving(cwd: Path, env: dict[str, str], *args: str) -> Iterator[str]:
    """`tuneloop serve` on a free port in `cwd` with `env`, ready (readyz); yields its URL, SIGTERMs it after."""
    from tests.conftest import wait_http_ok

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tuneloop", "serve", "--port", str(port), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/readyz", 90)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
