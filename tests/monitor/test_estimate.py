"""The label-free estimate (CBPE) against known truths."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.monitor.estimate import Calibration, estimate, fit_calibration

LABELS = ["a", "b", "c"]


def synthetic(n: int, seed: int, skew: float = 1.0):
    """Rows whose top-class confidence is calibrated by construction: right with probability conf**skew."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.4, 1.0, n)
    right = rng.random(n) < conf**skew
    predicted = rng.choice(LABELS, n)
    truth = [p if r else rng.choice([x for x in LABELS if x != p]) for p, r in zip(predicted, right)]
    top_k = [
        [{"label": p, "score": c}] + [{"label": x, "score": (1 - c) / 2} for x in LABELS if x != p]
        for p, c in zip(predicted, conf)
    ]
    return predicted, conf, top_k, np.array(truth), right


def test_calibrated_case_estimates_accuracy_and_macro_f1_within_bounds():
    from sklearn.metrics import f1_score

    predicted, conf, top_k, truth, right = synthetic(20000, seed=0)
    est = estimate(predicted, conf, top_k, Calibration())
    assert est.accuracy == pytest.approx(right.mean(), abs=0.01)
    assert est.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"), abs=0.02)
    assert est.rows == 20000


def test_platt_fit_corrects_an_underconfident_model():
    # Right with probability conf**0.5 > conf: the raw mean confidence underestimates accuracy.
    _, conf, _, _, right = synthetic(4000, seed=1, skew=0.5)
    calibration = fit_calibration(conf, right)
    predicted2, conf2, top2, _, right2 = synthetic(4000, seed=2, skew=0.5)
    fitted = estimate(predicted2, conf2, top2, calibration)
    assert abs(fitted.accuracy - right2.mean()) < 0.015
    assert abs(fitted.naive_accuracy - right2.mean()) > 0.1  # the naive estimate is far off here


def test_calibration_is_identity_when_every_prediction_is_right():
    calibration = fit_calibration(np.array([0.6, 0.9]), np.array([1, 1]))
    assert calibration == Calibration()
    assert calibration(np.array([0.7]))[0] == pytest.approx(0.7)


def test_estimate_matches_nannyml_cbpe_when_installed():
    nannyml = pytest.importorskip("nannyml", reason="nannyml is a test-only comparison (pip install nannyml)")
    import pandas as pd

    predicted, conf, top_k, truth, _ = synthetic(3000, seed=3)
    probas = {f"p_{c}": [next(i["score"] for i in row if i["label"] == c) for row in top_k] for c in LABELS}
    frame = pd.DataFrame({"y_pred": predicted, "y_true": truth, **probas})
    cbpe = nannyml.CBPE(
        y_pred_proba={c: f"p_{c}" for c in LABELS}, y_pred="y_pred", y_true="y_true",
        problem_type="classification_multiclass", metrics=["accuracy"], chunk_number=1,
    )  # fmt: skip
    cbpe.fit(frame.iloc[:1500])
    theirs = cbpe.estimate(frame.iloc[1500:]).to_df()[("accuracy", "value")].iloc[0]
    ours = estimate(predicted[1500:], conf[1500:], top_k[1500:], Calibration()).accuracy
    assert ours == pytest.approx(theirs, abs=0.02)
