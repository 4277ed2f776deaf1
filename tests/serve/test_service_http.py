"""A real `bentoml serve` process: /classify answers, every answer is in the prediction log, and a
SIGTERM flushes the log before exit."""

import os
import signal
import subprocess
import sys

import httpx
import yaml

from tests.conftest import REPO, TINY_TRAIN, free_port, wait_http_ok
from tuneloop import registry
from tuneloop.config import load_params
from tuneloop.serve.predlog import PredictionLog
from tuneloop.train import train


def test_served_predictions_are_logged_and_survive_sigterm(project, tiny_model, tiny_splits, store, tmp_path):
    train(load_params(REPO / "params.yaml", TINY_TRAIN), *tiny_splits, project / "m", base=str(tiny_model), live_dir=None)
    tag = registry.register(project / "m").tag
    port, db = free_port(), f"sqlite:///{tmp_path / 'served.db'}"
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["serve"]["log_flush_s"] = 3600  # no timer flush: only the SIGTERM shutdown hook can write the rows
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "TUNELOOP_MODEL_TAG": tag, "TUNELOOP_DB_URL": db, "BENTOML_DO_NOT_TRACK": "true"}
    server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "tuneloop.serve.service:TextClassifier",
                               "--port", str(port)], cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/readyz", 90)
        first = None
        answers = [httpx.post(f"{base}/classify", json={"texts": [f"great! the film was great {i}", "awful"]},
                              timeout=30).json() for i in range(10)]
        assert all(len(a) == 2 and a[0]["model"] == tag and a[0]["request_id"] for a in answers)
        assert {a[0]["label"] for a in answers} <= {"pos", "neg", "neu"}
        first = answers[0][0]["request_id"]
        ok = httpx.post(f"{base}/feedback", json={"request_id": first, "label": "pos"}, timeout=30)
        assert ok.status_code == 200 and ok.json()["status"] == "recorded"
        unknown = httpx.post(f"{base}/feedback", json={"request_id": "nope", "label": "pos"}, timeout=30)
        assert unknown.status_code == 404 and "nope" in unknown.text
        bad_label = httpx.post(f"{base}/feedback", json={"request_id": first, "label": "zzz"}, timeout=30)
        assert bad_label.status_code == 400 and "neg, neu, pos" in bad_label.text
        for body, words in ((b"{nope", "not valid JSON"), (b'{"texts": []}', "'texts' is empty"),
                            (b'{"texts": [1]}', "texts[0] is a int")):
            refused = httpx.post(f"{base}/classify", content=body, headers={"content-type": "application/json"})
            assert refused.status_code == 400 and words in refused.json()["error"]  # the guard, never a 5xx
        meta = httpx.post(f"{base}/metadata", json={}, timeout=30).json()
        assert meta["model"] == tag and meta["labels"] == ["neg", "neu", "pos"] and meta["data_version"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # graceful stop: the log must be flushed
        server.wait(60)
    plog = PredictionLog(db)
    rows = plog.joined()
    plog.close()
    assert len(rows) == 20
    assert {r["request_id"] for r in rows} == {item["request_id"] for a in answers for item in a}
    assert [r["true_label"] for r in rows if r["request_id"] == first] == ["pos"]  # feedback joined
