"""Prefect deployments: the process work pool and the scheduled training deployment.

The monitoring deployment joins here when the monitoring flow lands; its slot is the same
pool with its own schedule.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tuneloop.config import Params

TRAINING_ENTRYPOINT = "flows/training.py:training_pipeline"


async def _ensure_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        try:
            await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


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
    from prefect import flow
    from prefect.schedules import Cron

    cfg = params.deploy
    asyncio.run(_ensure_pool(cfg.work_pool))
    remote: Any = flow.from_source(source=str(project_root), entrypoint=TRAINING_ENTRYPOINT)  # sync here
    deployment_id = remote.deploy(
        name="training",
        work_pool_name=cfg.work_pool,
        schedules=[Cron(cfg.training_cron, timezone=cfg.timezone)],
        triggers=[drift_trigger(params.task.name)],
        description="[collect feedback] -> validate -> prepare -> pretrain -> train -> evaluate -> release -> package",
        print_next_steps=False,
    )
    return str(deployment_id)


MONITORING_ENTRYPOINT = "flows/monitoring.py:monitoring"


def deploy_monitoring(params: Params, project_root: Path) -> str:
    """Create (or update) `tuneloop-monitoring/monitoring`: every monitor.schedule_minutes, same work pool."""
    from datetime import timedelta

    from prefect import flow
    from prefect.schedules import Interval

    asyncio.run(_ensure_pool(params.deploy.work_pool))
    remote: Any = flow.from_source(source=str(project_root), entrypoint=MONITORING_ENTRYPOINT)
    deployment_id = remote.deploy(
        name="monitoring",
        work_pool_name=params.deploy.work_pool,
        schedules=[Interval(timedelta(minutes=params.monitor.schedule_minutes))],
        description="prediction-log window vs the champion's reference -> verdict (Evidently snapshot)",
        print_next_steps=False,
    )
    return str(deployment_id)


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
