"""The monitoring flow under prefect_test_harness: a verdict as artifacts, or Failed with the cause."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.monitor.conftest import log_predictions
from tuneloop.demo import generate
from tuneloop.monitor.reference import write_reference

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _flow():
    spec = importlib.util.spec_from_file_location("monitoring_flow", REPO / "flows" / "monitoring.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.monitoring


@pytest.fixture
def project_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return ["monitor.min_rows=50", "monitor.min_estimated_accuracy=0.0"]


def test_flow_publishes_the_verdict(prefect_harness, project_params, tiny_classifier, reference, tmp_path, store):
    from prefect.client.orchestration import get_client

    from tuneloop import registry

    entry = registry.register(tiny_classifier, reference=write_reference(reference, tmp_path / "ref.parquet"))
    registry.promote(entry.tag, reason="test")
    url = f"sqlite:///{tmp_path}/log.db"
    log_predictions(url, tiny_classifier, entry.tag, generate(80, seed=2))
    state = _flow()(overrides=project_params, db_url=url, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["status"] == "ok"

    async def artifacts():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts() if a.key}

    import asyncio

    assert {"monitoring-verdict", "monitoring-signals", "monitoring-report"} <= asyncio.run(artifacts())


def test_flow_fails_with_the_cause_when_the_model_has_no_reference(
    prefect_harness, project_params, tiny_classifier, store
):
    from tuneloop import registry

    entry = registry.register(tiny_classifier)
    registry.promote(entry.tag, reason="test")
    state = _flow()(overrides=project_params, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="has no monitoring reference"):
        state.result()
