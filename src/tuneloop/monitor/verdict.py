"""The verdict of one monitoring run: a typed, versioned JSON file plus a human summary.

Read it as: `status` says what to do (ok, drift, retrain, not-enough-data, cooldown); every
signal carries its value, the threshold it is judged by, whether it drifted and whether it counts
under the policy; `estimate` is the label-free performance estimate, `labeled` the metrics on the
rows that already have feedback labels.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

VERDICT_VERSION = 1
Status = Literal["ok", "drift", "retrain", "not-enough-data", "cooldown"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SignalResult(_Frozen):
    """One signal: `drifted` is `value` compared with `threshold` in the direction `rule` states."""

    name: str
    method: str
    value: float | None = Field(description="p-value, AUC, share or estimate; None when not computable")
    threshold: float
    rule: str = Field(description="when it counts as drifted, e.g. 'value < threshold'")
    drifted: bool
    counts: bool = Field(description="listed in monitor.signals, so it can make the verdict 'drift'")
    detail: str = ""


class FeedbackSampling(_Frozen):
    """Whether the feedback labels before the window look like a random sample of the traffic (their rows'
    confidences against the unlabeled rows of the same period), and whether the estimate left them out for it.
    Checked: labels sent to POST /feedback (and those recorded before the log kept their source); imported ones
    (`tuneloop feedback import`: picked by confidence, which the calibration tolerates) are used unchecked."""

    labeled_rows: int = Field(description="checked labels in the period")
    imported_rows: int = Field(default=0, description="imported labels: not checked, always used")
    unlabeled_rows: int
    ks_statistic: float
    p_value: float
    labeled_mean_confidence: float
    unlabeled_mean_confidence: float
    random: bool
    excluded: bool = Field(default=False, description="left out of the calibration (monitor.feedback_sampling_check)")


class Estimate(_Frozen):
    """Label-free estimate (CBPE) of the window's performance, and the naive one beside it."""

    method: str = "cbpe-platt"
    accuracy: float
    accuracy_sd: float | None = Field(
        default=None, description="spread of the window's accuracy around the estimate if the calibration holds"
    )
    macro_f1: float
    naive_accuracy: float = Field(description="mean top-class confidence (uncalibrated)")
    calibration_rows: int = Field(default=0, description="labeled rows the calibration was fitted on")
    calibration_feedback_rows: int = Field(default=0, description="of them, feedback-labeled predictions")
    feedback_sampling: FeedbackSampling | None = Field(
        default=None, description="the check that the feedback labels are a random sample (None: not checked)"
    )


class LabeledMetrics(_Frozen):
    """Metrics on the window's rows that received feedback labels."""

    rows: int
    accuracy: float | None = None
    macro_f1: float | None = None
    per_class_recall: dict[str, float] = {}


class Window(_Frozen):
    model_tag: str
    rows: int
    labeled_rows: int
    first: datetime | None = None
    last: datetime | None = None
    embedded_rows: int = Field(default=0, description="rows that carry a logged embedding")


class Verdict(_Frozen):
    """Everything one monitoring run concluded, versioned for readers downstream (issue 13)."""

    version: int = VERDICT_VERSION
    created_at: datetime
    status: Status
    drift: bool = Field(description="this window drifted (any counting signal)")
    retrain: bool = Field(description="the policy asks for a retrain (hysteresis met, not in cooldown)")
    consecutive_drifted: int
    reason: str
    window: Window
    signals: list[SignalResult] = []
    estimate: Estimate | None = None
    labeled: LabeledMetrics | None = None
    report: str | None = Field(default=None, description="the Evidently HTML report of this run")
    workspace_error: str | None = Field(
        default=None, description="why this run is not in the Evidently workspace (the verdict stands)"
    )

    def drifted_signals(self) -> list[str]:
        return [s.name for s in self.signals if s.drifted and s.counts]


def summary(verdict: Verdict) -> str:
    """A few lines a person reads first (Markdown)."""
    w = verdict.window
    lines = [
        f"# Monitoring verdict: {verdict.status.upper()}",
        "",
        f"{verdict.reason}",
        "",
        f"- model `{w.model_tag}`, {w.rows} predictions ({w.first} .. {w.last}), {w.labeled_rows} with feedback",
    ]
    if verdict.estimate:
        e = verdict.estimate
        lines.append(
            f"- estimated accuracy {e.accuracy:.3f}{_spread(e.accuracy_sd)}, macro-F1 {e.macro_f1:.3f} "
            f"(label-free; calibrated on "
            f"{e.calibration_rows} labeled rows, {e.calibration_feedback_rows} of them feedback before the window; "
            f"mean confidence says {e.naive_accuracy:.3f})"
        )
        fb = e.feedback_sampling
        if fb is not None and not fb.random:
            lines.append(
                f"- the {fb.labeled_rows} labels sent to POST /feedback before the window are not a random sample of "
                f"the traffic (mean confidence {fb.labeled_mean_confidence:.3f} vs {fb.unlabeled_mean_confidence:.3f} "
                f"for the {fb.unlabeled_rows} unlabeled rows of the same period; KS {fb.ks_statistic:.2f}, p "
                f"{fb.p_value:.2g}): "
                + (
                    "left out of the estimate's calibration (monitor.feedback_sampling_check: exclude)"
                    if fb.excluded
                    else "kept (monitor.feedback_sampling_check: warn); feedback sent mostly on wrong answers makes "
                    "the estimate too low"
                )
                + f"; {fb.imported_rows} imported labels are not checked."
            )
    if verdict.labeled and verdict.labeled.accuracy is not None:
        lab = verdict.labeled
        lines.append(f"- on {lab.rows} labeled rows: accuracy {lab.accuracy:.3f}, macro-F1 {lab.macro_f1:.3f}")
    lines += ["", "| signal | method | value | rule | drifted | counts |", "| --- | --- | --- | --- | --- | --- |"]
    for s in verdict.signals:
        value = "n/a" if s.value is None else f"{s.value:.4g}"
        rule = s.rule.replace("threshold", f"{s.threshold:.4g}")
        lines.append(f"| {s.name} | {s.method} | {value} | {rule} | {'yes' if s.drifted else 'no'} | {s.counts} |")
    if verdict.report:
        lines += ["", f"Report: {verdict.report}"]
    if verdict.workspace_error:
        lines += ["", f"Not in the monitoring UI: {verdict.workspace_error}."]
    return "\n".join(lines) + "\n"


def write_verdict(verdict: Verdict, out_dir: str | Path) -> Path:
    """verdict.json and summary.md in `out_dir` (replaced atomically); returns the JSON path."""
    from tuneloop.tabular import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(verdict.model_dump_json(indent=2) + "\n", out / "verdict.json")
    write_text_atomic(summary(verdict), out / "summary.md")
    return out / "verdict.json"


def read_verdict(path: str | Path) -> Verdict:
    return Verdict.model_validate_json(Path(path).read_text(encoding="utf-8"))


def _spread(sd: float | None) -> str:
    return f" ± {sd:.3f}" if sd is not None else ""
