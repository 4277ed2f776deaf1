"""Issue 9 against a real `bentoml serve` (and `tuneloop serve`) process: hostile requests answered
at once with JSON, BentoML's own clients still classify, no request text in the log in private
mode, and SIGTERM / a killed server leave no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import yaml

from tests.conftest import free_port, wait_http_ok
from tests.serve.test_service_http import SERVE, serving
from tuneloop.predlog import PredictionLog

pytestmark = pytest.mark.integration
SECRET = "zebra-quokka-7781"  # a text that must never reach the log when store_text is false


def hostile(base: str, key: dict[str, str]) -> dict[str, httpx.Response]:
    """One answer per hostile request (each must come back in under 2 s)."""
    json_type = {**key, "content-type": "application/json"}
    sends = {
        "nested 1000 deep": ("/classify", b"[" * 1000 + b"]" * 1000, json_type),
        "form-encoded JSON": (
            "/classify",
            b'{"texts": ["' + SECRET.encode() + b'"]}',
            {**key, "content-type": "application/x-www-form-urlencoded"},
        ),
        "multipart": (
            "/classify",
            b"--b\r\n\r\nx\r\n--b--\r\n",
            {**key, "content-type": "multipart/form-data; boundary=b"},
        ),
        "non-ASCII key": (
            "/classify",
            b'{"texts": ["hi"]}',
            {"authorization": b"Bearer s3cr\xe9t", "content-type": "application/json"},
        ),
        "not JSON": ("/classify", b'{"texts": ["' + SECRET.encode() + b'"', json_type),
        "feedback not JSON": ("/feedback", b"{" + SECRET.encode(), json_type),
        "empty feedback": ("/feedback", b"", json_type),
    }
    answers = {}
    for case, (path, body, headers) in sends.items():
        started = time.perf_counter()
        answers[case] = httpx.post(base + path, content=body, headers=headers, timeout=10)
        assert time.perf_counter() - started < 2, case
    answers["GET /classify"] = httpx.get(f"{base}/classify", headers=key)
    answers["unknown route"] = httpx.get(f"{base}/nope", headers=key)
    return answers


def test_hostile_requests_clients_and_privacy_over_real_http(served, tmp_path):
    from bentoml import AsyncHTTPClient, SyncHTTPClient

    _, work = served
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["serve"]["store_text"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    db = f"sqlite:///{tmp_path / 'private.db'}"
    key = {"authorization": "Bearer s3cret"}
    env = {"TUNELOOP_API_KEY": "s3cret", "TUNELOOP_PARAMS": str(tmp_path / "params.yaml")}
    with serving(work, db, **env) as base:
        answers = hostile(base, key)
        expected = {"nested 1000 deep": 400, "form-encoded JSON": 415, "multipart": 415, "non-ASCII key": 401}
        expected |= {"not JSON": 400, "feedback not JSON": 400, "empty feedback": 400, "GET /classify": 405}
        expected |= {"unknown route": 404}
        assert {case: r.status_code for case, r in answers.items()} == expected
        assert all(set(r.json()) == {"error"} and SECRET not in r.text for r in answers.values())

        with SyncHTTPClient(base, token="s3cret") as client:
            sync = client.classify(texts=[f"great {SECRET}", "awful"])
        assert [len(a["top_k"]) for a in sync] == [3, 3]

        async def classify_async() -> list[dict]:
            async with AsyncHTTPClient(base, token="s3cret") as client:
                return await client.classify(texts=["great", "awful"])

        assert [a["label"] in {"neg", "neu", "pos"} for a in asyncio.run(classify_async())] == [True, True]
        assert httpx.get(f"{base}/readyz").status_code == 200
    log_text = "\n".join(p.read_text() for p in work.glob("server-*.log"))
    assert SECRET not in log_text
    plog = PredictionLog(db)
    rows = plog.joined()
    plog.close()
    assert len(rows) == 4 and all(r["text"] is None for r in rows)


def _tree(pid: int) -> list[psutil.Process]:
    return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def _all_gone(procs: list[psutil.Process], seconds: float) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=seconds)
    return all(p.status() == psutil.STATUS_ZOMBIE for p in alive if p.is_running())


def test_sigterm_to_tuneloop_serve_stops_the_whole_tree_and_flushes_the_log(served, tmp_path):
    _, work = served
    port, db = free_port(), f"sqlite:///{tmp_path / 'tree.db'}"
    server = subprocess.Popen(
        [sys.executable, "-m", "tuneloop", "serve", "--port", str(port)],
        cwd=work,
        env={**os.environ, "TUNELOOP_DB_URL": db},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # same session as the test, as from a shell: the signal goes to this one process only
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", 90)
        answered = httpx.post(f"http://127.0.0.1:{port}/classify", json={"texts": ["good", "bad", "meh"]}).json()
        tree = _tree(server.pid)
        assert any("--worker-id" in " ".join(p.cmdline()) for p in tree)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0
        assert _all_gone(tree, 10), [p.cmdline() for p in tree if p.is_running()]
    finally:
        if server.poll() is None:
            server.kill()
    plog = PredictionLog(db)
    assert plog.count() == len(answered) == 3
    plog.close()


def test_no_worker_outlives_a_server_killed_outright(served, tmp_path):
    _, work = served
    port = free_port()
    server = subprocess.Popen(
        [*SERVE, "--port", str(port)],
        cwd=work,
        env={**os.environ, "TUNELOOP_DB_URL": f"sqlite:///{tmp_path / 'k.db'}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", 90)
        workers = [p for p in _tree(server.pid)[1:] if "--worker-id" in " ".join(p.cmdline())]
        assert workers
        server.kill()  # SIGKILL: no chance to stop its workers; before the fix they kept serving
        server.wait(10)
        assert _all_gone(workers, 15)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    finally:
        for proc in _tree(server.pid)[1:] if server.poll() is None else []:
            proc.kill()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)


def test_fuzz_against_a_running_service(served, tmp_path):
    """The running service's own /docs.json through Schemathesis, then hostile requests, over real HTTP."""
    from hypothesis import assume, given, settings
    from hypothesis import strategies as st

    from tests.serve.fuzzing import BODIES, CONTENT_TYPES, assert_sound, request_of, strategies_from

    def sound(response: httpx.Response) -> None:
        # uvicorn answers bytes that are not HTTP at all (its parser refuses them) with a plain-text
        # 400 before any application code runs: out of the service's reach, and not a 5xx.
        if (response.status_code, response.text) != (400, "Invalid HTTP request received."):
            assert_sound(response)

    _, work = served
    with serving(work, f"sqlite:///{tmp_path / 'fuzz.db'}") as base, httpx.Client(base_url=base, timeout=5) as http:
        operations = strategies_from(http.get("/docs.json").json())

        @settings(max_examples=40, derandomize=True, deadline=None, database=None)
        @given(case=st.one_of(operations), body=BODIES, content_type=CONTENT_TYPES)
        def one(case, body, content_type):
            method, path, kwargs = request_of(case)
            sound(http.request(method, path, **kwargs))  # a timeout (> 5 s) fails too
            headers = {"content-type": content_type.encode("utf-8", "surrogatepass")} if content_type else {}
            try:
                response = http.post("/classify", content=body, headers=headers)
            except httpx.LocalProtocolError:  # a header value h11 will not send: not a request the server sees
                assume(False)
            sound(response)

        one()
        assert http.get("/readyz").status_code == 200
