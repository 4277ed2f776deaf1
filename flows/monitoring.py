"""The monitoring flow: one window of the prediction log judged against the champion's reference.

Library calls only (tuneloop.monitor.run.run_monitoring does the work and is tested without
Prefect). Publishes the verdict (Markdown summary + table of signals) and a link to the Evidently
report as artifacts. When the policy asks for a retrain, it emits `tuneloop.drift.detected`
(resource: the task) for the training deployment's trigger, or, with no Prefect server (the
embedded default), runs the training flow in-process as a subflow with `retrain=True`. A cause the
user can fix (no champion, no reference, database unreachable) ends the run Failed with that
message; a window below monitor.min_rows completes with the verdict "not-enough-data".
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact


def _database_hiccup(task: Any, run: Any, state: Any) -> bool:
    """Retry only when the prediction log was unreachable; a missing reference will not heal."""
    from tuneloop.predlog import PredictionLogError

    try:
        state.result()
    except PredictionLogError:
        return True
    except Exception:
        return False
    return False


@task(name="monitor-window", retries=1, retry_delay_seconds=10, retry_condition_fn=_database_hiccup)
def monitor_window(
    overrides: list[str], model_tag: str | None, window: int | None, since: datetime | None, db_url: str | None
) -> dict[str, Any]:
    """Read the window, compute the signals and the estimate, apply the policy (retried once: database I/O)."""
    from tuneloop.config import load_params
    from tuneloop.monitor.run import run_monitoring

    params = load_params(overrides=overrides)
    verdict = run_monitoring(
        params.monitor, model_tag=model_tag, db_url=db_url, last=window, since=since, task=params.task.name
    )
    return verdict.model_dump(mode="json")


@task(name="request-retrain")
def request_retrain(verdict: dict[str, Any], overrides: list[str]) -> str:
    """Start the cooldown, then emit `tuneloop.drift.detected` for the task (a Prefect server's deployment
    trigger retrains); without a server the flow retrains in-process. Returns which of the two."""
    from tuneloop.config import load_params
    from tuneloop.orchestration import emit_drift

    params = load_params(overrides=overrides)
    how = emit_drift(params, verdict)
    get_run_logger().info("drift verdict for task %s: %s", params.task.name, how)
    return how


@task(name="publish-verdict")
def publish(verdict: dict[str, Any]) -> None:
    """The verdict as artifacts: summary, signals table, link to the Evidently report."""
    from tuneloop.monitor.verdict import Verdict, summary

    parsed = Verdict.model_validate(verdict)
    create_markdown_artifact(summary(parsed), key="monitoring-verdict", description=parsed.status)
    rows = [
        {"signal": s.name, "value": s.value, "threshold": s.threshold, "drifted": s.drifted, "counts": s.counts}
        for s in parsed.signals
    ]
    if rows:
        create_table_artifact(rows, key="monitoring-signals", description=parsed.reason[:200])
    if parsed.report:
        create_link_artifact(
            Path(parsed.report).resolve().as_uri(), key="monitoring-report", description="Evidently report"
        )
    get_run_logger().info("verdict %s: %s", parsed.status, parsed.reason)


@flow(name="tuneloop-monitoring", log_prints=True)
def monitoring(
    overrides: list[str] | None = None,
    model_tag: str | None = None,
    window: int | None = None,
    since: datetime | None = None,
    db_url: str | None = None,
) -> dict[str, Any]:
    """prediction-log window -> signals + estimate -> policy -> verdict (artifacts) -> retrain when the policy says."""
    verdict = monitor_window(overrides or [], model_tag, window, since, db_url)
    publish(verdict)
    if verdict["retrain"] and request_retrain(verdict, overrides or []) == "in-process":
        verdict["retrained"] = retrain_in_process(overrides or [])
    return verdict


def retrain_in_process(overrides: list[str]) -> dict[str, Any]:
    """The training flow as a subflow (one causal chain on the dashboard). A challenger the gate refuses
    is an outcome, not a failure of monitoring: the champion (and the service following it) stay as they
    were, and the run says so in its log and a `retrain-outcome` artifact. Any other failure fails the run."""
    from tuneloop.config import load_params
    from tuneloop.gate import GateFailed
    from tuneloop.pipeline import load_flow
    from tuneloop.registry import champion

    state = load_flow("flows/training.py", "training_pipeline")(overrides=overrides, retrain=True, return_state=True)
    try:
        return state.result()  # raises the run's exception when it did not complete
    except GateFailed as exc:
        kept = champion(load_params(overrides=overrides).task.name)
        tag = kept.tag if kept else None
        message = f"the retrained challenger failed the gate; champion {tag} kept. {exc}"
        get_run_logger().warning(message)
        create_markdown_artifact(f"# Retrain refused\n\n{message}", key="retrain-outcome", description="refused")
        return {"outcome": "refused", "champion": tag, "reason": str(exc)}


if __name__ == "__main__":
    monitoring()
