"""Training-data augmentation (`prepare.augment`): new train rows made from train rows, labels kept.

Two methods:
- noise: the slips real users make: two letters swapped (the behavioural tests' typo,
  `tuneloop.text.swap_letters`), a word's case changed, a word dropped.
- contextual: a few words masked, each filled with one of a masked-language model's top predictions
  other than the word itself (the base model's own MLM head, or `prepare.augment.mlm_model`'s).

Both change `word_share` of a text's words (at least one) and are deterministic per row: what a row
becomes depends on its text, the seed, the method and the copy number, not on the other rows (unless a draw
repeats another text and is redrawn), so adding data leaves the other rows' augmentations as they were
(as `prepare.split_order` does for splits).

An augmented row keeps every column of its source row (label, slice columns), with `origin` =
`augmented` and `source_row` = the source's row in train.csv (1-based, header excluded, as in every
message). A candidate that is empty, or equal to a text already in any split or made before, is not
kept: no text trains twice, and no val or test text leaks into train.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop.config import AugmentParams, Params
from tuneloop.model import ModelError, device, load_tokenizer, resolve_base_model
from tuneloop.tabular import AUGMENTED, CORPUS, ORIGIN, TEXT
from tuneloop.text import normalize_text, swap_letters

log = logging.getLogger(__name__)

SOURCE_ROW = "source_row"  # the train.csv row (1-based) an augmented row was made from; empty for the originals
NOISE_ATTEMPTS = 4  # a draw that changes nothing or repeats a text is redrawn this often, then the copy is skipped
MLM_BATCH = 16  # texts per forward pass: the logits are batch x tokens x vocabulary (30k) floats
MLM_MAX_LENGTH = 128  # a mask past this many tokens is cut off and its word left as it was
MLM_FIX = (
    "Point prepare.augment.mlm_model at a folder with a trained masked-language-model head (e.g. "
    "models/pretrained, which `tuneloop pretrain` writes), or set prepare.augment.methods: [noise]."
)


def touched(n_words: int, word_share: float) -> int:
    """How many of a text's `n_words` words one augmentation changes: `word_share` of them, rounded down, at
    least one (so a short text gets a larger share: one word of five is 20%)."""
    return max(1, int(n_words * word_share))


def _rng(seed: int, method: str, copy: int, attempt: int, text: str) -> random.Random:
    # A string seed goes through SHA-512 in random.Random: the same stream on every run and machine,
    # whatever PYTHONHASHSEED says.
    return random.Random(f"{seed}\x00{method}\x00{copy}\x00{attempt}\x00{text}")


# ---------------------------------------------------------------- noise


def _change_case(word: str) -> str:
    """A shift key pressed or missed: a lower-case word capitalised, any other word lower-cased."""
    return word.capitalize() if word == word.lower() else word.lower()


def noise_text(text: str, rng: random.Random, word_share: float) -> str:
    """One light-noise variant of `text`: `touched` words each get one edit, drawn from a letter swap, a case
    change and (while more than one word is left) deletion."""
    words: list[str | None] = list(text.split())
    for i in rng.sample(range(len(words)), min(len(words), touched(len(words), word_share))):
        edits = ["typo", "case", "delete"] if sum(w is not None for w in words) > 1 else ["typo", "case"]
        edit, word = rng.choice(edits), str(words[i])
        words[i] = None if edit == "delete" else swap_letters(word, rng) if edit == "typo" else _change_case(word)
    return " ".join(w for w in words if w is not None)


def noise(
    train: pd.DataFrame,
    *,
    seed: int,
    copies: int = 1,
    word_share: float = 0.15,
    avoid: Iterable[str] = (),
    lowercase: bool = False,
) -> pd.DataFrame:
    """`copies` noisy rows per train row (fewer where every draw repeats a text); only the new rows."""

    def draw(_pos: int, text: str, copy: int, attempt: int) -> str | None:
        return noise_text(text, _rng(seed, "noise", copy, attempt, text), word_share)

    return _collect(train, copies, draw, NOISE_ATTEMPTS, avoid, lowercase)


def _collect(
    train: pd.DataFrame,
    copies: int,
    draw: Callable[[int, str, int, int], str | None],
    attempts: int,
    avoid: Iterable[str],
    lowercase: bool,
) -> pd.DataFrame:
    """The augmented rows: per copy and train row, the first draw that is a new, non-empty text."""
    seen = {*avoid, *train[TEXT]}
    picks: list[tuple[int, str]] = []
    for copy in range(copies):
        for pos, text in enumerate(train[TEXT].tolist()):
            for attempt in range(attempts):
                drawn = draw(pos, text, copy, attempt)
                # normalised as prepare normalises, so "new" means new after normalisation too
                new = normalize_text(drawn, lowercase=lowercase) if drawn else ""
                if new and new not in seen:
                    seen.add(new)
                    picks.append((pos, new))
                    break
    rows = train.iloc[[pos for pos, _ in picks]].copy()
    rows[TEXT] = [text for _, text in picks]
    rows[ORIGIN] = AUGMENTED
    rows[SOURCE_ROW] = pd.array([pos + 1 for pos, _ in picks], dtype="Int64")
    return rows.reset_index(drop=True)


# ---------------------------------------------------------------- contextual


@dataclass
class MaskedLM:
    """A masked-language model with a trained head, and its tokenizer (see `load_mlm`)."""

    model: Any
    tokenizer: Any


def mlm_choice(params: Params) -> tuple[str, str]:
    """(the model contextual augmentation uses, the params key that chose it, for messages)."""
    chosen = params.prepare.augment.mlm_model
    if chosen is not None:
        return chosen, f"prepare.augment.mlm_model = {chosen!r}"
    base = params.train.base_model
    return base, f"train.base_model = {base!r} (prepare.augment.mlm_model is null)"


def load_mlm(name: str, key: str) -> MaskedLM:
    """Load `name` (a folder, a cached hub id or 'minilm') with its masked-language-model head.

    Raises:
        ModelError: naming `key` and the fix, when the model cannot be loaded or has no trained MLM head
            (loading reports the head's weights as newly initialised: the packaged MiniLM holds the
            encoder only), because a random head would fill masks with random words.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForMaskedLM

    try:
        path = resolve_base_model(name)
    except ModelError as exc:
        raise ModelError(f"contextual augmentation uses {key}: {exc} {MLM_FIX}") from None
    try:
        with _quiet_loading():
            # safetensors only, as train loads a base: never a pickled pytorch_model.bin (torch.load)
            model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True, use_safetensors=True)
            tokenizer = load_tokenizer(path)
    except (OSError, ValueError, SafetensorError) as exc:
        # A missing local folder reaches from_pretrained as a hub id ("models/pretrained" is one in form).
        cause = f"no folder {name} and no cached hub model of that name" if not Path(name).exists() else exc
        raise ModelError(f"contextual augmentation uses {key}, which cannot be loaded ({cause}). {MLM_FIX}") from None
    missing = sorted(info["missing_keys"])
    if missing or tokenizer.mask_token_id is None:
        what = f"newly initialised: {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
        raise ModelError(
            f"contextual augmentation uses {key}, which has no trained masked-language-model head "
            f"({what if missing else 'its tokenizer has no mask token'}), so it would insert random words. {MLM_FIX}"
        )
    model.eval()
    return MaskedLM(model=model.to(device()), tokenizer=tokenizer)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' load report and progress bar off: the report lists a missing head, and the error then
    raised says what that means and what to do."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _maskable(tokenizer: Any, words: list[list[str]]) -> list[list[bool]]:
    """Per text, which words can be masked: alphabetic and one token long, so one [MASK] stands for the word."""
    enc = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    out = []
    for i, text_words in enumerate(words):
        pieces = Counter(w for w in enc.word_ids(i) if w is not None)
        out.append([w.isalpha() and pieces[j] == 1 for j, w in enumerate(text_words)])
    return out


def _mask_predictions(mlm: MaskedLM, texts: list[str], depth: int) -> list[list[list[str]]]:
    """Per text, per mask token in order, the `depth` tokens the model ranks highest there (length-sorted batches)."""
    import torch

    out: list[list[list[str]]] = [[] for _ in texts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    dev = next(mlm.model.parameters()).device
    for start in range(0, len(order), MLM_BATCH):
        idx = order[start : start + MLM_BATCH]
        enc = mlm.tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=MLM_MAX_LENGTH, return_tensors="pt"
        ).to(dev)
        with torch.inference_mode():
            logits = mlm.model(**enc).logits
        rows, cols = (enc["input_ids"] == mlm.tokenizer.mask_token_id).nonzero(as_tuple=True)  # row-major order
        top = logits[rows, cols].topk(depth, dim=-1).indices.tolist()
        for row, ids in zip(rows.tolist(), top, strict=True):
            out[idx[row]].append(mlm.tokenizer.convert_ids_to_tokens(ids))
    return out


def _fill(word: str, ranked: list[str], rng: random.Random, top_k: int, special: set[str]) -> str:
    """One of the `top_k` best whole-word predictions other than `word`, in `word`'s case (or `word` if none)."""
    usable = [t for t in ranked if t.isalpha() and t not in special and t.lower() != word.lower()][:top_k]
    if not usable:
        return word
    new = rng.choice(usable)
    return new.upper() if word.isupper() and len(word) > 1 else new.capitalize() if word[0].isupper() else new


def contextual_texts(
    texts: list[str], mlm: MaskedLM, *, seed: int, copy: int, word_share: float, top_k: int
) -> list[str | None]:
    """One contextual variant per text (None where no word could be masked), all masks of a text in one pass."""
    words = [t.split() for t in texts]
    rngs = [_rng(seed, "contextual", copy, 0, t) for t in texts]
    plans: list[list[int]] = []
    for text_words, maskable, rng in zip(words, _maskable(mlm.tokenizer, words), rngs, strict=True):
        candidates = [i for i, ok in enumerate(maskable) if ok]
        plans.append(sorted(rng.sample(candidates, min(len(candidates), touched(len(text_words), word_share)))))
    mask = mlm.tokenizer.mask_token
    masked = [" ".join(mask if i in plan else w for i, w in enumerate(ws)) for ws, plan in zip(words, plans)]
    todo = [i for i, plan in enumerate(plans) if plan]
    ranked = _mask_predictions(mlm, [masked[i] for i in todo], depth=4 * top_k + 10)  # room for skipped pieces
    special = set(mlm.tokenizer.all_special_tokens)
    out: list[str | None] = [None] * len(texts)
    for i, predictions in zip(todo, ranked, strict=True):
        new = list(words[i])
        for pos, tokens in zip(plans[i], predictions, strict=False):  # masks cut off by truncation keep their word
            new[pos] = _fill(new[pos], tokens, rngs[i], top_k, special)
        out[i] = " ".join(new)
    return out


def contextual(
    train: pd.DataFrame,
    mlm: MaskedLM,
    *,
    seed: int,
    copies: int = 1,
    word_share: float = 0.15,
    top_k: int = 5,
    avoid: Iterable[str] = (),
    lowercase: bool = False,
) -> pd.DataFrame:
    """`copies` contextual rows per train row (fewer where no word could be replaced); only the new rows."""
    texts = train[TEXT].tolist()
    drafts = [
        contextual_texts(texts, mlm, seed=seed, copy=copy, word_share=word_share, top_k=top_k) for copy in range(copies)
    ]
    return _collect(train, copies, lambda pos, _text, copy, _attempt: drafts[copy][pos], 1, avoid, lowercase)


# ---------------------------------------------------------------- the stage's entry


def augment(
    train: pd.DataFrame,
    params: AugmentParams,
    seed: int,
    *,
    mlm: MaskedLM | None = None,
    avoid: Iterable[str] = (),
    lowercase: bool = False,
) -> pd.DataFrame:
    """The train split with `params.methods`' rows appended; unchanged (no new columns) when there are none.

    Args:
        train: the train split (text, label and any other columns).
        params: `prepare.augment`.
        seed: `base.seed`.
        mlm: the masked-language model, needed when the methods include contextual (see `load_mlm`).
        avoid: texts no augmented row may equal: the val and test texts.
        lowercase: `prepare.lowercase`, applied to the new texts as to every prepared text.
    """
    if not params.methods:
        return train
    seen = set(avoid)
    parts = [train if ORIGIN in train.columns else train.assign(**{ORIGIN: CORPUS})]
    for method in params.methods:
        if method == "noise":
            rows = noise(
                train, seed=seed, copies=params.copies, word_share=params.word_share, avoid=seen, lowercase=lowercase
            )
        elif mlm is None:
            raise ValueError("contextual augmentation needs the masked-language model: load it with load_mlm")
        else:
            rows = contextual(
                train,
                mlm,
                seed=seed,
                copies=params.copies,
                word_share=params.word_share,
                top_k=params.top_k,
                avoid=seen,
                lowercase=lowercase,
            )
        seen |= set(rows[TEXT])
        log.info("augment %s: %d rows from %d train rows x %d copies", method, len(rows), len(train), params.copies)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)
