"""The training pipeline as a Prefect flow.

validate -> prepare -> pretrain -> train -> evaluate run as DVC stages (`dvc repro <stage>` through DVC's
Python API: unchanged stages are cache hits, and `dvc repro` alone reproduces the same model);
then release (gate, register, promote: `tuneloop.release`, the path the CLI takes too) -> package.
Each task calls one tuneloop library function and publishes Prefect artifacts; the flow run ends
Failed, with a message naming the cause, when validation or the gate fails. A run whose challenger
has the champion's weights judges nothing, promotes nothing and ends Completed ("no new model").
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
VAL_DATA = Path("data/prepared/val.csv")
GATE_DIR = Path("reports/gate")


def _stage(stage: str, force: bool) -> dict[str, Any]:
    from tuneloop.pipeline import repro

    run = repro(stage, force=force)
    get_run_logger().info("dvc repro %s: ran %s in %.1f s", stage, run.ran or "nothing (cache hit)", run.seconds)
    return {"stage": stage, "ran": run.ran, "seconds": run.seconds}


@task(name="collect-feedback", retries=2, retry_delay_seconds=5)
def collect_feedback(raw_path: str) -> dict[str, Any]:
    """Merge labeled production rows into the raw corpus as a new DVC data version (retried: database, remote)."""
    from tuneloop.retrain import merge_feedback_into_raw

    merged = merge_feedback_into_raw(raw_path)
    note = f"{merged.production_added} new labeled production rows ({merged.production_total} in all) -> {raw_path}"
    if merged.production_relabeled:
        note += f"; {merged.production_relabeled} merged before relabeled by newer feedback"
    if merged.labeled_without_text:
        note += f"; {merged.labeled_without_text} labeled rows were logged without text (serve.store_text false)"
    create_markdown_artifact(f"# Feedback for the retrain\n\n{note}.", key="retrain-data", description=note[:150])
    get_run_logger().info("%s", note)
    return {"stage": "collect-feedback", "added": merged.production_added, "total": merged.production_total}


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


@task(name="pretrain")
def pretrain(force: bool = False) -> dict[str, Any]:
    """Continued masked-LM pre-training when pretrain.enabled; else only its marker (DVC stage `pretrain`)."""
    return _stage("pretrain", force)


@task(name="train")
def train(params: Any, force: bool = False) -> dict[str, Any]:
    """Fine-tune the challenger (DVC stage `train`): in the train pool's deployment where `tuneloop deploy`
    created one on this server (deploy.train_pool), else in this process."""
    from tuneloop.orchestration import train_stage_deployment

    deployment = train_stage_deployment(params.deploy)
    if deployment is None:
        return _stage("train", force)
    return _train_elsewhere(deployment, params.deploy.train_timeout_s, force)


def _train_elsewhere(deployment: Any, timeout_s: float, force: bool) -> dict[str, Any]:
    """Push train's inputs to the DVC remote, run the train-stage deployment as a subflow, take back what it
    wrote (nothing to take when its worker shares this workspace)."""
    from tuneloop.orchestration import read_handback, run_stage_deployment
    from tuneloop.pipeline import apply_handback, push_stage_inputs, workspace_id

    started, logger = time.perf_counter(), get_run_logger()
    pushed = push_stage_inputs("train")
    if pushed:
        logger.info("pushed the outputs of %s to the DVC remote", ", ".join(pushed))
    lock = Path("dvc.lock")
    parameters = {
        "force": force,
        "origin": workspace_id(),
        "params_text": Path("params.yaml").read_text(encoding="utf-8"),
        "lock_text": lock.read_text(encoding="utf-8") if lock.is_file() else "",
    }
    run = run_stage_deployment(deployment, parameters, timeout_s)
    handback = read_handback(run.id)
    if handback is not None:
        apply_handback(handback)
        logger.info("pulled models/candidate and train's dvc.lock entry from flow run %s", run.name)
    seconds = time.perf_counter() - started
    logger.info("train ran in flow run %s on pool %s: %.1f s", run.name, deployment.work_pool_name, seconds)
    return {"stage": "train", "flow_run": str(run.id), "work_pool": deployment.work_pool_name, "seconds": seconds}


@task(name="evaluate")
def evaluate(force: bool = False) -> dict[str, Any]:
    """Score the challenger on the test split (DVC stage `evaluate`)."""
    from tuneloop.reports import EvalReport

    result = _stage("evaluate", force)
    report = EvalReport.load(EVAL_DIR)
    rows = [{"metric": k, "value": round(v, 4)} for k, v in report.summary().items() if isinstance(v, (int, float))]
    rows += [{"metric": f"behaviour: {k}", "value": v} for k, v in report.behaviour.items()]
    create_table_artifact(rows, key="evaluation-metrics", description="challenger on the test split")
    return result


def _publish(step: str, payload: Any) -> None:
    """Artifacts between the release steps: the verdict, then the champion."""
    from tuneloop.gate import render_markdown

    if step == "verdict":
        no_new = "no new model" in str(payload.comparison.get("note", ""))
        verdict = "NO NEW MODEL" if no_new else "PASSED" if payload.passed else "FAILED"
        create_markdown_artifact(render_markdown(payload), key="gate-verdict", description=verdict)
        get_run_logger().info("gate: %s", verdict.lower())
    elif step == "registered":
        get_run_logger().info("registered %s", payload.tag)
    elif step == "promoted":
        create_markdown_artifact(
            f"# Champion\n\n`{payload.tag}`\n\nmacro-F1 {payload.metadata.get('metrics', {}).get('macro_f1')}",
            key="champion-model",
            description=payload.tag,
        )


@task(name="release")
def release(params: Any) -> dict[str, Any]:
    """Gate against the champion on the same rows, register, promote (nothing to judge: the champion's weights)."""
    from tuneloop.release import release as run_release

    started = time.perf_counter()
    done = run_release(
        params,
        CANDIDATE,
        TEST_DATA,
        eval_dir=EVAL_DIR,
        gate_dir=GATE_DIR,
        publish=_publish,
        reason="passed the gate in the training pipeline",
        reference_data=[VAL_DATA, TEST_DATA],  # the monitoring reference: held-out rows, never trained on
        corpus=Path(params.data.raw_path),  # its label mix (repeats included) is what undrifted traffic shows
    )
    done.raise_if_refused()
    if done.outcome == "no-new-model":
        create_markdown_artifact(
            f"# No new model\n\n{done.message}.",
            key="champion-model",
            description=f"no new model; champion {done.champion}",
        )
    return {
        "stage": "release",
        "seconds": time.perf_counter() - started,
        "outcome": done.outcome,
        "champion": done.champion,
    }


@task(name="package", retries=1, retry_delay_seconds=5)
def package(tag: str) -> str:
    """Build the Bento for the champion (retried once: build I/O)."""
    from tuneloop.package import build_bento

    bento = build_bento(tag)
    get_run_logger().info("Bento %s", bento)
    return bento


@flow(name="tuneloop-training", log_prints=True)
def training_pipeline(overrides: list[str] | None = None, force: bool = False, retrain: bool = False) -> dict[str, Any]:
    """[collect feedback] -> validate -> prepare -> pretrain -> train -> evaluate (DVC) -> release (gate, register,
    promote) -> package. `retrain` (set by the drift trigger) first merges labeled production rows into the corpus."""
    from tuneloop.config import load_params
    from tuneloop.pipeline import apply_overrides

    apply_overrides(overrides or [])
    params = load_params()
    stages = [collect_feedback(params.data.raw_path)] if retrain else []
    stages += [validate(force), prepare(force), pretrain(force), train(params, force), evaluate(force)]
    released = release(params)
    bento = package(released["champion"])
    stages.append({"stage": "release", "seconds": released["seconds"]})
    return {
        "model": released["champion"],
        "champion": released["champion"],
        "outcome": released["outcome"],
        "bento": bento,
        "stages": stages,
    }


if __name__ == "__main__":
    training_pipeline()
