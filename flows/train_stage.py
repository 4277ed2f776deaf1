"""The train stage as its own flow, for the GPU pool: the training flow runs it with `run_deployment`.

On a worker that shares the training flow's workspace (same machine and folder) it only runs `dvc repro
train`. On another machine it first takes the sender's params.yaml and dvc.lock and pulls train's inputs
from the shared DVC remote, and afterwards pushes models/candidate and hands back train's dvc.lock entry
and uncached outputs (metrics, plots) as a table artifact the training flow reads.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

STAGE = "train"


@task(name="pull-inputs", retries=2, retry_delay_seconds=10)
def pull_inputs(params_text: str, lock_text: str) -> list[str]:
    """The sender's params and data versions, and train's inputs from the DVC remote (retried: remote I/O)."""
    from tuneloop.pipeline import receive_stage_inputs

    pulled = receive_stage_inputs(STAGE, params_text, lock_text)
    get_run_logger().info("pulled the outputs of %s from the DVC remote", ", ".join(pulled) or "nothing")
    return pulled


@task(name="train")
def train(force: bool) -> dict[str, Any]:
    """`dvc repro train` alone: the stages before it ran where the training flow runs."""
    from tuneloop.pipeline import repro

    run = repro(STAGE, force=force, upstream=False)
    get_run_logger().info("dvc repro %s: ran %s in %.1f s", STAGE, run.ran or "nothing (cache hit)", run.seconds)
    return {"stage": STAGE, "ran": run.ran, "seconds": run.seconds}


@task(name="hand-back", retries=2, retry_delay_seconds=10)
def hand_back() -> int:
    """Push train's outputs to the DVC remote; its lock entry and metrics go back as an artifact (retried)."""
    from tuneloop.orchestration import HANDBACK_KEY
    from tuneloop.pipeline import hand_back as push_and_describe

    handback = push_and_describe(STAGE)
    create_table_artifact(handback.rows(), key=HANDBACK_KEY, description="train's dvc.lock entry and metrics")
    return len(handback.files)


@flow(name="tuneloop-train-stage", log_prints=True)
def train_stage(force: bool = False, origin: str = "", params_text: str = "", lock_text: str = "") -> dict[str, Any]:
    """[pull inputs] -> dvc repro train -> [push outputs, hand back]: the bracketed steps only when this worker
    does not share the workspace `origin` (the training flow's machine and folder)."""
    from tuneloop.pipeline import workspace_id

    here = workspace_id()
    shared = not origin or origin == here
    if not shared:
        pull_inputs(params_text, lock_text)
    result = train(force)
    if not shared:
        hand_back()
    where = "the training flow's workspace" if shared else f"{here}, data through the DVC remote"
    create_markdown_artifact(
        f"# Train stage\n\nran {result['ran'] or 'nothing (cache hit)'} in {result['seconds']:.1f} s on {where}.",
        key="train-stage",
        description=f"train on {here}",
    )
    return {**result, "workspace": here, "shared": shared}


if __name__ == "__main__":
    train_stage()
