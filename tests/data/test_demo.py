import hashlib

import pytest

from tuneloop.demo import INTENTS, generate


def test_same_seed_gives_byte_identical_file(project, cli):
    for name in ("one.csv", "two.csv"):
        assert cli("data", "demo", "--out", name, "--rows", "300", "--seed", "7").exit_code == 0
    digest = [hashlib.sha256((project / n).read_bytes()).hexdigest() for n in ("one.csv", "two.csv")]
    assert digest[0] == digest[1]
    assert cli("data", "demo", "--out", "three.csv", "--rows", "300", "--seed", "8").exit_code == 0
    assert hashlib.sha256((project / "three.csv").read_bytes()).hexdigest() != digest[0]


def test_corpus_is_realistic_enough_to_be_hard():
    frame = generate(2000, seed=42)
    counts = frame["label"].value_counts()
    assert len(counts) == len(INTENTS) >= 8
    assert counts.max() / counts.min() > 2.5  # imbalanced
    assert frame["text"].nunique() > 1500  # paraphrase variety
    # Two-intent messages join two intents; the first decides, so either can be the label.
    joined = frame[frame["text"].str.contains(" and ") & frame["text"].str.contains("refund")]
    assert joined["label"].nunique() >= 2


def test_drift_variants_shift_what_monitoring_watches():
    base = generate(1500, seed=3)
    vocab = generate(1500, seed=3, drift="vocabulary")
    base_words = {w for t in base["text"] for w in t.split()}
    new_share = sum(w not in base_words for t in vocab["text"] for w in t.split()) / sum(
        len(t.split()) for t in vocab["text"]
    )
    assert new_share > 0.1
    assert generate(1500, seed=3, drift="length")["text"].str.len().mean() > 2 * base["text"].str.len().mean()
    mixed = generate(1500, seed=3, drift="label-mix")["label"].value_counts()
    assert mixed.idxmax() != base["label"].value_counts().idxmax()


def test_unknown_drift_is_a_clear_error(cli, project):
    result = cli("data", "demo", "--out", "x.csv", "--drift", "sideways")
    assert result.exit_code == 1 and "choose one of none, vocabulary, label-mix, length" in result.stderr
    assert not (project / "x.csv").exists()


@pytest.mark.parametrize("drift", ["none", "vocabulary", "label-mix", "length"])
def test_demo_data_passes_validation(project, cli, drift):
    assert cli("data", "demo", "--out", "demo.csv", "--rows", "600", "--drift", drift).exit_code == 0
    result = cli("data", "validate", "demo.csv", "--out", "v")
    assert result.exit_code == 0, result.output
