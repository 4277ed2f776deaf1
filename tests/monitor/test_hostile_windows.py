"""Monitoring judges any window the prediction log can hold: texts of any script, control characters, emoji,
empty or 20,000 characters long, a handful of rows, feedback of one, two or new labels, confidences at 0 and 1.

Found by this test: a window whose feedback rows held exactly two labels made Evidently's classification
metrics fail (tuneloop.monitor.signals.labeled_metrics). CI runs 10 seeded examples, `make fuzz` 333 new ones."""

from __future__ import annotations

import math

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tests.serve.fuzzing import EXAMPLES, FUZZ
from tuneloop.monitor.run import assess
from tuneloop.serve.guard import NEW_LABEL

TEXTS = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300) | st.sampled_from(
    ["", " ", "\x00", "\u200b" * 50, "😀" * 400, "a" * 20_000, "\n\t\r", "[UNK]", "[CLS] [SEP]", "١٢٣", "𝕏" * 10]
)
# What feedback can record: the model's labels (POST /feedback) or new plain names (feedback import --new-labels).
LABELS = st.sampled_from(["card_lost", "refund_request", "app_bug"]) | st.from_regex(NEW_LABEL, fullmatch=True)


@settings(FUZZ, max_examples=max(EXAMPLES // 6, 10), phases=[Phase.explicit, Phase.generate])
@given(data=st.data())
def test_any_window_the_log_can_hold_is_judged(tiny_classifier, reference, windows, params, data):
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    window = windows["m:ref"].iloc[: data.draw(st.integers(1, 300), label="rows")].copy()
    hostile = window.index[: data.draw(st.integers(0, len(window)), label="hostile rows")]
    window.loc[hostile, "text"] = [data.draw(TEXTS) for _ in hostile]
    window["text_chars"] = window["text"].str.len()
    if data.draw(st.booleans(), label="other predicted labels"):
        window.loc[hostile, "predicted"] = [data.draw(LABELS) for _ in hostile]
    if data.draw(st.booleans(), label="edge confidences"):
        window.loc[hostile, "confidence"] = [data.draw(st.sampled_from([0.0, 1.0, 1e-12, 0.5])) for _ in hostile]
    if data.draw(st.booleans(), label="other feedback"):
        window.loc[hostile, "true_label"] = [data.draw(st.none() | LABELS) for _ in hostile]
    params = params.model_copy(update={"min_labeled_rows": 1})

    result = assess(reference, window, params, tokenizer)

    assert result.labeled.rows == window["true_label"].notna().sum()
    if result.labeled.rows:
        assert 0.0 <= result.labeled.accuracy <= 1.0 and 0.0 <= result.labeled.macro_f1 <= 1.0
    assert 0.0 <= result.estimate.accuracy <= 1.0
    for signal in result.signals:
        assert isinstance(signal.drifted, bool), signal
        assert signal.value is None or math.isfinite(signal.value), signal


@pytest.mark.parametrize("first, second", [("spam", "ham"), ("card_lost", "refund_request")])
def test_feedback_of_two_labels_is_judged(tiny_classifier, reference, windows, params, first, second):
    """The case the fuzzing found, as a plain example: a two-class model's every window with feedback, or a
    many-class window whose few labeled rows hold two labels. It was a KeyError."""
    window = windows["m:ref"].assign(true_label=None)
    window.loc[window.index[:4], "predicted"] = [first, first, second, second]
    window.loc[window.index[:4], "true_label"] = [first, second, second, second]
    params = params.model_copy(update={"min_labeled_rows": 4})
    result = assess(reference, window, params, AutoTokenizer.from_pretrained(tiny_classifier))
    assert result.labeled.rows == 4
    assert result.labeled.accuracy == pytest.approx(0.75)
    assert result.labeled.macro_f1 == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert result.labeled.per_class_recall == pytest.approx({first: 1.0, second: 2 / 3})
