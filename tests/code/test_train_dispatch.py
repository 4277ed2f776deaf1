"""How the training flow's train task decides where `train` runs, and how a train-stage run that did not
complete fails the parent (no server, no worker: the Prefect calls are replaced)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import REPO
from tuneloop import orchestration
from tuneloop.config import load_params
from tuneloop.pipeline import StageFailed

GPU_STAGE = SimpleNamespace(id="d-1", work_pool_name="tuneloop-gpu")


def _deploy(*overrides: str):
    return load_params(REPO / "params.yaml", overrides).deploy


def test_train_runs_in_process_without_a_server_or_when_inline(monkeypatch):
    monkeypatch.setattr(orchestration, "server_configured", lambda: False)
    assert orchestration.train_stage_deployment(_deploy()) is None  # make demo: the ephemeral API
    monkeypatch.setattr(orchestration, "server_configured", lambda: True)
    assert orchestration.train_stage_deployment(_deploy("deploy.train_pool=inline")) is None


def test_the_stage_deployment_goes_to_the_pool_train_pool_names():
    assert orchestration.train_stage_pool(_deploy()) == "tuneloop-gpu"
    assert orchestration.train_stage_pool(_deploy("deploy.train_pool=cpu")) == "tuneloop-cpu"
    assert orchestration.train_stage_pool(_deploy("deploy.train_pool=inline")) is None


def _finished_as(monkeypatch, state) -> None:
    run = SimpleNamespace(id="r-1", name="brave-otter", state=state)
    monkeypatch.setattr("prefect.deployments.run_deployment", lambda *a, **k: run)


def test_a_failed_train_stage_run_fails_the_parent_with_its_message(monkeypatch):
    from prefect.states import Failed

    _finished_as(monkeypatch, Failed(message="DVC stage 'train' failed: CUDA out of memory"))
    with pytest.raises(StageFailed) as exc:
        orchestration.run_stage_deployment(GPU_STAGE, {}, 60)
    message = str(exc.value)
    assert "'brave-otter'" in message and "pool tuneloop-gpu" in message and "CUDA out of memory" in message
    assert "prefect flow-run logs r-1" in message


def test_a_train_stage_nobody_picked_up_is_cancelled_and_names_the_pool(monkeypatch):
    from prefect.states import Scheduled

    _finished_as(monkeypatch, Scheduled())
    cancelled = []

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def set_flow_run_state(self, run_id, state, force):
            cancelled.append((run_id, state.type.value))

    monkeypatch.setattr("prefect.client.orchestration.get_client", lambda **k: Client())
    with pytest.raises(StageFailed, match=r"within deploy\.train_timeout_s = 60 s.*--pool tuneloop-gpu"):
        orchestration.run_stage_deployment(GPU_STAGE, {}, 60)
    assert cancelled == [("r-1", "CANCELLING")]
