"""Text helpers: normalisation shared by validation (duplicate detection) and prepare (the cleaned text), and the
one-typo perturbation shared by the behavioural tests (evaluate) and augmentation (prepare.augment)."""

from __future__ import annotations

import random
import unicodedata


def normalize_text(text: str, *, lowercase: bool = False) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped.

    NFC first so that "é" typed as one code point or as e + combining accent is the same text
    (and so the same duplicate); whitespace next so tabs/newlines inside a message do not make
    two copies of it look different.
    """
    text = " ".join(unicodedata.normalize("NFC", text).split())
    return text.lower() if lowercase else text


def swap_letters(text: str, rng: random.Random) -> str:
    """One typo: two adjacent letters swapped at a random place (the text unchanged if it has no such pair)."""
    letters = [i for i, c in enumerate(text[:-1]) if c.isalpha() and text[i + 1].isalpha()]
    if not letters:
        return text
    i = rng.choice(letters)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
