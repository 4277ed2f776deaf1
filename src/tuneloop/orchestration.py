"""Prefect deployments: the CPU and GPU process work pools, the scheduled training and monitoring
deployments (CPU pool), and the train-stage deployment (GPU pool) the training flow hands `train` to.

One Prefect server drives workers on several machines: `prefect worker start --pool tuneloop-cpu` where
the pipeline's CPU stages run, `--pool tuneloop-gpu` on the GPU machines (README, "Scale-out").
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tuneloop.config import DeployParams, Params
from tuneloop.pipeline import Handback, StageFailed

TRAINING_ENTRYPOINT = "flows/training.py:training_pipeline"
TRAIN_STAGE_ENTRYPOINT = "flows/train_stage.py:train_stage"
TRAIN_STAGE_DEPLOYMENT = "tuneloop-train-stage/train"
HANDBACK_KEY = "train-handback"  # the table artifact a train-stage run on another machine hands back


async def _ensure_pools(names: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        for name in dict.fromkeys(names):
            try:
                await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:
                pass


def ensure_pools(cfg: DeployParams) -> None:
    """Create the CPU and the GPU process work pools where they are not there yet."""
    asyncio.run(_ensure_pools([cfg.cpu_pool, cfg.gpu_pool]))


DRIFT_EVENT = "tuneloop.drift.detected"


def task_resource(task: str) -> dict[str, str]:
    """The Prefect event resource naming one task (one classifier)."""
    return {"prefect.resource.id": f"tuneloop.task.{task}", "prefect.resource.name": task}


def drift_trigger(task: str) -> Any:
    """Run the training deployment with `retrain=True` when monitoring reports drift for this task."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"retrain {task} on drift",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": f"tuneloop.task.{task}"},
        parameters={"retrain": True},
    )


def deploy_training(params: Params, project_root: Path) -> str:
    """Create (or update) `tuneloop-training/training` on the server PREFECT_API_URL points at: the cron
    schedule, and a trigger that retrains when the monitoring flow emits `tuneloop.drift.detected` for the task."""
    from prefect.schedules import Cron

    cfg = params.deploy
    return _deploy(
        params,
        project_root,
        TRAINING_ENTRYPOINT,
        name="training",
        work_pool_name=cfg.cpu_pool,
        schedules=[Cron(cfg.training_cron, timezone=cfg.timezone)],
        triggers=[drift_trigger(params.task.name)],
        # One run at a time, the others queued (AwaitingConcurrencySlot): the cron run and a drift retrain, or two
        # drift events, share the project folder, and a second run beside the first failed on DVC's lock.
        concurrency_limit=_one_at_a_time("ENQUEUE"),
        description="[collect feedback] -> validate -> prepare -> pretrain -> train -> evaluate -> release -> package",
    )


def _one_at_a_time(collision: str) -> Any:
    """A deployment concurrency limit of one run; `collision` (ENQUEUE | CANCEL_NEW) says what a run due meanwhile
    does."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy(collision))


def _deploy(params: Params, project_root: Path, entrypoint: str, **deployment: Any) -> str:
    """Create (or update) the deployment of the flow at `entrypoint` in this project, after making sure both
    work pools exist; returns its id."""
    from prefect import flow

    ensure_pools(params.deploy)
    remote: Any = flow.from_source(source=str(project_root), entrypoint=entrypoint)  # sync here
    return str(remote.deploy(**deployment, print_next_steps=False))


MONITORING_ENTRYPOINT = "flows/monitoring.py:monitoring"


def deploy_monitoring(params: Params, project_root: Path) -> str:
    """Create (or update) `tuneloop-monitoring/monitoring`: every monitor.schedule_minutes, in the CPU pool."""
    from datetime import timedelta

    from prefect.schedules import Interval

    return _deploy(
        params,
        project_root,
        MONITORING_ENTRYPOINT,
        name="monitoring",
        work_pool_name=params.deploy.cpu_pool,
        schedules=[Interval(timedelta(minutes=params.monitor.schedule_minutes))],
        # A run due while the last one still runs is cancelled, not queued: the next interval reads a newer window
        # (and two runs at once would count one window twice in the hysteresis state).
        concurrency_limit=_one_at_a_time("CANCEL_NEW"),
        description="prediction-log window vs the champion's reference -> verdict (Evidently snapshot)",
    )


def train_stage_pool(cfg: DeployParams) -> str | None:
    """The pool the train stage's deployment goes to (deploy.train_pool), or None for inline."""
    return {"gpu": cfg.gpu_pool, "cpu": cfg.cpu_pool}.get(cfg.train_pool)


def deploy_train_stage(params: Params, project_root: Path) -> str | None:
    """Create (or update) `tuneloop-train-stage/train` in the pool deploy.train_pool names (no schedule: the
    training flow runs it). Returns its id, or None when deploy.train_pool is inline (nothing to deploy)."""
    pool = train_stage_pool(params.deploy)
    if pool is None:
        return None
    return _deploy(
        params,
        project_root,
        TRAIN_STAGE_ENTRYPOINT,
        name="train",
        work_pool_name=pool,
        description="the train stage (dvc repro train) for the training flow; data through the DVC remote",
    )


def train_stage_deployment(cfg: DeployParams) -> Any | None:
    """The deployment the training flow hands `train` to: None (run it in-process) when deploy.train_pool is
    inline, when no Prefect server is configured (`make demo`), or when `tuneloop deploy` has not created it."""
    if cfg.train_pool == "inline" or not server_configured():
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(TRAIN_STAGE_DEPLOYMENT)
        except ObjectNotFound:
            return None


def run_stage_deployment(deployment: Any, parameters: dict[str, Any], timeout_s: float) -> Any:
    """Run `deployment` as a subflow of the calling task and wait for it; return its flow run.

    Raises:
        StageFailed: the run did not complete (its state and message, and how to read its logs), or it
            did not finish within `timeout_s` (then it is cancelled; the likely cause is no worker on its pool).
    """
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    pool = deployment.work_pool_name
    run: Any = run_deployment(deployment.id, parameters=parameters, timeout=timeout_s, poll_interval=2, as_subflow=True)
    state = run.state
    if state is None or not state.is_final():
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(message=f"no result within {timeout_s:.0f} s"), force=True)
        raise StageFailed(
            f"flow run '{run.name}' of {TRAIN_STAGE_DEPLOYMENT} (pool {pool}) did not finish within "
            f"deploy.train_timeout_s = {timeout_s:.0f} s and was cancelled. Is a worker polling the pool? "
            f"`prefect worker start --pool {pool}` on a machine that has the project."
        )
    if not state.is_completed():
        raise StageFailed(
            f"flow run '{run.name}' of {TRAIN_STAGE_DEPLOYMENT} (pool {pool}) ended {state.name}: "
            f"{state.message or 'no message'}. Its logs: `prefect flow-run logs {run.id}`."
        )
    return run


def read_handback(flow_run_id: Any) -> Handback | None:
    """What a train-stage run on another machine handed back (its table artifact), or None when it shared
    this workspace (it wrote dvc.lock and the outputs here itself)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    wanted = ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[HANDBACK_KEY])
    )
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=wanted)
    if not found:
        return None
    data = found[0].data
    rows: Any = json.loads(data) if isinstance(data, str) else data
    return Handback.from_rows(rows)


def server_configured() -> bool:
    """Whether flows talk to a Prefect server (PREFECT_API_URL) rather than an ephemeral in-process API."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def emit_drift(params: Params, verdict: dict[str, Any]) -> str:
    """Start the retrain cooldown for the monitored model, then emit the drift event when a server is there.

    Returns "event" (a deployment trigger on the server retrains) or "in-process" (the caller retrains).
    """
    from prefect.events import emit_event

    from tuneloop.monitor.policy import record_retrain, state_dir_for

    tag = verdict["window"]["model_tag"]
    record_retrain(state_dir_for(params.monitor.state_dir, tag), tag)
    if not server_configured():
        return "in-process"
    payload = {"model_tag": tag, "status": verdict["status"], "reason": verdict["reason"][:500]}
    emit_event(DRIFT_EVENT, resource=task_resource(params.task.name), payload=payload)
    return "event"
