"""One monitoring run: read a window of the prediction log, compare it with the model's
reference, estimate its performance without labels, apply the policy, write the verdict.

`assess` is the pure core (reference + window frame in, signals out); `run_monitoring` adds the
I/O: registry, prediction log, verdict files, history, HTML report and the Evidently workspace.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.monitor import MonitorError
from tuneloop.monitor import policy as pol
from tuneloop.monitor.estimate import SamplingCheck, estimate, fit_on, sampling_check
from tuneloop.monitor.reference import token_ids
from tuneloop.monitor.signals import (
    Features,
    distribution_signals,
    embedding_signal,
    labeled_metrics,
    new_token_counts,
    novelty_flags,
    parse_top_k,
    reference_features,
    token_sets,
    token_shift_signal,
    window_features,
)
from tuneloop.monitor.verdict import (
    Estimate,
    FeedbackSampling,
    LabeledMetrics,
    SignalResult,
    Verdict,
    Window,
    write_verdict,
)

if TYPE_CHECKING:
    import pandas as pd

    from tuneloop.config import MonitorParams

log = logging.getLogger(__name__)
SAMPLING_ROWS = 20_000  # the newest predictions of the feedback's period read to check it is a random sample


@dataclass(frozen=True)
class Feedback:
    """Feedback-labeled predictions logged before the window, and the traffic of the same period they are
    checked against (the newest SAMPLING_ROWS predictions, labeled or not, logged from the first of them).

    Only labels that should be a random sample are checked: those sent to POST /feedback (or recorded before
    the log said where labels come from). Imported ones (`tuneloop feedback import`, usually the queue, whose
    rows were picked by confidence) are not: selection on confidence keeps P(right | confidence), all the
    calibration fits, and would fail the test every time."""

    labeled: pd.DataFrame
    traffic: pd.DataFrame

    @property
    def checked(self) -> pd.DataFrame:
        return self.labeled[self.labeled["feedback_source"].ne("import")]

    @property
    def imported(self) -> pd.DataFrame:
        return self.labeled[self.labeled["feedback_source"].eq("import")]

    def for_calibration(self, mode: str) -> tuple[pd.DataFrame, FeedbackSampling | None]:
        """The labels the calibration fits on under monitor.feedback_sampling_check `mode`, and the check's
        record (None: not checked). With `mode` exclude, checked labels that are not a random sample are left
        out; imported ones stay."""
        check = self.sampling()
        if check is None:
            return self.labeled, None
        excluded = not check.random and mode == "exclude"
        record = FeedbackSampling(**asdict(check), excluded=excluded, imported_rows=len(self.imported))
        return (self.imported if excluded else self.labeled), record

    def sampling(self) -> SamplingCheck | None:
        """Checked labels vs unlabeled rows logged between the first and the last labeled row `traffic` covers
        (labels arrive late: the newest rows have none yet, and they may be other traffic); None: not checked."""
        checked = self.checked
        if self.traffic.empty or checked.empty:
            return None
        start, end = self.traffic["created_at"].min(), checked["created_at"].max()
        labeled = checked[checked["created_at"].between(start, end)]["confidence"]
        traffic = self.traffic[self.traffic["created_at"].between(start, end) & self.traffic["true_label"].isna()]
        return sampling_check(labeled.to_numpy(float), traffic["confidence"].to_numpy(float))


@dataclass
class Assessment:
    """Signals, estimate and labeled metrics of one window, with the Evidently snapshots behind them."""

    signals: list[SignalResult]
    estimate: Estimate | None
    labeled: LabeledMetrics
    embedded_rows: int
    snapshots: list[Any] = field(default_factory=list)


def assess(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    params: MonitorParams,
    tokenizer: Any,
    feedback: Feedback | None = None,
) -> Assessment:
    """Every signal of `window` (a `read_window` frame) against `reference` (pure: no files). The estimate's
    calibration is fitted on the reference's rows and `feedback` (labeled predictions logged before the
    window; left out where they are not a random sample of their period's traffic and
    monitor.feedback_sampling_check says exclude), refitted each run, so a reference registered before a change
    of the fit gets the current one."""
    ref = reference_features(reference)
    cur = window_features(window, tokenizer, ref.embeddings.shape[1] if ref.embeddings is not None else 0)
    signals = _embedding_signals(ref, cur, params)
    signals += _token_signals(reference, ref, cur, params, tokenizer)
    snapshot, distribution = distribution_signals(ref, cur, params)
    labeled_snapshot, labeled = labeled_metrics(window)
    used, sampling = (None, None) if feedback is None else feedback.for_calibration(params.feedback_sampling_check)
    calibration, rows = fit_on([reference] if used is None else [reference, used])
    feedback_rows = sum(rows[1:])
    est = estimate(
        window["predicted"].astype(str).tolist(),
        window["confidence"].to_numpy(float),
        parse_top_k(window["top_k"]),
        calibration,
    )
    signals += [*distribution, _estimate_signal(est.accuracy, params, feedback_rows)]
    return Assessment(
        signals=pol.with_counts(signals, params),
        estimate=Estimate(
            accuracy=est.accuracy,
            accuracy_sd=est.accuracy_sd,
            macro_f1=est.macro_f1,
            naive_accuracy=est.naive_accuracy,
            calibration_rows=sum(rows),
            calibration_feedback_rows=feedback_rows,
            feedback_sampling=sampling,
        ),
        labeled=labeled if labeled.rows >= params.min_labeled_rows else LabeledMetrics(rows=labeled.rows),
        embedded_rows=0 if cur.embeddings is None else len(cur.embeddings),
        snapshots=[s for s in (snapshot, labeled_snapshot) if s is not None],
    )


def _embedding_signals(ref: Features, cur: Features, params: MonitorParams) -> list[SignalResult]:
    """Novelty flags go into both frames (a ValueDrift column); the embedding drift method runs here."""
    if ref.embeddings is None or cur.embeddings is None or len(cur.embeddings) != len(cur.frame):
        missing = "no embeddings logged for (all) its rows: the service predates prediction-log schema v3"
        return [
            SignalResult(name=n, method="n/a", value=None, threshold=0, rule="n/a", drifted=False, counts=False,
                         detail=missing)
            for n in ("novelty", "embedding")
        ]  # fmt: skip
    ref_flags, cur_flags, _ = novelty_flags(ref.embeddings, cur.embeddings, params.novelty_quantile)
    ref.frame["novelty"], cur.frame["novelty"] = ref_flags, cur_flags
    return [embedding_signal(ref.embeddings, cur.embeddings, params)]


def _token_signals(
    reference: pd.DataFrame, ref: Features, cur: Features, params: MonitorParams, tokenizer: Any
) -> list[SignalResult]:
    """The new_tokens column in both frames and the token_shift signal (only when the window's texts were
    logged: with serve.store_text false there are no words to compare)."""
    if cur.token_ids is None:
        return []
    ref_sets = token_sets(token_ids(reference["text"].astype(str).tolist(), tokenizer), tokenizer)
    cur_sets = token_sets(cur.token_ids, tokenizer)
    ref.frame["new_tokens"], cur.frame["new_tokens"] = new_token_counts(ref_sets, cur_sets)
    return [token_shift_signal(ref_sets, cur_sets, params, tokenizer)]


def _estimate_signal(accuracy: float, params: MonitorParams, feedback_rows: int) -> SignalResult:
    return SignalResult(
        name="estimated_accuracy",
        method=f"CBPE (Platt-calibrated confidence; reference + {feedback_rows} feedback rows)",
        value=accuracy,
        threshold=params.min_estimated_accuracy,
        rule="value < threshold",
        drifted=bool(accuracy < params.min_estimated_accuracy),
        counts=False,
    )


def window_summary(tag: str, window: pd.DataFrame, embedded_rows: int = 0) -> Window:
    return Window(
        model_tag=tag,
        rows=len(window),
        labeled_rows=int(window["true_label"].notna().sum()) if len(window) else 0,
        first=window["created_at"].min().to_pydatetime() if len(window) else None,
        last=window["created_at"].max().to_pydatetime() if len(window) else None,
        embedded_rows=embedded_rows,
    )


def monitored_tag(model_tag: str | None, task: str | None = None) -> str:
    """The tag to monitor: the one given (full or version only), else the task's champion (registry.resolve)."""
    from tuneloop import registry

    return registry.resolve(model_tag, task or registry.DEFAULT_TASK, purpose="monitor").tag


def read_log_window(
    params: MonitorParams, tag: str, db_url: str | None, last: int | None, since: datetime | None
) -> pd.DataFrame:
    """The window: rows of `tag` since `since` (a time range), else its newest `last` (or monitor.window).

    Raises:
        MonitorError: the window would hold more than monitor.max_window_rows rows (memory grows with it: a
            --since range over months of traffic was read whole).
    """
    from tuneloop.predlog import read_window

    cap = params.max_window_rows
    rows = last or params.window
    if since is None and rows > cap:
        raise MonitorError(
            f"a window of {rows:,} rows is over monitor.max_window_rows ({cap:,}): ask for fewer (--window N) or "
            "raise monitor.max_window_rows where there is memory for it (100,000 rows peaked at 1.2 GB in "
            "bench/monitor_cost.py)"
        )
    if since is None:
        return read_window(db_url, model_tag=tag, last=rows)
    frame = read_window(db_url, model_tag=tag, since=since, last=cap + 1)
    if len(frame) > cap:
        raise MonitorError(
            f"the window since {since.isoformat()} holds over monitor.max_window_rows ({cap:,}) predictions of "
            f"{tag}: give a later --since, or --window N for the newest N, or raise monitor.max_window_rows"
        )
    return frame


def read_feedback(params: MonitorParams, tag: str, db_url: str | None, window: pd.DataFrame) -> Feedback | None:
    """The newest monitor.calibration_feedback_rows feedback-labeled predictions of `tag` logged before the
    window's first row, with the traffic of their period (None when that is 0 or the window is empty)."""
    from tuneloop.predlog import read_window

    if not params.calibration_feedback_rows or window.empty:
        return None
    first = window["created_at"].min().to_pydatetime()
    labeled = read_window(db_url, model_tag=tag, until=first, last=params.calibration_feedback_rows, labeled=True)
    if labeled.empty or params.feedback_sampling_check == "off":
        return Feedback(labeled=labeled, traffic=labeled.iloc[:0])
    since = labeled["created_at"].min().to_pydatetime()
    return Feedback(labeled, read_window(db_url, model_tag=tag, since=since, until=first, last=SAMPLING_ROWS))


def run_monitoring(
    params: MonitorParams,
    *,
    model_tag: str | None = None,
    db_url: str | None = None,
    last: int | None = None,
    since: datetime | None = None,
    now: datetime | None = None,
    render: bool = True,
    task: str | None = None,
) -> Verdict:
    """Monitor one window of the prediction log; writes verdict.json + summary.md under
    `state_dir/<task>/`, appends the run to the history and, with `render`, saves the HTML report
    and adds the snapshot to the Evidently workspace.

    Raises:
        MonitorError: no champion / unknown tag, or the model has no reference.
        PredictionLogError: the database is unreachable or holds no prediction log.
    """
    from tuneloop.monitor.reference import reference_for

    tag = monitored_tag(model_tag, task)
    now = now or datetime.now(UTC)
    state_dir = pol.state_dir_for(params.state_dir, tag)
    reference = reference_for(tag)
    frame = read_log_window(params, tag, db_url, last, since)
    if len(frame) < params.min_rows:
        verdict = not_enough_data(tag, frame, params, now)
    else:
        feedback = read_feedback(params, tag, db_url, frame)
        assessment = assess(reference, frame, params, _tokenizer(tag), feedback)
        verdict = judged(tag, frame, assessment, params, state_dir, now)
        if render:
            verdict = _publish(verdict, assessment, params, state_dir, now)
    write_verdict(verdict, state_dir)
    pol.append_history(state_dir, {"at": now, "model_tag": tag, "status": verdict.status, "drift": verdict.drift})
    return verdict


def not_enough_data(tag: str, frame: pd.DataFrame, params: MonitorParams, now: datetime) -> Verdict:
    """The verdict for a window under monitor.min_rows: nothing is judged."""
    return Verdict(
        created_at=now,
        status="not-enough-data",
        drift=False,
        retrain=False,
        consecutive_drifted=0,
        reason=(
            f"not enough data: {len(frame)} predictions of {tag} in the window, monitor.min_rows is "
            f"{params.min_rows}. Wait for more traffic or widen the window (--window N / --since)."
        ),
        window=window_summary(tag, frame),
    )


def judged(
    tag: str, frame: pd.DataFrame, assessment: Assessment, params: MonitorParams, state_dir: Path, now: datetime
) -> Verdict:
    """Apply the policy (hysteresis over this model's history, cooldown) to an assessed window."""
    decision = pol.decide(
        assessment.signals, params, pol.previous_drifted(state_dir, tag), pol.last_retrain(state_dir), now
    )
    return Verdict(
        created_at=now,
        status=decision.status,
        drift=decision.drift,
        retrain=decision.retrain,
        consecutive_drifted=decision.consecutive,
        reason=decision.reason,
        window=window_summary(tag, frame, assessment.embedded_rows),
        signals=assessment.signals,
        estimate=assessment.estimate,
        labeled=assessment.labeled,
    )


def _tokenizer(tag: str) -> Any:
    from tuneloop import registry
    from tuneloop.model import load_tokenizer

    return load_tokenizer(registry.get(tag).path)


def _publish(
    verdict: Verdict, assessment: Assessment, params: MonitorParams, state_dir: Path, now: datetime
) -> Verdict:
    """Save the HTML report and add the snapshot to the Evidently workspace; the verdict names the report.

    The workspace only shows runs: one it cannot take (a project file cut short by a full disk or a killed
    writer, a folder it cannot write) is named in the verdict and an ERROR, and the verdict, the history and
    the retrain it may ask for go on, instead of every run failing until someone repairs the dashboard."""
    from tuneloop.errors import first_line
    from tuneloop.monitor.workspace import REPAIR, add_snapshot

    reports = state_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    html = reports / f"{now.strftime('%Y%m%dT%H%M%SZ')}.html"
    assessment.snapshots[0].save_html(str(html))
    verdict = verdict.model_copy(update={"report": str(html)})
    try:
        add_snapshot(Path(params.workspace), verdict, assessment.snapshots[0], tuple(assessment.snapshots[1:]))
    except Exception as exc:  # Evidently's own files and errors: whatever it raises, the run's verdict stands
        problem = (
            f"the Evidently workspace {params.workspace} did not take this run's snapshot ({type(exc).__name__}: "
            f"{first_line(exc)}); the verdict and {html} stand. {REPAIR}, for `tuneloop monitor ui` to show the "
            "runs after this one"
        )
        log.error("%s", problem)
        verdict = verdict.model_copy(update={"workspace_error": problem})
    return verdict
