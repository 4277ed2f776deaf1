"""Label-free performance estimate: confidence-based performance estimation (CBPE, as NannyML's).

The champion's top-class confidence is mapped to the probability that its prediction is right by a
calibrator fitted on labeled rows: the reference (held-out rows with true labels) and, when the
prediction log has them, feedback-labeled predictions logged before the window (`fit_on`): labels
arrive late, and once some traffic of a new kind is labeled the calibration has seen how often the
model is right on it, which the reference alone cannot show (bench/estimate_accuracy.py, length
windows of the demo champion: median error 7.9 points from the reference alone, 1.8 with 200
earlier feedback labels).

Platt scaling on the confidence's logit, two parameters, fitted to Platt's smoothed targets
((N+ + 1)/(N+ + 2) and 1/(N- + 2), the recipe of Platt 2000 and of scikit-learn's sigmoid
calibration): a good reference has few errors (the demo champion's: 2 in 360 rows), and plain 0/1
targets on nearly separable rows fit a near-vertical sigmoid (slope 8, later 31) that calls every
row under 0.9 confidence wrong; isotonic regression (NannyML's default) has the same problem as
a step function. Then, assuming the calibration holds on the window (the model's confidence still
means what it meant; covariate shift, not concept shift), the expected accuracy is the mean
calibrated confidence and the expected confusion matrix gives macro-F1: the predicted class earns
p as a true positive and 1 - p as a false positive, and 1 - p is shared among the other top-k
classes, in proportion to their scores, as false negatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EPS = 1e-6


@dataclass(frozen=True)
class Calibration:
    """P(correct | confidence c) = sigmoid(slope * logit(c) + intercept)."""

    slope: float = 1.0
    intercept: float = 0.0

    def __call__(self, confidence: np.ndarray) -> np.ndarray:
        c = np.clip(np.asarray(confidence, dtype=np.float64), EPS, 1 - EPS)
        z = self.slope * np.log(c / (1 - c)) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept}


def fit_calibration(confidence: np.ndarray, correct: np.ndarray) -> Calibration:
    """Platt scaling of top-class confidences against correctness, on Platt's smoothed targets (identity
    when every row is right or every row is wrong: there is no boundary to fit)."""
    from scipy.optimize import minimize

    correct = np.asarray(correct, dtype=bool)
    if correct.all() or not correct.any():
        return Calibration()
    c = np.clip(np.asarray(confidence, dtype=np.float64), EPS, 1 - EPS)
    x = np.log(c / (1 - c))
    right, wrong = int(correct.sum()), int((~correct).sum())
    target = np.where(correct, (right + 1) / (right + 2), 1 / (wrong + 2))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = theta[0] * x + theta[1]
        residual = 1.0 / (1.0 + np.exp(-z)) - target
        return float(np.sum(np.logaddexp(0.0, z) - target * z)), np.array([residual @ x, residual.sum()])

    fit = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return Calibration(slope=float(fit.x[0]), intercept=float(fit.x[1]))


def fit_on(frames: Sequence[Any]) -> tuple[Calibration, list[int]]:
    """The calibration fitted on every labeled row of `frames` (DataFrames with predicted, confidence and
    true_label, e.g. the reference and a `read_window(..., labeled=True)` frame), and how many rows of each
    frame it used. A true label the model does not know counts as a wrong prediction, which it is."""
    confidence, correct = [np.empty(0)], [np.empty(0, dtype=bool)]
    for frame in frames:
        labeled = frame[frame["true_label"].notna()]
        confidence.append(labeled["confidence"].to_numpy(float))
        correct.append((labeled["predicted"].astype(str) == labeled["true_label"].astype(str)).to_numpy(bool))
    return fit_calibration(np.concatenate(confidence), np.concatenate(correct)), [len(c) for c in correct[1:]]


# Feedback that is not a random sample of the traffic (users who report only wrong answers, one channel's
# reviewers) teaches the calibration the wrong lesson. Its tell needs no label: the labeled rows' confidences
# differ from those of the unlabeled rows logged over the same period. Two-sample Kolmogorov-Smirnov on them;
# "not random" needs p < SAMPLING_ALPHA and a difference of at least MIN_SAMPLING_EFFECT (KS statistic), so a
# large sample does not reject feedback over a difference too small to move the estimate. Selection on
# confidence alone (`tuneloop feedback queue`) looks the same to this test and is harmless to the calibration,
# which is why monitoring checks only labels sent to POST /feedback (tuneloop.monitor.run.Feedback).
SAMPLING_ALPHA = 0.001
MIN_SAMPLING_EFFECT = 0.1
MIN_SAMPLING_ROWS = 30  # fewer labeled or unlabeled rows in the period: not checked


@dataclass(frozen=True)
class SamplingCheck:
    """Are the feedback-labeled rows a random sample of the traffic? (KS test on the top-class confidence)"""

    labeled_rows: int
    unlabeled_rows: int
    ks_statistic: float
    p_value: float
    labeled_mean_confidence: float
    unlabeled_mean_confidence: float
    random: bool


def sampling_check(labeled: np.ndarray, unlabeled: np.ndarray, alpha: float = SAMPLING_ALPHA) -> SamplingCheck | None:
    """Whether `labeled` confidences could be a random sample of the traffic `unlabeled` comes from (None when
    either side has under MIN_SAMPLING_ROWS rows: too few to tell)."""
    from scipy.stats import ks_2samp

    labeled, unlabeled = np.asarray(labeled, dtype=np.float64), np.asarray(unlabeled, dtype=np.float64)
    if min(len(labeled), len(unlabeled)) < MIN_SAMPLING_ROWS:
        return None
    test = ks_2samp(labeled, unlabeled)
    statistic, p_value = float(test.statistic), float(test.pvalue)
    return SamplingCheck(
        labeled_rows=len(labeled),
        unlabeled_rows=len(unlabeled),
        ks_statistic=statistic,
        p_value=p_value,
        labeled_mean_confidence=float(labeled.mean()),
        unlabeled_mean_confidence=float(unlabeled.mean()),
        random=not (p_value < alpha and statistic >= MIN_SAMPLING_EFFECT),
    )


@dataclass(frozen=True)
class PerformanceEstimate:
    """Expected accuracy and macro-F1 of a window, and the naive estimate (mean top-class confidence)."""

    accuracy: float
    macro_f1: float
    naive_accuracy: float
    rows: int
    accuracy_sd: float = math.nan  # the window's own sampling spread if the calibration holds: sqrt(sum p(1-p)) / n


def estimate(
    predicted: Sequence[str], confidence: np.ndarray, top_k: Sequence[Any], calibration: Calibration
) -> PerformanceEstimate:
    """CBPE over one window: `top_k` holds each row's [{"label", "score"}, ...] as logged."""
    p = calibration(confidence)
    tp: dict[str, float] = {}
    fp: dict[str, float] = {}
    fn: dict[str, float] = {}
    for label, p_right, ranked in zip(predicted, p, top_k):
        tp[label] = tp.get(label, 0.0) + p_right
        fp[label] = fp.get(label, 0.0) + 1 - p_right
        for other, share in _other_shares(label, ranked):
            fn[other] = fn.get(other, 0.0) + (1 - p_right) * share
    return PerformanceEstimate(
        accuracy=float(p.mean()) if len(p) else math.nan,
        macro_f1=_macro_f1(tp, fp, fn),
        naive_accuracy=float(np.mean(confidence)) if len(p) else math.nan,
        rows=len(p),
        accuracy_sd=float(np.sqrt(np.sum(p * (1 - p))) / len(p)) if len(p) else math.nan,
    )


def _other_shares(predicted: str, ranked: Any) -> list[tuple[str, float]]:
    """The non-predicted top-k labels with their share of the remaining probability mass."""
    others = [(item["label"], float(item["score"])) for item in ranked or [] if item["label"] != predicted]
    total = sum(score for _, score in others)
    return [(label, score / total) for label, score in others] if total > 0 else []


def _macro_f1(tp: dict[str, float], fp: dict[str, float], fn: dict[str, float]) -> float:
    classes = set(tp) | set(fn)
    scores = []
    for c in classes:
        denominator = 2 * tp.get(c, 0.0) + fp.get(c, 0.0) + fn.get(c, 0.0)
        scores.append(2 * tp.get(c, 0.0) / denominator if denominator > 0 else 0.0)
    return float(np.mean(scores)) if scores else math.nan
