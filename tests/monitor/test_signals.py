"""Signals: a drifted window flags, a reference window does not; labeled metrics equal sklearn's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tests.conftest import REPO
from tuneloop.config import load_params
from tuneloop.monitor.run import assess


def test_a_reference_window_does_not_flag_and_a_drifted_one_does(tiny_classifier, reference, windows, params):
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    clean = assess(reference, windows["m:ref"], params, tokenizer)
    drifted = assess(reference, windows["m:long"], params, tokenizer)
    assert not [s.name for s in clean.signals if s.drifted and s.counts]
    flagged = {s.name for s in drifted.signals if s.drifted and s.counts}
    assert {"text_chars", "word_count", "new_tokens"} <= flagged
    assert {s.name for s in drifted.signals} >= {"novelty", "embedding", "predicted_label", "confidence", "unk_rate"}
    assert drifted.embedded_rows == 300


def test_labeled_window_metrics_equal_sklearn(tiny_classifier, reference, windows, params):
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    result = assess(reference, windows["m:ref"], params, AutoTokenizer.from_pretrained(tiny_classifier))
    rows = windows["m:ref"].dropna(subset=["true_label"])
    assert result.labeled.rows == len(rows) == 150
    assert result.labeled.accuracy == pytest.approx(accuracy_score(rows["true_label"], rows["predicted"]))
    assert result.labeled.macro_f1 == pytest.approx(f1_score(rows["true_label"], rows["predicted"], average="macro"))
    labels = sorted(set(rows["true_label"]) | set(rows["predicted"]))
    recalls = recall_score(rows["true_label"], rows["predicted"], labels=labels, average=None, zero_division=0)
    for label, value in zip(labels, recalls):
        assert result.labeled.per_class_recall[label] == pytest.approx(value), label


def test_a_window_logged_without_embeddings_says_so(tiny_classifier, reference, windows, params):
    window = windows["m:ref"].assign(embedding=None)
    result = assess(reference, window, params, AutoTokenizer.from_pretrained(tiny_classifier))
    novelty = next(s for s in result.signals if s.name == "novelty")
    assert novelty.value is None and not novelty.drifted and "schema v3" in novelty.detail


def test_new_tokens_count_pieces_the_reference_never_used_numbers_aside(tiny_classifier):
    from tuneloop.monitor.reference import token_ids
    from tuneloop.monitor.signals import new_token_counts, token_sets

    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    reference = ["i lost my card", "my card was stolen", "where is order 123"]
    ref, window = (token_sets(token_ids(texts, tokenizer), tokenizer) for texts in (reference, ["my card 98765", "my crypto wallet was stolen"]))
    ref_counts, counts = new_token_counts(ref, window)
    assert ref_counts.tolist() == [2.0, 2.0, 3.0]  # leave-one-out: i, lost / was, stolen / where, is, order
    assert counts[0] == 0 and counts[1] >= 2  # numbers never count; crypto and wallet (pieces) are new


class _Pieces:
    def convert_ids_to_tokens(self, ids):
        return [f"w{i}" for i in ids]


def _texts(rng, rows: int, vocabulary: int, words: int = 6) -> list[set[int]]:
    """Texts as sets of token ids drawn from a Zipf-like vocabulary (a few common words, a long tail)."""
    weights = 1 / np.arange(1, vocabulary + 1)
    return [set(rng.choice(vocabulary, words, p=weights / weights.sum()).tolist()) for _ in range(rows)]


@pytest.mark.parametrize("rows", [200, pytest.param(5_000, marks=pytest.mark.heavy)])  # 5,000: past MAX_TOKEN_ROWS, the window is sampled
def test_token_shift_flags_a_recurring_new_word_in_a_tenth_of_the_texts_and_not_the_same_traffic(rows):
    from tuneloop.monitor.signals import token_shift_signal

    params = load_params(REPO / "params.yaml").monitor
    rng = np.random.default_rng(0)
    reference = _texts(rng, 358, 150)
    same = [token_shift_signal(reference, _texts(rng, rows, 150), params, _Pieces()) for _ in range(20)]
    assert sum(s.drifted for s in same) <= 1  # false alarms at most ~5%
    drifted = _texts(rng, rows, 150)
    for text in drifted[: rows // 10]:
        text.add(900 + int(rng.integers(3)))  # one of three new words in 10% of the texts
    shifted = token_shift_signal(reference, drifted, params, _Pieces())
    assert shifted.drifted and shifted.value < params.token_shift_alpha and "w90" in shifted.detail


def test_token_shift_needs_an_effect_not_only_a_p_value():
    """A word in 1% of a 100k-text window, never in the reference, is significant; under a 5% floor it does not flag."""
    from tuneloop.monitor.signals import token_shift_signal

    params = load_params(REPO / "params.yaml").monitor
    reference = [{1}] * 1_000 + [{2}] * 1_000
    window = [{1}] * 49_000 + [{2}] * 50_000 + [{1, 7}] * 1_000  # token 7: 1% of the window, never in the reference
    floor = token_shift_signal(reference, window, params.model_copy(update={"min_token_share_gain": 0.05}), _Pieces())
    assert not floor.drifted and floor.value < params.token_shift_alpha and "floor 5.0%" in floor.detail
    no_floor = token_shift_signal(reference, window, params.model_copy(update={"min_token_share_gain": 0.0}), _Pieces())
    assert no_floor.drifted and "w7" in no_floor.detail  # the p-value alone says drift


def test_predicted_label_needs_a_shift_worth_acting_on_as_well_as_a_p_value():
    """5 points of total variation at 3,000 rows is 'significant'; under monitor.min_label_shift (0.1) it is not drift."""
    import pandas as pd

    from tuneloop.monitor.signals import Features, _label_shift_floor
    from tuneloop.monitor.verdict import SignalResult

    params = load_params(REPO / "params.yaml").monitor
    ref = Features(pd.DataFrame({"predicted": ["a"] * 500 + ["b"] * 500}), None, ())
    significant = SignalResult(name="predicted_label", method="chisquare", value=1e-9, threshold=params.alpha,
                               rule="value < threshold", drifted=True, counts=False)  # fmt: skip
    slight = Features(pd.DataFrame({"predicted": ["a"] * 1650 + ["b"] * 1350}), None, ())
    judged = _label_shift_floor(significant, ref, slight, params)
    assert not judged.drifted and "0.050" in judged.detail
    mixed = Features(pd.DataFrame({"predicted": ["a"] * 2400 + ["b"] * 600}), None, ())
    assert _label_shift_floor(significant, ref, mixed, params).drifted
    other = significant.model_copy(update={"name": "confidence"})
    assert _label_shift_floor(other, ref, slight, params) == other  # only predicted_label has this floor


def _label_samples(rng, shares, rows: int):
    import pandas as pd

    return pd.Series(rng.choice(len(shares), rows, p=shares)).map(lambda k: f"intent_{k}")


def test_the_label_test_is_two_sample_where_evidentlys_chisquare_takes_the_reference_as_exact():
    """77 intents, a 360-row reference and 200-row windows of the same population: Evidently's one-sample chisquare
    (the reference's shares as the truth; a label the reference lacks makes p = 0) flags most windows even at
    alpha 0.001; the two-sample test flags about as many as its threshold says. A shifted mix still flags."""
    import warnings

    from evidently.legacy.calculations.stattests import chi_stat_test
    from evidently.legacy.core import ColumnType

    from tuneloop.monitor.signals import label_homogeneity

    rng = np.random.default_rng(0)
    shares = rng.dirichlet(np.ones(77) * 5)
    reference = _label_samples(rng, shares, 360)
    windows = [_label_samples(rng, shares, 200) for _ in range(200)]
    ours = np.array([label_homogeneity(reference, w) for w in windows])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy on zero expected counts
        theirs = np.array([chi_stat_test(reference, w, ColumnType.Categorical, 0.001).drift_score for w in windows])
    assert (theirs < 0.001).mean() > 0.5
    assert (ours < 0.02).mean() <= 0.05 and (ours < 0.001).mean() <= 0.01
    moved = shares.copy()
    moved[:10] += 0.05  # a third of the traffic more onto ten intents
    moved /= moved.sum()
    assert all(label_homogeneity(reference, _label_samples(rng, moved, 200)) < 0.001 for _ in range(5))
    assert label_homogeneity(reference[:1].map(lambda _: "x"), reference[:3].map(lambda _: "x")) == 1.0


def test_evidently_runs_the_two_sample_label_test_under_its_own_threshold():
    """The predicted_label ValueDrift in the report is the registered two-sample test, at monitor.label_shift_alpha."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report

    from tuneloop.monitor.signals import Features, label_homogeneity, value_drift_metrics

    params = load_params(REPO / "params.yaml").monitor
    assert params.label_shift_alpha != params.alpha
    rng = np.random.default_rng(1)
    reference = _label_samples(rng, np.full(5, 0.2), 300)
    window = _label_samples(rng, np.array([0.3, 0.3, 0.2, 0.1, 0.1]), 200)
    metric = value_drift_metrics(Features(pd.DataFrame({"predicted": window}), None, ()), False, params)[
        "predicted_label"
    ]
    definition = DataDefinition(categorical_columns=["predicted"])
    snapshot = Report([metric]).run(
        Dataset.from_pandas(pd.DataFrame({"predicted": window}), data_definition=definition),
        Dataset.from_pandas(pd.DataFrame({"predicted": reference}), data_definition=definition),
    )
    assert metric.threshold == params.label_shift_alpha
    assert float(snapshot.metric_results[metric.metric_id].value) == pytest.approx(label_homogeneity(reference, window))


@settings(max_examples=200, deadline=None)
@given(
    reference=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=60),
    window=st.lists(st.sampled_from("abcdefghij"), min_size=1, max_size=60),
)
def test_the_label_test_is_a_p_value_for_any_two_samples(reference, window):
    """Any two non-empty samples, labels shared or not: a finite p in [0, 1], the same whichever side is which and
    whatever the labels are called; 1 when the window has the reference's very shares."""
    import pandas as pd

    from tuneloop.monitor.signals import label_homogeneity

    ref, cur = pd.Series(reference), pd.Series(window)
    p = label_homogeneity(ref, cur)
    assert 0.0 <= p <= 1.0
    assert p == pytest.approx(label_homogeneity(cur, ref))
    assert p == pytest.approx(label_homogeneity(ref.map(str.upper), cur.map(str.upper)))
    assert label_homogeneity(ref, pd.concat([ref, ref])) == pytest.approx(1.0)


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["refund", "spam", "0", "1", "ham"]), st.sampled_from(["refund", "spam", "0", "1"])),
        min_size=1,
        max_size=40,
    )
)
def test_labeled_metrics_equal_sklearn_for_any_label_set(rows):
    """One, two or many labels, words or digits: the feedback rows' accuracy, macro-F1 and per-class recall are
    scikit-learn's. Two labels made Evidently 0.7 run a binary task looking up positive label 1 (KeyError), so a
    two-class model's monitoring failed whenever feedback had arrived."""
    import pandas as pd
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    from tuneloop.monitor.signals import labeled_metrics

    true, predicted = (list(column) for column in zip(*rows))
    window = pd.DataFrame({"true_label": [*true, None], "predicted": [*predicted, "spam"]})  # an unlabeled row too
    _, result = labeled_metrics(window)
    labels = sorted(set(true) | set(predicted))
    assert result.rows == len(rows)
    assert result.accuracy == pytest.approx(accuracy_score(true, predicted))
    assert result.macro_f1 == pytest.approx(f1_score(true, predicted, average="macro", zero_division=0))
    recalls = recall_score(true, predicted, labels=labels, average=None, zero_division=0)
    assert result.per_class_recall == pytest.approx(dict(zip(labels, recalls)))
