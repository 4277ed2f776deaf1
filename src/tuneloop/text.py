"""Text normalisation shared by validation (duplicate detection) and prepare (the cleaned text)."""

from __future__ import annotations

import unicodedata


def normalize_text(text: str, *, lowercase: bool = False) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, ends stripped.

    NFC first so that "é" typed as one code point or as e + combining accent is the same text
    (and so the same duplicate); whitespace next so tabs/newlines inside a message do not make
    two copies of it look different.
    """
    text = " ".join(unicodedata.normalize("NFC", text).split())
    return text.lower() if lowercase else text
