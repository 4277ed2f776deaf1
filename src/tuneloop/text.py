"""Text helpers: normalisation shared by validation (duplicate detection) and prepare (the cleaned text), and the
one-typo perturbation shared by the behavioural tests (evaluate) and augmentation (prepare.augment)."""

from __future__ import annotations

import random
import re
import unicodedata


def normalize_text(text: str, *, lowercase: bool = False) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped.

    NFC first so that "é" typed as one code point or as e + combining accent is the same text
    (and so the same duplicate); whitespace next so tabs/newlines inside a message do not make
    two copies of it look different.
    """
    text = " ".join(unicodedata.normalize("NFC", text).split())
    return text.lower() if lowercase else text


def label_key(label: str) -> str:
    """What two spellings of one class name share: NFKC, case folded, separators (white space, '_', '-', '.')
    dropped. 'card_lost', 'Card Lost' and 'card-lost' have one key; a corpus or an annotator using two of them
    makes two classes of one (validation's label_spelling check, `tuneloop feedback import --new-labels`)."""
    return re.sub(r"[\s_.\-]+", "", unicodedata.normalize("NFKC", label).casefold())


def swap_letters(text: str, rng: random.Random) -> str:
    """One typo: two adjacent letters swapped at a random place (the text unchanged if it has no such pair)."""
    letters = [i for i, c in enumerate(text[:-1]) if c.isalpha() and text[i + 1].isalpha()]
    if not letters:
        return text
    i = rng.choice(letters)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
