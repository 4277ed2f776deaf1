"""The predicted-label test against the mix of all the split data (tuneloop.monitor.label_mix).

Simulated without a model: a population of intents, a corpus drawn from it, split by the pipeline's own
`stratified_split`, a classifier that errs on a share of rows, and windows of fresh traffic through the
same classifier."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.demo import WEIGHTS

REPO = Path(__file__).resolve().parents[2]


def _predict(rng: np.random.Generator, true: np.ndarray, k: int, error: float) -> np.ndarray:
    """A classifier that is wrong on `error` of the rows, picking another label at random."""
    wrong = rng.random(len(true)) < error
    other = (true + rng.integers(1, k, len(true))) % k
    return np.where(wrong, other, true)


def _reference(rng: np.random.Generator, shares: np.ndarray, corpus_rows: int, error: float, with_corpus: bool):
    """The held-out val + test rows (10% + 10% per class, `tuneloop prepare`'s split) of a corpus drawn from
    `shares`, predicted by the classifier, with the corpus' label counts in the metadata when `with_corpus`."""
    from tuneloop.monitor.label_mix import CORPUS_LABELS
    from tuneloop.prepare import stratified_split

    k = len(shares)
    true = rng.choice(k, corpus_rows, p=shares)
    corpus = pd.DataFrame({"text": [f"text {i}" for i in range(corpus_rows)], "label": [f"intent_{j}" for j in true]})
    parts = stratified_split(corpus, 0.1, 0.1, seed=int(rng.integers(1 << 30)))
    held = pd.concat([parts["val"], parts["test"]])
    ids = held["label"].str.removeprefix("intent_").astype(int).to_numpy()
    frame = pd.DataFrame({"true_label": held["label"].to_numpy(), "predicted": _labels(_predict(rng, ids, k, error))})
    settings = {"labels": [f"intent_{j}" for j in range(k)]}
    if with_corpus:
        settings[CORPUS_LABELS] = dict(Counter(corpus["label"]))
    frame.attrs["tuneloop_reference"] = settings
    return frame


def _labels(ids: np.ndarray) -> pd.Series:
    return pd.Series([f"intent_{j}" for j in ids])


def _window(rng, shares: np.ndarray, moved: np.ndarray, rows: int, share_moved: float, error: float) -> pd.Series:
    n_moved = rng.binomial(rows, share_moved)
    true = np.concatenate([rng.choice(len(shares), rows - n_moved, p=shares), rng.choice(len(moved), n_moved, p=moved)])
    return _labels(_predict(rng, true, len(shares), error))


def _flag_rates(shares, moved, corpus_rows, error, share_moved, corpora=30, windows=20, alpha=0.02):
    """Share of 200-row windows flagged by the expected-mix test and by the two-sample test on the same windows,
    over several corpora (the corpus' own draw is part of the test's error)."""
    from tuneloop.monitor.label_mix import expected_label_mix
    from tuneloop.monitor.signals import label_homogeneity, label_mix_fit

    rng = np.random.default_rng(7)
    ours, two_sample = [], []
    for _ in range(corpora):
        reference = _reference(rng, shares, corpus_rows, error, with_corpus=True)
        mix = expected_label_mix(reference)
        assert mix is not None
        for _ in range(windows):
            window = _window(rng, shares, moved, 200, share_moved, error)
            ours.append(label_mix_fit(mix, window) < alpha)
            two_sample.append(label_homogeneity(reference["predicted"], window) < alpha)
    return float(np.mean(ours)), float(np.mean(two_sample))


DEMO = np.array(WEIGHTS) / sum(WEIGHTS)


def test_undrifted_windows_are_flagged_as_often_as_the_threshold_says():
    """Ten intents at the demo's shares, a 1,800-row corpus (360 held out), 1% errors; and 77 intents, 10,000 rows,
    10% errors: the expected-mix test flags about alpha (2%) of undrifted windows. The two-sample test, taking the
    stratified reference for a random sample, flags far fewer: it is conservative, and so it is weak."""
    ours, two_sample = _flag_rates(DEMO, DEMO, 1800, 0.01, 0.0)
    assert 0.005 <= ours <= 0.04
    assert two_sample < ours
    many = np.random.default_rng(3).dirichlet(np.ones(77) * 5)
    ours, _ = _flag_rates(many, many, 10_000, 0.10, 0.0, corpora=15)
    assert ours <= 0.045


def test_a_moved_label_mix_is_caught_where_the_two_sample_test_misses_it():
    """Half the window from the demo's inverted mix (total variation 0.175 from the reference): at the shipped
    monitor.label_shift_alpha the expected-mix test flags at least 95% of windows, the two-sample test on the same
    windows clearly fewer."""
    from tuneloop.config import load_params

    alpha = load_params(REPO / "params.yaml").monitor.label_shift_alpha
    ours, two_sample = _flag_rates(DEMO, DEMO[::-1], 1800, 0.01, 0.5, alpha=alpha)
    assert ours >= 0.95
    assert two_sample < ours - 0.1


def test_the_expected_mix_is_the_corpus_mix_through_the_reference_confusion():
    """A reference without errors: its mix is the corpus' label shares, worth the corpus' rows. With errors: the
    shares move as the confusion says, and they are worth fewer rows, never fewer than the reference holds."""
    from tuneloop.monitor.label_mix import CORPUS_LABELS, expected_label_mix

    frame = pd.DataFrame({"true_label": ["a"] * 30 + ["b"] * 10, "predicted": ["a"] * 30 + ["b"] * 10})
    frame.attrs["tuneloop_reference"] = {"labels": ["a", "b", "c"], CORPUS_LABELS: {"a": 300, "b": 100, "c": 4}}
    mix = expected_label_mix(frame)
    assert mix is not None
    assert mix.as_dict() == pytest.approx({"a": 300 / 404, "b": 100 / 404, "c": 4 / 404})  # c: too few to hold out
    assert mix.rows == pytest.approx(404) and mix.corpus_rows == 404
    frame.loc[:5, "predicted"] = "b"  # 6 of the 30 a-rows predicted b
    mix = expected_label_mix(frame)
    assert mix is not None
    assert mix.as_dict()["a"] == pytest.approx(300 / 404 * 24 / 30)
    assert mix.as_dict()["b"] == pytest.approx(100 / 404 + 300 / 404 * 6 / 30)
    assert len(frame) <= mix.rows < 404


def test_labels_the_model_does_not_know_and_references_without_counts():
    """A corpus label the model cannot predict and the reference lacks is left out (the window never shows it);
    a reference without corpus counts (a file of any rows) has no expected mix: the two-sample test judges it."""
    from tuneloop.monitor.label_mix import CORPUS_LABELS, expected_label_mix

    frame = pd.DataFrame({"true_label": ["a", "b"] * 10, "predicted": ["a", "b"] * 10})
    frame.attrs["tuneloop_reference"] = {"labels": ["a", "b"], CORPUS_LABELS: {"a": 50, "b": 50, "z": 40}}
    mix = expected_label_mix(frame)
    assert mix is not None and set(mix.as_dict()) == {"a", "b"} and mix.corpus_rows == 100
    frame.attrs["tuneloop_reference"] = {"labels": ["a", "b"]}
    assert expected_label_mix(frame) is None


def test_the_corpus_counts_are_read_from_the_raw_file_repeats_included(tmp_path):
    """Rows per label of the raw corpus: a repeated row counts each time (traffic repeats), a row without a label
    does not; a file without a label column, or with two, is refused naming it."""
    from tuneloop.errors import DataError
    from tuneloop.monitor.label_mix import corpus_label_counts

    path = tmp_path / "corpus.csv"
    path.write_text("text,label\nlost card,card_lost\nlost card,card_lost\nrefund me,refund\nhi,\n", encoding="utf-8")
    assert corpus_label_counts(path) == {"card_lost": 2, "refund": 1}
    bad = tmp_path / "texts.csv"
    bad.write_text("text\nlost card\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"texts\.csv: no 'label' column \(columns found: text\)\. Pass the raw"):
        corpus_label_counts(bad)
    bad.write_text("text,label,label\nlost card,card_lost,refund\n", encoding="utf-8")
    with pytest.raises(DataError, match="names column 'label' more than once"):
        corpus_label_counts(bad)


def test_evidently_runs_the_expected_mix_test_and_the_verdict_says_so(tiny_classifier, reference_rows, windows, params):
    """A reference built with the corpus' label counts carries them; the window's predicted_label signal is the
    expected-mix test run by Evidently's ValueDrift (its p-value equals label_mix_fit), and its detail names the
    mix it was judged against."""
    from tuneloop.model import load_classifier
    from tuneloop.monitor.label_mix import CORPUS_LABELS, expected_label_mix
    from tuneloop.monitor.reference import build_reference
    from tuneloop.monitor.run import assess
    from tuneloop.monitor.signals import label_mix_fit

    counts = dict(Counter(reference_rows["label"].tolist() * 5))
    reference = build_reference(tiny_classifier, reference_rows, backend="torch", corpus_labels=counts)
    assert reference.attrs["tuneloop_reference"][CORPUS_LABELS] == counts
    mix = expected_label_mix(reference)
    assert mix is not None and mix.corpus_rows == 5 * len(reference_rows)
    window = windows["m:ref"]
    signals = {s.name: s for s in assess(reference, window, params, load_classifier(tiny_classifier).tokenizer).signals}
    label = signals["predicted_label"]
    assert label.method == "evidently ValueDrift chi2_expected_mix"
    assert label.value == pytest.approx(label_mix_fit(mix, window["predicted"].astype(str)))
    assert f"the corpus' {mix.corpus_rows} labels" in label.detail


@settings(max_examples=100, deadline=None)
@given(
    counts=st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 500), min_size=1),
    rows=st.floats(1, 1e6),
    window=st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=80),
)
def test_the_expected_mix_test_is_a_p_value_for_any_mix_and_window(counts, rows, window):
    """Any expected mix, any weight and any window, labels shared or not: a finite p in [0, 1]; 1 when the window
    has the mix's very shares."""
    from tuneloop.monitor.label_mix import LabelMix
    from tuneloop.monitor.signals import label_mix_fit

    total = sum(counts.values())
    mix = LabelMix(shares=tuple(sorted((k, v / total) for k, v in counts.items())), rows=rows, corpus_rows=total)
    p = label_mix_fit(mix, pd.Series(window))
    assert 0.0 <= p <= 1.0
    same = pd.Series([label for label, n in counts.items() for _ in range(n)])
    assert label_mix_fit(mix, same) == pytest.approx(1.0)
