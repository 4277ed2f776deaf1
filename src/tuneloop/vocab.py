"""Can the base model read this text? Tokenizer coverage, and extending the vocabulary when it cannot.

The packaged MiniLM's WordPiece vocabulary holds ~30k English-centred pieces: on Chinese news titles
63% of its tokens are [UNK], and a model reading mostly [UNK] learns at chance. `coverage` measures
that (validation's `tokenizer_coverage` check); `plan_extension` picks the corpus' frequent units
the tokenizer cannot read (characters in scripts written without spaces, else whole words and
their characters as word pieces) and `extend` adds them to the tokenizer's WordPiece vocabulary and
resizes the model's embeddings. New rows are initialised by transformers' mean resizing (a sample
around the old embeddings' mean and covariance, Hewitt 2021), so a new unit starts as "an average
token" rather than noise; continued pre-training (`tuneloop pretrain`) then teaches them.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.baseline import UNSPACED
from tuneloop.errors import TuneloopError

if TYPE_CHECKING:
    from tuneloop.config import VocabParams

log = logging.getLogger(__name__)

PREFIX = "##"  # WordPiece's continuation prefix (BERT family)


@dataclass
class Coverage:
    """How much of a corpus a tokenizer reads, per text (counts) and overall."""

    tokens: np.ndarray  # tokens per text
    unk: np.ndarray  # [UNK] tokens per text
    chars: np.ndarray  # non-space characters per text
    unreadable: np.ndarray  # characters per text that the vocabulary cannot represent
    unreadable_examples: list[str]  # the most frequent unreadable characters

    @property
    def unk_share_per_text(self) -> np.ndarray:
        return np.divide(self.unk, self.tokens, out=np.zeros_like(self.unk), where=self.tokens > 0)

    @property
    def unk_share(self) -> float:
        return float(self.unk.sum() / max(self.tokens.sum(), 1))

    @property
    def unreadable_char_share(self) -> float:
        return float(self.unreadable.sum() / max(self.chars.sum(), 1))

    def summary(self) -> dict[str, Any]:
        return {
            "unk_share": round(self.unk_share, 4),
            "unreadable_char_share": round(self.unreadable_char_share, 4),
            "texts": len(self.tokens),
            "unreadable_examples": self.unreadable_examples,
        }


def coverage_tokenizer(base: str) -> Any | None:
    """train.base_model's tokenizer for the coverage check; None (logged) when it cannot be loaded offline,
    since training then fails with the message that names the fix. A BERT-family folder's tokenizer.json
    is run by the `tokenizers` library itself (what transformers' fast tokenizer runs, without importing
    transformers and torch: `data validate` starts ~2.4 s sooner, measured); anything else by AutoTokenizer."""
    from tuneloop.model import load_tokenizer, resolve_base_model

    try:
        resolved = resolve_base_model(base)
        return rust_tokenizer(Path(resolved)) or load_tokenizer(resolved)
    except (OSError, ValueError, TuneloopError) as exc:
        log.warning("tokenizer_coverage not checked: cannot load the tokenizer of %s (%s)", base, exc)
        return None


class RustTokenizer:
    """The part of transformers' PreTrainedTokenizerFast that coverage and the extension use, over the
    `tokenizers` Tokenizer of a tokenizer.json: ids without truncation or padding (the file may carry both)."""

    def __init__(self, backend: Any, unk_token: str) -> None:
        backend.no_truncation()
        backend.no_padding()
        self.backend_tokenizer = backend
        self.unk_token_id = backend.token_to_id(unk_token)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.backend_tokenizer.get_vocab())

    def __call__(self, texts: str | list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        batch = [texts] if isinstance(texts, str) else list(texts)
        ids = [e.ids for e in self.backend_tokenizer.encode_batch(batch, add_special_tokens=add_special_tokens)]
        return {"input_ids": ids[0] if isinstance(texts, str) else ids}


# tokenizer_config.json keys of transformers' BertTokenizerFast that rebuild the file's normalizer when they
# disagree with it: the file is used as is only when they agree.
BERT_NORMALIZER = {
    "do_lower_case": "lowercase",
    "strip_accents": "strip_accents",
    "tokenize_chinese_chars": "handle_chinese_chars",
}


def rust_tokenizer(folder: Path) -> RustTokenizer | None:
    """The folder's tokenizer.json as a RustTokenizer when transformers would run that file unchanged (a BERT
    WordPiece tokenizer whose tokenizer_config.json agrees with its normaliser); None otherwise."""
    import json

    try:
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    normalizer = spec.get("normalizer") or {}
    unk = config.get("unk_token")
    unk = unk.get("content") if isinstance(unk, dict) else unk
    if (
        config.get("tokenizer_class") not in ("BertTokenizer", "BertTokenizerFast")
        or normalizer.get("type") != "BertNormalizer"
        or (spec.get("model") or {}).get("type") != "WordPiece"
        or any(key in config and config[key] != normalizer.get(field) for key, field in BERT_NORMALIZER.items())
        or not isinstance(unk, str)
    ):
        return None
    from tokenizers import Tokenizer

    from tuneloop.model import TOKENIZER_PROBE

    try:
        found = RustTokenizer(Tokenizer.from_str(json.dumps(spec)), unk)
        found(TOKENIZER_PROBE)
    except Exception:  # tokenizers raises Exception itself; AutoTokenizer then names the cause
        return None
    return found if found.unk_token_id is not None else None


def unreadable_chars(tokenizer: Any, chars: set[str]) -> set[str]:
    """Characters that the tokenizer turns into [UNK] on their own (after its normalisation)."""
    unk = tokenizer.unk_token_id
    return {c for c in chars if not c.isspace() and unk in tokenizer(c, add_special_tokens=False)["input_ids"]}


def coverage(tokenizer: Any, texts: list[str], batch_size: int = 1000) -> Coverage:
    """[UNK] tokens of each text and its characters the vocabulary cannot represent."""
    unk, tokens, unk_counts = tokenizer.unk_token_id, [], []
    for start in range(0, len(texts), batch_size):
        ids = tokenizer(texts[start : start + batch_size], add_special_tokens=False)["input_ids"]
        tokens += [len(i) for i in ids]
        unk_counts += [sum(t == unk for t in i) for i in ids]
    char_counts = Counter(c for t in texts for c in t if not c.isspace())
    bad = unreadable_chars(tokenizer, set(char_counts))
    return Coverage(
        tokens=np.array(tokens, dtype=float),
        unk=np.array(unk_counts, dtype=float),
        chars=np.array([sum(1 for c in t if not c.isspace()) for t in texts], dtype=float),
        unreadable=np.array([sum(c in bad for c in t) for t in texts], dtype=float),
        unreadable_examples=[c for c, _ in Counter({c: char_counts[c] for c in bad}).most_common(10)],
    )


@dataclass
class Extension:
    """What `extend` adds: recorded in the model's tuneloop.json (`vocab_extension`)."""

    units: list[str]  # vocabulary entries added, most frequent first
    min_count: int
    unk_share_before: float
    unk_share_after: float | None = None

    def record(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.units).encode()).hexdigest()
        return asdict(self) | {"added": len(self.units), "units": self.units[:50], "units_sha256": digest}


def plan_extension(tokenizer: Any, texts: list[str], min_count: int, max_new: int) -> Extension:
    """The corpus' frequent units the tokenizer maps to [UNK]: characters (with their ## continuation form
    outside unspaced scripts) and, for space-separated scripts, whole words that hold them."""
    normalize = tokenizer.backend_tokenizer.normalizer
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    vocab = tokenizer.get_vocab()
    words: Counter[str] = Counter()
    for text in texts:
        norm = normalize.normalize_str(text) if normalize is not None else text
        words.update(w for w, _ in pre.pre_tokenize_str(norm))
    chars: Counter[str] = Counter()
    for word, n in words.items():
        for c in word:
            chars[c] += n
    bad = unreadable_chars(tokenizer, set(chars))
    units: Counter[str] = Counter()
    for c in bad:
        units[c] = chars[c]
        if not UNSPACED.match(c):  # inside a word: WordPiece needs the continuation piece too
            units[PREFIX + c] = chars[c]
    for word, n in words.items():
        if len(word) > 1 and any(c in bad for c in word) and not UNSPACED.search(word):
            units[word] = n  # a frequent unreadable word becomes one piece (longest match first)
    chosen = [u for u, n in units.most_common() if n >= min_count and u not in vocab][:max_new]
    return Extension(units=chosen, min_count=min_count, unk_share_before=coverage(tokenizer, texts).unk_share)


def extend_if_asked(settings: VocabParams, tokenizer: Any, model: Any, texts: list[str]) -> dict[str, Any] | None:
    """`vocab.extend`: plan and apply the extension for `texts`; its record (tuneloop.json), or None when off.
    Pretrain and train both call it; train adds nothing when the pretrained checkpoint already holds the units."""
    if not settings.extend:
        return None
    extension = plan_extension(tokenizer, texts, settings.min_count, settings.max_new_tokens)
    extend(tokenizer, model, extension, texts)
    return extension.record()


def extend(tokenizer: Any, model: Any | None, extension: Extension, texts: list[str]) -> None:
    """Add `extension.units` to the tokenizer's WordPiece vocabulary (in place) and resize the model's
    embeddings; records the corpus' [UNK] share after it."""
    from tokenizers.models import WordPiece

    if not extension.units:
        return
    backend = tokenizer.backend_tokenizer
    current = backend.model
    vocab = dict(backend.get_vocab())
    for unit in extension.units:
        vocab.setdefault(unit, len(vocab))
    backend.model = WordPiece(
        vocab=vocab,
        unk_token=current.unk_token,
        continuing_subword_prefix=current.continuing_subword_prefix,
        max_input_chars_per_word=current.max_input_chars_per_word,
    )
    if model is not None:
        model.resize_token_embeddings(len(vocab), mean_resizing=True)
    extension.unk_share_after = coverage(tokenizer, texts).unk_share
    log.info(
        "vocabulary extended by %d units (%s...): [UNK] share %.3f -> %.3f",
        len(extension.units),
        "".join(extension.units[:10]),
        extension.unk_share_before,
        extension.unk_share_after,
    )
