"""A real `bentoml serve` process: answers, the prediction log (SIGTERM flush, restart, PostgreSQL),
feedback, GET /metadata, every bad input and the API key through real HTTP, and a damaged or
missing model that never reports ready."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes.util import find_library
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, fresh_postgres_db, wait_http_ok
from tests.serve.test_guard import CASES
from tuneloop import registry
from tuneloop.config import load_params
from tuneloop.predlog import PredictionLog

pytestmark = pytest.mark.integration  # real `bentoml serve` processes

SERVE = [sys.executable, "-m", "bentoml", "serve", "tuneloop.serve.service:TextClassifier"]
TEXTS = {"texts": ["great! the film was great", "awful"]}


@contextmanager
def serving(work: Path, db: str, **env: str) -> Iterator[str]:
    """Run `bentoml serve` in `work` until ready; yields its base URL; SIGTERM (graceful) after."""
    port, log = free_port(), work / f"server-{time.time_ns()}.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [*SERVE, "--port", str(port)],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TUNELOOP_DB_URL": db, **env},
            start_new_session=True,
        )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", 90)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        assert server.wait(60) == 0, log.read_text()[-3000:]


def classify(base: str, n: int, **headers: str) -> list[dict]:
    answers = []
    for _ in range(n):
        response = httpx.post(f"{base}/classify", json=TEXTS, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        answers.extend(response.json())
    return answers


def test_predictions_feedback_and_metadata_are_logged_through_sigterm_and_restart(served, tmp_path):
    tag, work = served
    db = f"sqlite:///{tmp_path / 'served.db'}"
    with serving(work, db) as base:  # no TUNELOOP_MODEL_TAG: the champion
        answers = classify(base, 10)
        assert all(a["model"] == tag and a["request_id"] and a["label"] in {"pos", "neg", "neu"} for a in answers)
        assert all(len(a["top_k"]) == 3 and a["confidence"] == a["top_k"][0]["score"] for a in answers)
        ids = [a["request_id"] for a in answers]

        one = httpx.post(f"{base}/feedback", json={"request_id": ids[0], "label": "pos"})
        assert one.status_code == 200 and one.json()["recorded"] == 1
        batch = httpx.post(
            f"{base}/feedback",
            json={"items": [{"request_id": ids[1], "label": "neg"}, {"request_id": ids[2], "label": "neu"}]},
        )
        assert batch.status_code == 200 and batch.json()["recorded"] == 2
        unknown = httpx.post(
            f"{base}/feedback",
            json={"items": [{"request_id": ids[3], "label": "pos"}, {"request_id": "f" * 32, "label": "pos"}]},
        )
        assert unknown.status_code == 404 and f"'{'f' * 32}'" in unknown.json()["error"]  # and ids[3] not recorded
        bad_label = httpx.post(f"{base}/feedback", json={"request_id": ids[3], "label": "zzz"})
        assert bad_label.status_code == 400 and "neg, neu, pos" in bad_label.json()["error"]
        shapeless = httpx.post(f"{base}/feedback", json={"id": ids[3]})
        assert shapeless.status_code == 400 and '"items"' in shapeless.json()["error"]

        meta = httpx.get(f"{base}/metadata").json()
        assert meta["model"] == tag and meta["labels"] == ["neg", "neu", "pos"] and meta["stage"] == "champion"
        assert meta["promoted_at"] == registry.history()[-1]["at"] and meta["data_version"]
        assert set(meta["val_metrics"]) >= {"accuracy", "macro_f1"}

    plog = PredictionLog(db)
    rows = plog.joined()
    plog.close()
    assert sorted(r["request_id"] for r in rows) == sorted(ids)  # every answer, flushed by SIGTERM alone
    labelled = {r["request_id"]: r["true_label"] for r in rows if r["true_label"]}
    assert labelled == {ids[0]: "pos", ids[1]: "neg", ids[2]: "neu"}  # the refused batch left nothing

    with serving(work, db) as base:  # restart on the same database: the log is kept and extended
        more = classify(base, 2)
        late = httpx.post(f"{base}/feedback", json={"request_id": ids[4], "label": "pos"})  # from the 1st run
        assert late.status_code == 200
    plog = PredictionLog(db)
    rows = plog.joined()
    plog.close()
    assert len(rows) == 24 and {a["request_id"] for a in more} <= {r["request_id"] for r in rows}
    assert sum(r["true_label"] is not None for r in rows) == 4


def test_every_bad_input_and_the_api_key_over_real_http(served, tmp_path):
    _, work = served
    key = {"authorization": "Bearer s3cret"}
    with serving(work, f"sqlite:///{tmp_path / 'auth.db'}", TUNELOOP_API_KEY="s3cret") as base:
        for path in ("/livez", "/readyz"):
            assert httpx.get(base + path).status_code == 200  # probes stay open
        refused = httpx.post(f"{base}/classify", json=TEXTS)
        assert refused.status_code == 401 and "TUNELOOP_API_KEY" in refused.json()["error"]
        assert httpx.get(f"{base}/metadata").status_code == 401
        assert httpx.post(f"{base}/feedback", json={"request_id": "x", "label": "pos"}).status_code == 401
        wrong = httpx.post(f"{base}/classify", json=TEXTS, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert len(classify(base, 1, **key)) == 2
        for case, (body, status, words) in CASES.items():
            response = httpx.post(
                f"{base}/classify", content=body, timeout=30, headers={**key, "content-type": "application/json"}
            )
            assert response.status_code == status and words in response.json()["error"], case
    with serving(work, f"sqlite:///{tmp_path / 'open.db'}") as base:  # no key configured: open
        assert len(classify(base, 1)) == 2


@pytest.mark.postgres
def test_prediction_log_in_postgresql_through_the_service(served):
    _, work = served
    url = fresh_postgres_db("tuneloop_service_test")
    with serving(work, url) as base:
        ids = [a["request_id"] for a in classify(base, 3)]
        assert httpx.post(f"{base}/feedback", json={"request_id": ids[0], "label": "pos"}).status_code == 200
    plog = PredictionLog(url)
    rows = plog.joined()
    plog.close()
    assert sorted(r["request_id"] for r in rows) == sorted(ids)
    assert [r["true_label"] for r in rows if r["request_id"] == ids[0]] == ["pos"]


def _never_ready(work: Path, env: dict[str, str], seconds: float) -> str:
    """Run the server for up to `seconds` polling /readyz (must never be 200); returns its output."""
    port, log = free_port(), work / f"broken-{time.time_ns()}.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [*SERVE, "--port", str(port)],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    try:
        deadline = time.time() + seconds
        while time.time() < deadline and server.poll() is None:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code != 200, "reported ready"
            except httpx.HTTPError:
                pass
            if "startup failed" in log.read_text():
                break
            time.sleep(0.3)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
    return log.read_text()


def another_model(work: Path, tmp_path: Path) -> registry.Entry:
    """Register a copy of the served model with slightly changed weights (entries are keyed by weights)."""
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(work / "m", tmp_path / "m2")
    weights = load_file(copy / "model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] + 0.01
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    return registry.register(copy)


def test_a_damaged_or_missing_model_never_reports_ready(served, tmp_path):
    _, work = served
    entry = another_model(work, tmp_path)
    stored = entry.path / "model.safetensors"
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte: still loads, but is not the registered model
    stored.write_bytes(bytes(data))

    env = {"TUNELOOP_DB_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    output = _never_ready(work, {**env, "TUNELOOP_MODEL_TAG": entry.tag}, 60)
    assert "SHA-256 differs" in output and "startup failed" in output

    output = _never_ready(work, {**env, "TUNELOOP_MODEL_TAG": "tuneloop-classifier:doesnotexist"}, 60)
    assert "tuneloop-classifier:doesnotexist is not in the BentoML model store" in output


def test_tuneloop_serve_with_two_workers(served, tmp_path):
    tag, work = served
    port = free_port()
    env = {**os.environ, "TUNELOOP_DB_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "tuneloop", "serve", "--port", str(port), "--workers", "2"],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", 90)
        answers = classify(f"http://127.0.0.1:{port}", 4)
        assert {a["model"] for a in answers} == {tag}
        import psutil

        workers = [
            p for p in psutil.Process(server.pid).children(recursive=True) if "worker-id" in " ".join(p.cmdline())
        ]
        assert len(workers) == 2
        # serve.allocator: auto preloads jemalloc into the whole tree where it is installed (tuneloop.procs)
        expected = find_library("jemalloc") is not None
        assert all(("jemalloc" in Path(f"/proc/{w.pid}/maps").read_text()) == expected for w in workers)
        line, deadline = f"worker malloc: {'jemalloc' if expected else 'system'} (serve.allocator)", time.time() + 60
        while log.read_text().count(line) < 2 and time.time() < deadline:  # ready = one worker; the other loads
            time.sleep(0.5)
        assert log.read_text().count(line) == 2, log.read_text()[-3000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)


def test_a_packaged_bento_serves_its_own_model_after_another_is_promoted(served, tmp_path):
    from tuneloop.package import build_bento

    tag, work = served
    bento = build_bento(
        tag, load_params(work / "params.yaml").serve.model_dump(), REPO / "bentofile.yaml", REPO / "src"
    )
    newer = another_model(work, tmp_path)
    registry.promote(newer.tag, reason="a newer champion than the one packed")
    try:
        elsewhere = tmp_path / "elsewhere"  # no params.yaml: settings come from the Bento arguments
        elsewhere.mkdir()
        port = free_port()
        env = {**os.environ, "TUNELOOP_DB_URL": f"sqlite:///{tmp_path / 'b.db'}"}
        env["TUNELOOP_MODEL_TAG"] = newer.tag  # ignored: a Bento serves the model packed in it
        server = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", bento, "--port", str(port)],
            cwd=elsewhere,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http_ok(f"http://127.0.0.1:{port}/readyz", 90)
            assert {a["model"] for a in classify(f"http://127.0.0.1:{port}", 1)} == {tag}
            too_many = httpx.post(f"http://127.0.0.1:{port}/classify", json={"texts": ["a"] * 5})
            assert too_many.status_code == 400  # max_texts_per_request 4, baked into the Bento
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(60)
    finally:
        registry.promote(tag, reason="restore the test champion")


def test_package_reuses_a_bento_only_for_the_same_model_settings_and_code(served, tmp_path):
    from tuneloop.package import build_bento

    tag, work = served
    ctx = shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    serve = load_params(work / "params.yaml").serve.model_dump()
    first = build_bento(tag, serve, REPO / "bentofile.yaml", ctx)
    assert build_bento(tag, serve, REPO / "bentofile.yaml", ctx) == first  # nothing changed: reused
    assert build_bento(tag, {**serve, "top_k": 2}, REPO / "bentofile.yaml", ctx) != first  # settings changed
    with (ctx / "tuneloop" / "serve" / "service.py").open("a") as source:
        source.write("\n# a code change\n")
    assert build_bento(tag, serve, REPO / "bentofile.yaml", ctx) != first  # service code changed
