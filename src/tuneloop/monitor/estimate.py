"""Label-free performance estimate: confidence-based performance estimation (CBPE, as NannyML's).

The champion's top-class confidence is mapped to the probability that its prediction is right by a
calibrator fitted on the reference (rows with true labels). Platt scaling on the confidence's
logit, two parameters: the demo reference has ~360 rows and ~12 errors, too few for isotonic
regression's step function (NannyML's default) to be stable. Then, assuming the calibration holds
on the window (the model's confidence still means what it meant; covariate shift, not concept
shift), the expected accuracy is the mean calibrated confidence and the expected confusion matrix
gives macro-F1: the predicted class earns p as a true positive and 1 - p as a false positive, and
1 - p is shared among the other top-k classes, in proportion to their scores, as false negatives.
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
    """Platt scaling of top-class confidences against correctness (identity when one outcome only)."""
    from sklearn.linear_model import LogisticRegression

    correct = np.asarray(correct, dtype=int)
    if correct.min() == correct.max():  # all right or all wrong: nothing to fit, keep the raw scores
        return Calibration()
    c = np.clip(np.asarray(confidence, dtype=np.float64), EPS, 1 - EPS)
    x = np.log(c / (1 - c)).reshape(-1, 1)
    fit = LogisticRegression(C=100.0).fit(x, correct)  # barely regularised: two parameters only
    return Calibration(slope=float(fit.coef_[0][0]), intercept=float(fit.intercept_[0]))


@dataclass(frozen=True)
class PerformanceEstimate:
    """Expected accuracy and macro-F1 of a window, and the naive estimate (mean top-class confidence)."""

    accuracy: float
    macro_f1: float
    naive_accuracy: float
    rows: int


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
