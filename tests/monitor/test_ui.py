"""`tuneloop monitor ui` serves Evidently's UI on the workspace a monitoring run filled (HTTP API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_http_ok
from tests.monitor.conftest import log_predictions
from tuneloop.demo import generate
from tuneloop.monitor.reference import write_reference
from tuneloop.monitor.run import run_monitoring

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_ui_lists_the_task_project_with_its_runs(tiny_classifier, reference_rows, monitor_params, tmp_path, store):
    """A run against a reference with its corpus' label counts (the predicted-label test Evidently knows by a name
    registered per reference) is listed, and the UI's own process renders its snapshot."""
    from collections import Counter

    from tuneloop import registry
    from tuneloop.monitor.reference import build_reference

    counts = dict(Counter(reference_rows["label"].tolist() * 3))
    reference = build_reference(tiny_classifier, reference_rows, backend="torch", corpus_labels=counts)
    entry = registry.register(tiny_classifier, reference=write_reference(reference, tmp_path / "ref.parquet"))
    registry.promote(entry.tag, reason="test")
    params = monitor_params.model_copy(
        update={
            "min_rows": 50,
            "min_estimated_accuracy": 0.0,
            "workspace": str(tmp_path / "monitoring/workspace"),
            "state_dir": str(tmp_path / "monitoring/state"),
        }
    )
    url = f"sqlite:///{tmp_path}/log.db"
    log_predictions(url, tiny_classifier, entry.tag, generate(80, seed=2))
    run_monitoring(params, db_url=url)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    server = subprocess.Popen(
        [sys.executable, "-m", "tuneloop", "monitor", "ui", "--port", str(port)], cwd=tmp_path, env=env
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/api/projects", 90)
        projects = httpx.get(f"http://127.0.0.1:{port}/api/projects").json()
        project = next(p for p in projects if p["name"] == "tuneloop-classifier")
        runs = httpx.get(f"http://127.0.0.1:{port}/api/projects/{project['id']}/snapshots").json()
        assert len(runs) >= 1
        shown = httpx.get(f"http://127.0.0.1:{port}/api/projects/{project['id']}/{runs[0]['id']}/data", timeout=60)
        assert shown.status_code == 200 and "predicted" in shown.text
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert not _ui_servers(port), "SIGTERM to `tuneloop monitor ui` must stop Evidently's UI server too"


def _ui_servers(port: int) -> list[int]:
    """PIDs of Evidently UI servers still listening on `port` (their command line names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"evidently.cli" in args and str(port).encode() in args:
            found.append(int(entry.name))
    return found
