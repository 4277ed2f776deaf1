"""The label-free estimate (CBPE) against known truths."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.monitor.estimate import Calibration, estimate, fit_calibration, fit_on, sampling_check

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


def test_the_spread_says_how_far_a_calibrated_windows_accuracy_strays_from_the_estimate():
    errors, spreads = [], []
    for seed in range(200):
        predicted, conf, top_k, _, right = synthetic(200, seed=100 + seed)
        est = estimate(predicted, conf, top_k, Calibration())
        errors.append(right.mean() - est.accuracy)
        spreads.append(est.accuracy_sd)
    errors, spreads = np.array(errors), np.array(spreads)
    assert np.std(errors) == pytest.approx(np.mean(spreads), rel=0.2)  # the spread is the errors' own
    assert np.mean(np.abs(errors) <= 2 * spreads) >= 0.9


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


def test_platt_fit_equals_scikit_learns_sigmoid_calibration():
    calibration_module = pytest.importorskip("sklearn.calibration")
    sigmoid = getattr(calibration_module, "_sigmoid_calibration", None)
    if sigmoid is None:
        pytest.skip("this scikit-learn has no _sigmoid_calibration to compare with")
    rng = np.random.default_rng(4)
    for rows, wrong in ((360, 2), (4000, 300), (50, 10)):
        conf = rng.uniform(0.5, 1.0, rows)
        right = np.ones(rows, dtype=bool)
        right[rng.choice(rows, wrong, replace=False)] = False
        ours = fit_calibration(conf, right)
        a, b = sigmoid(np.log(conf / (1 - conf)), right.astype(int))  # theirs: 1 / (1 + exp(a * f + b))
        assert (ours.slope, ours.intercept) == pytest.approx((-a, -b), rel=1e-4, abs=1e-4)


def test_a_reference_with_two_errors_does_not_call_every_less_confident_row_wrong():
    # 358 right rows at 0.9-1.0 and two wrong ones at 0.75 and 0.89: 0/1 targets fit a near-step sigmoid that
    # put a 0.85-confident prediction at a few percent; Platt's targets keep it a plausible probability.
    rng = np.random.default_rng(5)
    conf = np.r_[rng.uniform(0.9, 1.0, 358), 0.75, 0.89]
    right = np.r_[np.ones(358, dtype=bool), False, False]
    calibration = fit_calibration(conf, right)
    assert 0.3 < calibration(np.array([0.85]))[0] < 0.95
    assert calibration(np.array([0.99]))[0] > 0.99


def test_feedback_rows_teach_the_calibration_what_the_reference_cannot_show():
    import pandas as pd

    def frame(conf, right):
        return pd.DataFrame({"predicted": "a", "confidence": conf, "true_label": np.where(right, "a", "b")})

    rng = np.random.default_rng(6)
    def right_with(conf):  # the model's true calibration: P(right | c) = sigmoid(4 logit(c) - 4)
        return rng.random(len(conf)) < 1 / (1 + np.exp(-(4 * np.log(conf / (1 - conf)) - 4)))

    ref_conf = rng.uniform(0.9, 1.0, 400)  # the model on data like its training: nearly always right
    reference = frame(ref_conf, right_with(ref_conf))
    mid = rng.uniform(0.5, 0.8, 1200)  # new traffic at mid confidence, right far less often than it says
    mid_right = right_with(mid)
    feedback, window = frame(mid[:200], mid_right[:200]), frame(mid[200:], mid_right[200:])
    unlabeled = window.assign(true_label=None)
    alone, rows_alone = fit_on([reference, unlabeled])
    with_feedback, rows = fit_on([reference, feedback, unlabeled])
    assert (rows_alone, rows) == ([400, 0], [400, 200, 0])  # rows without a label are not fitted on
    truth = mid_right[200:].mean()
    assert abs(with_feedback(window["confidence"]).mean() - truth) < 0.03
    assert abs(alone(window["confidence"]).mean() - truth) > 0.15


def test_feedback_on_wrong_answers_only_is_told_from_a_random_share_without_labels():
    rng = np.random.default_rng(11)
    conf = np.concatenate([rng.uniform(0.9, 1.0, 4500), rng.uniform(0.4, 0.9, 500)])  # traffic of one period
    right = rng.random(len(conf)) < np.clip(conf, 0, 0.999)
    # users who report only wrong answers: their labeled rows are the low-confidence ones
    wrong_only = rng.choice(np.flatnonzero(~right), 200, replace=False)
    rest = np.setdiff1d(np.arange(len(conf)), wrong_only)
    biased = sampling_check(conf[wrong_only], conf[rest], alpha=0.001)
    assert biased is not None and not biased.random
    assert biased.labeled_mean_confidence < biased.unlabeled_mean_confidence and biased.ks_statistic > 0.3
    # a random share of the same traffic passes, again and again (false alarms at most about alpha)
    alarms = 0
    for _ in range(200):
        picked = rng.random(len(conf)) < 0.05
        check = sampling_check(conf[picked], conf[~picked], alpha=0.001)
        alarms += check is not None and not check.random
    assert alarms <= 2
    assert sampling_check(conf[:20], conf[20:], alpha=0.001) is None  # too few labeled rows to tell


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


def test_any_labeled_rows_give_a_finite_calibration_whose_outputs_are_probabilities():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    rows = st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=60)

    @settings(max_examples=200, deadline=None)
    @given(rows)
    def check(pairs):
        conf = np.array([c for c, _ in pairs])
        calibration = fit_calibration(conf, np.array([r for _, r in pairs]))
        assert np.isfinite([calibration.slope, calibration.intercept]).all()
        out = calibration(np.array([0.0, 0.3, 0.5, 0.9, 1.0, *conf]))
        assert np.isfinite(out).all() and ((out >= 0) & (out <= 1)).all()

    check()
