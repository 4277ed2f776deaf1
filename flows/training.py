"""The training pipeline as a Prefect flow.

validate -> prepare -> train -> evaluate run as DVC stages (`dvc repro <stage>` through DVC's
Python API: unchanged stages are cache hits, and `dvc repro` alone reproduces the same model);
then gate -> register -> promote -> package. Each task calls one tuneloop library function and
publishes a Prefect artifact; the flow run ends Failed, with a message naming the cause, when
validation or the gate fails.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

CANDIDATE = Path("models/candidate")
EVAL_DIR = Path("reports/eval")
TEST_DATA = Path("data/prepared/test.csv")
GATE_DIR = Path("reports/gate")


def _stage(stage: str, force: bool) -> dict[str, Any]:
    from tuneloop.pipeline import repro

    run = repro(stage, force=force)
    get_run_logger().info("dvc repro %s: ran %s in %.1f s", stage, run.ran or "nothing (cache hit)", run.seconds)
    return {"stage": stage, "ran": run.ran, "seconds": run.seconds}


@task(name="validate")
def validate(force: bool = False) -> dict[str, Any]:
    """Great Expectations validation of the raw corpus (DVC stage `validate`)."""
    from tuneloop.pipeline import StageFailed

    summary_path = Path("reports/validation/summary.json")
    try:
        result = _stage("validate", force)
    except StageFailed as exc:
        if summary_path.is_file():
            create_markdown_artifact(
                Path("reports/validation/report.md").read_text(),
                key="validation-report",
                description="Great Expectations validation (failed)",
            )
        raise exc
    summary = json.loads(summary_path.read_text())
    create_markdown_artifact(
        Path("reports/validation/report.md").read_text(),
        key="validation-report",
        description=f"{summary['rows_kept']} kept, {summary['rows_quarantined']} quarantined",
    )
    return result


@task(name="prepare")
def prepare(force: bool = False) -> dict[str, Any]:
    """Normalise, dedupe, split (DVC stage `prepare`)."""
    return _stage("prepare", force)


@task(name="train")
def train(force: bool = False) -> dict[str, Any]:
    """Fine-tune the challenger (DVC stage `train`)."""
    return _stage("train", force)


@task(name="evaluate")
def evaluate(force: bool = False) -> dict[str, Any]:
    """Score the challenger on the test split (DVC stage `evaluate`)."""
    result = _stage("evaluate", force)
    metrics = json.loads((EVAL_DIR / "metrics.json").read_text())
    rows = [{"metric": k, "value": round(v, 4)} for k, v in metrics.items() if isinstance(v, (int, float))]
    rows += [{"metric": f"behaviour: {k}", "value": v} for k, v in metrics["behaviour"].items()]
    create_table_artifact(rows, key="evaluation-metrics", description="challenger on the test split")
    return result


@task(name="gate")
def gate(params: Any) -> dict[str, Any]:
    """Floors + paired comparison with the champion re-scored on the same test rows."""
    from tuneloop import registry
    from tuneloop.gate import GateFailed, failure_message, render_markdown, run_gate, write_report

    started = time.perf_counter()
    champion = registry.champion()
    report = run_gate(
        params, CANDIDATE, EVAL_DIR, TEST_DATA, champion.path if champion else None, champion.tag if champion else None
    )
    write_report(report, GATE_DIR)
    create_markdown_artifact(
        render_markdown(report), key="gate-verdict", description="PASSED" if report.passed else "FAILED"
    )
    get_run_logger().info("gate %s", "passed" if report.passed else "failed")
    if not report.passed:
        raise GateFailed(failure_message(report))
    return {"stage": "gate", "seconds": time.perf_counter() - started, "report": report.to_dict()}


@task(name="register", retries=2, retry_delay_seconds=2)
def register(gate_report: dict[str, Any]) -> str:
    """Save the challenger into BentoML's model store (retried: filesystem I/O)."""
    from tuneloop import registry

    metrics = json.loads((EVAL_DIR / "metrics.json").read_text())
    entry = registry.register(CANDIDATE, metrics=metrics, gate=gate_report)
    get_run_logger().info("registered %s", entry.tag)
    return entry.tag


@task(name="promote", retries=2, retry_delay_seconds=2)
def promote(tag: str) -> str:
    """Make the gated challenger the champion (atomic; a no-op if it already is)."""
    from tuneloop import registry

    entry = registry.promote(tag, reason="passed the gate in the training pipeline")
    create_markdown_artifact(
        f"# Champion\n\n`{entry.tag}`\n\nmacro-F1 {entry.metadata['metrics'].get('macro_f1')}",
        key="champion-model",
        description=entry.tag,
    )
    return entry.tag


@task(name="package", retries=1, retry_delay_seconds=5)
def package(tag: str) -> str:
    """Build the Bento for the champion (retried once: build I/O)."""
    from tuneloop.package import build_bento

    bento = build_bento(tag)
    get_run_logger().info("Bento %s", bento)
    return bento


@flow(name="tuneloop-training", log_prints=True)
def training_pipeline(overrides: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """validate -> prepare -> train -> evaluate (DVC) -> gate -> register -> promote -> package."""
    from tuneloop.config import load_params
    from tuneloop.pipeline import apply_overrides

    apply_overrides(overrides or [])
    params = load_params()
    stages = [validate(force), prepare(force), train(force), evaluate(force)]
    verdict = gate(params)
    tag = register(verdict["report"])
    champion = promote(tag)
    bento = package(champion)
    stages.append({"stage": "gate", "seconds": verdict["seconds"]})
    return {"model": tag, "champion": champion, "bento": bento, "stages": stages}


if __name__ == "__main__":
    training_pipeline()
