"""Judge and promote: the one release path.

"Find the champion, judge the challenger against it on the same rows, write the verdict, register,
promote (or refuse with the reason)" lives here once; `tuneloop gate`, `tuneloop models promote`,
the training flow, the retraining flow and the benchmarks all call `release`. Callers that show
progress (the Prefect flow publishes artifacts) pass `publish`, called after each step.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneloop import registry
from tuneloop.config import Params
from tuneloop.gate import GateFailed, GateReport, failure_message, run_gate, write_report
from tuneloop.registry import Entry
from tuneloop.reports import EvalReport

log = logging.getLogger(__name__)

Outcome = Literal["promoted", "passed", "refused", "no-new-model"]
Publish = Callable[[str, Any], None]  # (step, payload): "verdict" GateReport, "registered"/"promoted" Entry


@dataclass
class Release:
    """What a release did."""

    outcome: Outcome
    report: GateReport
    champion: str | None  # the task's champion afterwards
    entry: Entry | None = None  # the challenger's registry entry, when it was registered

    @property
    def message(self) -> str:
        if self.outcome == "refused":
            return failure_message(self.report)
        if self.outcome == "no-new-model":
            return f"no new model: the challenger has the weights of champion {self.champion}; nothing to judge"
        if self.outcome == "promoted":
            return f"promoted {self.champion}"
        return f"gate passed ({len(self.report.checks)} checks; champion: {self.report.champion or 'none yet'})"

    def raise_if_refused(self) -> Release:
        """GateFailed naming each failed check, when the gate refused the challenger."""
        if self.outcome == "refused":
            raise GateFailed(self.message)
        return self


def champion_for(choice: str, task: str) -> Entry | None:
    """The model to compare with: 'auto' (the task's champion), 'none', or a tag."""
    if choice == "none":
        return None
    return registry.champion(task) if choice == "auto" else registry.get(choice, task)


def no_new_model(challenger_dir: Path, champion: Entry, data_path: str | Path) -> GateReport:
    """The verdict for a challenger whose weights are the champion's: nothing to judge, nothing to promote."""
    report = GateReport(challenger=str(challenger_dir), champion=champion.tag, data=str(data_path))
    report.comparison = {
        "note": "no new model: the challenger has the champion's weights (same SHA-256)",
        "weights_sha256": champion.metadata.get("weights_sha256"),
    }
    return report


def _register(
    params: Params,
    challenger_dir: Path,
    evaluation: Path,
    report: GateReport,
    reference_files: list[Path],
    scratch: str,
    corpus: Path | None = None,
) -> registry.Entry:
    """Register a challenger that passed: its serving variants (serve.backend) and monitoring reference with it."""
    from tuneloop.compress import build_variants

    variants = build_variants(challenger_dir, params.serve.backend, Path(scratch) / "onnx")
    reference = build_reference(params, challenger_dir, reference_files, Path(scratch), variants, corpus)
    evaluated = EvalReport.load(evaluation)
    return registry.register(
        challenger_dir,
        task=params.task.name,
        metrics=evaluated.summary(),
        gate=report.to_dict(),
        reference=reference,
        variants=variants,
        served=evaluated.judged_variant(),
    )


def release(
    params: Params,
    challenger_dir: str | Path,
    data_path: str | Path,
    *,
    eval_dir: str | Path | None = None,
    champion: str = "auto",
    gate_dir: str | Path | None = None,
    register: bool = True,
    promote: bool = True,
    reason: str = "passed the gate",
    publish: Publish | None = None,
    reference_data: list[Path] | None = None,
    corpus: Path | None = None,
) -> Release:
    """Judge `challenger_dir` on `data_path` against the champion, then register and promote it if it passes.

    Args:
        eval_dir: the challenger's evaluation on `data_path`; None evaluates it now into a temporary folder.
        champion: 'auto' (the task's champion), 'none' (floors only) or a tag to compare with.
        gate_dir: where gate.json and gate.md go (None: not written).
        register / promote: stop after the verdict (`tuneloop gate`) or after registering.
        publish: called after each step with its name and result.
        reference_data: labeled files the monitoring reference is built from (default: `data_path`).
        corpus: the raw corpus those files were prepared from (data.raw_path): its rows per label let the
            predicted-label test expect the corpus' mix (tuneloop.monitor.label_mix). None: not known.
    """
    task, challenger_dir = params.task.name, Path(challenger_dir)
    current = champion_for(champion, task)
    if is_champion(challenger_dir, current):
        assert current is not None
        done = Release("no-new-model", no_new_model(challenger_dir, current, data_path), current.tag, current)
        _publish(publish, gate_dir, "verdict", done.report)
        log.info("%s", done.message)
        return done
    with tempfile.TemporaryDirectory(prefix="tuneloop-eval-") as scratch:
        evaluation = Path(eval_dir) if eval_dir is not None else _evaluate(params, challenger_dir, data_path, scratch)
        report = run_gate(params, challenger_dir, evaluation, data_path, *_path_and_tag(current))
        _publish(publish, gate_dir, "verdict", report)
        if not report.passed or not register:
            return Release("passed" if report.passed else "refused", report, _path_and_tag(current)[1])
        held_out = reference_data or [Path(data_path)]
        entry = _register(params, challenger_dir, evaluation, report, held_out, scratch, corpus)
    _publish(publish, None, "registered", entry)
    if not promote:
        return Release("passed", report, _path_and_tag(current)[1], entry)
    entry = registry.promote(entry.tag, reason=reason)
    _publish(publish, None, "promoted", entry)
    return Release("promoted", report, entry.tag, entry)


def is_champion(challenger_dir: Path, champion: Entry | None) -> bool:
    """Whether the challenger's weights are exactly the champion's (same SHA-256): nothing new to judge."""
    from tuneloop.provenance import weights_digest

    return champion is not None and champion.metadata.get("weights_sha256") == weights_digest(challenger_dir)


def _path_and_tag(entry: Entry | None) -> tuple[Path | None, str | None]:
    return (entry.path, entry.tag) if entry is not None else (None, None)


def build_reference(
    params: Params,
    model_dir: Path,
    files: list[Path],
    scratch: Path,
    variants: Path | None = None,
    corpus: Path | None = None,
) -> Path:
    """The monitoring reference of the model (its held-out rows, scored by the variant the service runs; with
    the raw corpus' rows per label when `corpus` is given)."""
    import pandas as pd

    from tuneloop.monitor.label_mix import corpus_label_counts
    from tuneloop.monitor.reference import build_reference as build
    from tuneloop.monitor.reference import write_reference
    from tuneloop.tabular import read_labeled

    frame = pd.concat([read_labeled(f) for f in files], ignore_index=True)
    reference = build(
        model_dir,
        frame,
        backend=params.serve.backend,
        variants=variants,
        batch_size=params.evaluate.batch_size,
        recheck_margin=params.serve.int8_recheck_margin,
        corpus_labels=None if corpus is None else corpus_label_counts(corpus),
    )
    return write_reference(reference, scratch / "reference.parquet")


def _evaluate(params: Params, model_dir: Path, data_path: str | Path, out_dir: str) -> Path:
    from tuneloop.evaluate import evaluate

    evaluate(params, model_dir, data_path, out_dir)
    return Path(out_dir)


def _publish(publish: Publish | None, gate_dir: str | Path | None, step: str, payload: Any) -> None:
    if gate_dir is not None and isinstance(payload, GateReport):
        write_report(payload, gate_dir)
    if publish is not None:
        publish(step, payload)
