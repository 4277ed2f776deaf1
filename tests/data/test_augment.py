"""prepare.augment: deterministic, light, label-keeping new train rows; val and test never touched."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, save_tiny_bert, write
from tuneloop.augment import SOURCE_ROW, MaskedLM, augment, contextual, load_mlm, mlm_choice, noise, touched
from tuneloop.config import AugmentParams, load_params
from tuneloop.errors import ConfigError
from tuneloop.model import ModelError
from tuneloop.prepare import run
from tuneloop.tabular import AUGMENTED, CORPUS, LABEL, ORIGIN, TEXT

SENTENCES = {
    "card": [
        "I am still waiting on my card to arrive",
        "When will the new card be delivered to my home address",
        "My card has not arrived after two weeks of waiting",
        "Can I track the delivery of my card please",
    ],
    "refund": [
        "I would like a refund for the broken item I bought",
        "How long does it take to get my money back after a return",
        "The refund has still not shown up in my account",
        "Please send the money back to my original payment method",
    ],
    "atm": [
        "The ATM kept my card and did not give me any cash",
        "Why did the cash machine charge me a fee this morning",
        "I took out money but the machine gave me the wrong amount",
        "Which ATM can I use without paying an extra fee",
    ],
}


@pytest.fixture
def train() -> pd.DataFrame:
    rows = [(text, label, f"web{i % 2}") for label, texts in SENTENCES.items() for i, text in enumerate(texts)]
    return pd.DataFrame(rows, columns=[TEXT, LABEL, "channel"])


def changed_words(before: str, after: str) -> int:
    """Words of `before` that `after` no longer has in place (replaced or deleted)."""
    a, b = before.split(), after.split()
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    return len(a) - sum(block.size for block in matcher.get_matching_blocks())


@pytest.fixture(scope="module")
def tiny_mlm(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> MaskedLM:
    """A 2-layer random BertForMaskedLM (its head saved, so 'trained' as far as loading can tell)."""
    path = save_tiny_bert(tmp_path_factory.mktemp("tiny-mlm"), head="mlm")
    return load_mlm(str(path), "prepare.augment.mlm_model")


# ---------------------------------------------------------------- noise


def test_noise_is_deterministic_by_seed(train):
    one, two, other = (noise(train, seed=s, copies=2) for s in (1, 1, 2))
    pd.testing.assert_frame_equal(one, two)
    assert one[TEXT].tolist() != other[TEXT].tolist()
    assert len(one) == 2 * len(train)  # long, distinct sentences: every draw is new


def test_noise_is_light_and_keeps_label_and_columns(train):
    rows = noise(train, seed=3, copies=3, word_share=0.15)
    assert (rows[ORIGIN] == AUGMENTED).all()
    for _, row in rows.iterrows():
        source = train.iloc[row[SOURCE_ROW] - 1]  # 1-based, as in every message
        assert (row[LABEL], row["channel"]) == (source[LABEL], source["channel"])
        n = len(source[TEXT].split())
        assert 1 <= changed_words(source[TEXT], row[TEXT]) <= touched(n, 0.15) == 1  # 7-12 words: one touched


def test_noise_never_makes_an_empty_text_or_a_duplicate():
    # Every edit of these would recreate a text that exists: "a" can only become "A" (a letter swap needs two
    # letters), "Lost card" can lose a word ("card", "Lost"), change case ("lost card") or swap letters.
    train = pd.DataFrame({TEXT: ["a", "A", "Lost card", "card", "Lost", "lost card"], LABEL: ["x"] * 6})
    held_out = {"Lsot card", "Lost crad", "Lost acrd", "Lost cadr", "oLst card", "Lots card"}
    rows = noise(train, seed=0, copies=5, avoid=held_out)
    assert not rows.empty
    texts = rows[TEXT].tolist()
    assert all(texts) and len(set(texts)) == len(texts)
    assert not set(texts) & (set(train[TEXT]) | held_out)
    assert 1 not in set(rows[SOURCE_ROW])  # "a": no new text possible, skipped rather than duplicated


# ---------------------------------------------------------------- contextual


def test_contextual_replaces_a_word_and_keeps_the_rest(train, tiny_mlm):
    rows = contextual(train, tiny_mlm, seed=0, word_share=0.15)
    assert len(rows) >= len(train) - 2  # a random head still offers whole words almost everywhere
    for _, row in rows.iterrows():
        before, after = train.iloc[row[SOURCE_ROW] - 1][TEXT].split(), row[TEXT].split()
        assert len(after) == len(before)
        swapped = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        assert len(swapped) == 1 and before[swapped[0]].isalpha() and after[swapped[0]].isalpha()
        assert row[LABEL] == train.iloc[row[SOURCE_ROW] - 1][LABEL]


def test_contextual_is_deterministic_by_seed(train, tiny_mlm):
    one, two, other = (contextual(train, tiny_mlm, seed=s) for s in (5, 5, 6))
    pd.testing.assert_frame_equal(one, two)
    assert one[TEXT].tolist() != other[TEXT].tolist()


def test_a_model_without_mlm_head_is_refused_naming_the_key(tiny_model):
    params = load_params(REPO / "params.yaml", [f"prepare.augment.mlm_model={tiny_model}"])
    with pytest.raises(ModelError, match="no trained masked-language-model head") as caught:
        load_mlm(*mlm_choice(params))
    assert "prepare.augment.mlm_model = " in str(caught.value) and "methods: [noise]" in str(caught.value)


# ---------------------------------------------------------------- the prepare stage


def _run_prepare(tmp_path: Path, name: str, *overrides: str) -> tuple[Path, dict]:
    rows = [f"{text} number {i},{label}" for label, texts in SENTENCES.items() for text in texts for i in range(3)]
    source = write(tmp_path / "valid.csv", "text,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / name
    run(load_params(REPO / "params.yaml", overrides), source, out, out / "prepare.json")
    return out, json.loads((out / "prepare.json").read_text())


def test_prepare_augments_the_train_split_only(tmp_path):
    plain, plain_counts = _run_prepare(tmp_path, "plain")
    noisy, counts = _run_prepare(tmp_path, "noisy", "prepare.augment.methods=[noise]", "prepare.augment.copies=2")
    for split in ("val.csv", "test.csv"):
        assert (noisy / split).read_bytes() == (plain / split).read_bytes()
    before, after = pd.read_csv(plain / "train.csv"), pd.read_csv(noisy / "train.csv")
    assert ORIGIN not in before.columns  # off: train.csv exactly as before augmentation existed
    assert after[TEXT].head(len(before)).tolist() == before[TEXT].tolist()
    assert set(after[ORIGIN].head(len(before))) == {CORPUS}
    assert counts["augmented_rows"] == (after[ORIGIN] == AUGMENTED).sum() == 2 * len(before)
    assert counts["train_rows"] == len(after) and plain_counts["augmented_rows"] == 0
    held_out = set(pd.read_csv(plain / "val.csv")[TEXT]) | set(pd.read_csv(plain / "test.csv")[TEXT])
    assert not set(after[TEXT]) & held_out and after[TEXT].is_unique


def test_augment_without_methods_returns_the_split_unchanged(train):
    assert augment(train, AugmentParams(), seed=0) is train
    with pytest.raises(ConfigError, match=r"prepare\.augment\.methods\.0"):
        load_params(REPO / "params.yaml", ["prepare.augment.methods=[synonyms]"])


def test_cli_contextual_on_the_packaged_minilm_names_the_key_and_the_fix(tmp_path, cli):
    source = write(tmp_path / "valid.csv", "text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(20)))
    result = cli(
        "prepare",
        "--input",
        source,
        "--out",
        tmp_path / "prepared",
        "--metrics",
        tmp_path / "prepare.json",
        "--params",
        REPO / "params.yaml",
        "--set",
        "prepare.augment.methods=[contextual]",
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "train.base_model = 'minilm'" in message and "no trained masked-language-model head" in message
    assert "prepare.augment.mlm_model" in message and "tuneloop pretrain" in message
    assert not (tmp_path / "prepared" / "train.csv").exists()
