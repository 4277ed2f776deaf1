"""Prepare stage: normalise, dedupe, and split the validated rows into train/val/test.

Run by DVC (`dvc repro prepare`) as `python -m tuneloop prepare`; reads only its own section of
params.yaml (plus base.seed, data.labels, and train.base_model when contextual augmentation has no mlm_model
of its own). Outputs under data/prepared/:
train.csv, val.csv, test.csv, labels.json (the label map, written once for all splits) and
dropped.csv (rows removed here and why: dedupe after normalisation, or leakage into a provided
test file), so nothing is dropped silently. With `prepare.augment` the train split also holds augmented
rows (origin `augmented`, see tuneloop.augment); val and test never do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tuneloop.augment import augment, load_mlm, mlm_choice
from tuneloop.config import Params, PrepareParams
from tuneloop.errors import DataError
from tuneloop.tabular import AUGMENTED, LABEL, ORIGIN, TEXT, read_table, write_csv_atomic, write_text_atomic
from tuneloop.text import normalize_text

log = logging.getLogger(__name__)

DEFAULT_INPUT = Path("data/validated/valid.csv")
DEFAULT_OUT = Path("data/prepared")
SPLITS = ("train", "val", "test")


@dataclass
class Prepared:
    """The result of `prepare_frame`."""

    splits: dict[str, pd.DataFrame]
    labels: list[str]
    dropped: pd.DataFrame


def normalize_frame(frame: pd.DataFrame, params: PrepareParams) -> pd.DataFrame:
    """Normalise the text column (NFC, whitespace, optional lower-case)."""
    out = frame.copy()
    out[TEXT] = out[TEXT].map(lambda t: normalize_text(t, lowercase=params.lowercase))
    return out


def dedupe(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the first of each (text, label); return (kept, dropped-with-reason)."""
    dup = frame.duplicated(subset=[TEXT, LABEL], keep="first")
    dropped = frame[dup].assign(reason="duplicate after normalisation")
    return frame[~dup], dropped


def split_order(texts: pd.Series, seed: int) -> np.ndarray:
    """Positions of `texts` in a fixed pseudo-random order: each text's key is a hash of (seed, text),
    so a row's place relative to the others never depends on which other rows are there."""
    import hashlib

    keys = [hashlib.blake2b(f"{seed}\x00{t}".encode(), digest_size=8).digest() for t in texts.astype(str)]
    return np.argsort(np.array(keys, dtype="S8"), kind="stable")


def stratified_split(
    frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Split each class (and each origin within it) by the same fractions, deterministically for a seed.

    Within a group rows are ranked by `split_order` (a hash of seed and text), not by a random stream
    shared across groups: adding production rows (their own groups) or quarantining a few corpus rows
    then leaves nearly every corpus row in the split it had. With a shared stream one new group
    reshuffled every later class, the retrain's test split held rows the champion had trained on, and
    the gate judged the champion on its own training data (the loop demo's retrain was refused,
    "significantly worse", delta -0.04).

    Written out rather than taken from scikit-learn because `train_test_split(stratify=...)`
    refuses classes with fewer than two rows per split; here a small class keeps at least one
    training row and gets val/test rows only when it has enough.
    """
    parts: dict[str, list[int]] = {name: [] for name in SPLITS}
    # With an `origin` column (corpus / production rows, see tuneloop.retrain), each origin is split alike:
    # the test split holds out the same share of production traffic as of the corpus.
    keys = [LABEL, ORIGIN] if ORIGIN in frame.columns else [LABEL]
    for _, group in frame.groupby(keys, sort=True, dropna=False):
        order = group.index.to_numpy()[split_order(group[TEXT], seed)]
        n = len(order)
        n_test = min(round(n * test_fraction), max(n - 1, 0))
        n_val = min(round(n * val_fraction), max(n - 1 - n_test, 0))
        parts["test"] += order[:n_test].tolist()
        parts["val"] += order[n_test : n_test + n_val].tolist()
        parts["train"] += order[n_test + n_val :].tolist()
    # Sorted by source position: stable, diffable files; training shuffles anyway.
    return {name: frame.loc[sorted(idx)] for name, idx in parts.items()}


def label_list(frames: list[pd.DataFrame], known: list[str]) -> list[str]:
    """The label set: `data.labels` in its order when given (stable ids), else sorted labels seen."""
    seen = sorted({str(v) for f in frames for v in f[LABEL].unique()})
    if not known:
        return seen
    unknown = [label for label in seen if label not in known]
    if unknown:
        raise DataError(
            f"labels {unknown} are not in data.labels. Add them to data.labels in params.yaml "
            "or fix the rows (validation's unknown_label check catches this earlier)."
        )
    return list(known)


def prepare_frame(
    frame: pd.DataFrame,
    params: PrepareParams,
    seed: int,
    known_labels: list[str],
    test_frame: pd.DataFrame | None = None,
) -> Prepared:
    """Pure core: normalise, dedupe and split; with `test_frame` the test split is that file."""
    frame, dropped = dedupe(normalize_frame(frame, params))
    drops = [dropped]
    if test_frame is not None:
        test_frame, test_dupes = dedupe(normalize_frame(test_frame, params))
        drops.append(test_dupes.assign(reason="duplicate in the test file"))
        leak = frame[TEXT].isin(set(test_frame[TEXT]))
        drops.append(frame[leak].assign(reason="also in the test file (kept there only)"))
        frame = frame[~leak]
        splits = stratified_split(frame, params.val_fraction, 0.0, seed)
        splits["test"] = test_frame
    else:
        splits = stratified_split(frame, params.val_fraction, params.test_fraction, seed)
    labels = label_list(list(splits.values()), known_labels)
    unseen = sorted((set(splits["val"][LABEL]) | set(splits["test"][LABEL])) - set(splits["train"][LABEL]))
    if unseen:
        raise DataError(
            f"labels {unseen} appear in val/test but not in train. Add training rows for them "
            "or remove them from the test file."
        )
    return Prepared(splits=splits, labels=labels, dropped=pd.concat(drops).reset_index(drop=True))


def write_prepared(prepared: Prepared, out_dir: Path, metrics_path: Path | None = None) -> dict[str, int]:
    """Write splits, label map and dropped rows; return the row counts."""
    for name, split in prepared.splits.items():
        write_csv_atomic(split.reset_index(drop=True), out_dir / f"{name}.csv")
    write_csv_atomic(prepared.dropped, out_dir / "dropped.csv")
    label2id = {label: i for i, label in enumerate(prepared.labels)}
    write_text_atomic(
        json.dumps({"labels": prepared.labels, "label2id": label2id}, indent=2, ensure_ascii=False) + "\n",
        out_dir / "labels.json",
    )
    counts = {f"{name}_rows": len(split) for name, split in prepared.splits.items()}
    train = prepared.splits["train"]
    counts["augmented_rows"] = int((train[ORIGIN] == AUGMENTED).sum()) if ORIGIN in train.columns else 0
    counts["dropped_rows"] = len(prepared.dropped)
    counts["classes"] = len(prepared.labels)
    if metrics_path is not None:
        write_text_atomic(json.dumps(counts, indent=2) + "\n", metrics_path)
    return counts


def add_augmented(prepared: Prepared, params: Params) -> Prepared:
    """Append `prepare.augment`'s rows to the train split (seeded by base.seed); val and test never change."""
    aug = params.prepare.augment
    if not aug.methods:
        return prepared
    mlm = load_mlm(*mlm_choice(params)) if "contextual" in aug.methods else None
    held_out = {*prepared.splits["val"][TEXT], *prepared.splits["test"][TEXT]}  # never leak one into train
    train = augment(
        prepared.splits["train"], aug, params.base.seed, mlm=mlm, avoid=held_out, lowercase=params.prepare.lowercase
    )
    return replace(prepared, splits={**prepared.splits, "train": train})


def run(
    params: Params,
    input_path: Path = DEFAULT_INPUT,
    out_dir: Path = DEFAULT_OUT,
    metrics_path: Path | None = Path("reports/prepare.json"),
) -> dict[str, int]:
    """Entry point used by the CLI and DVC: read, prepare, write."""
    frame = read_table(input_path).frame
    test = read_table(params.prepare.test_path).frame if params.prepare.test_path else None
    prepared = prepare_frame(frame, params.prepare, params.base.seed, params.data.labels, test)
    prepared = add_augmented(prepared, params)
    counts = write_prepared(prepared, out_dir, metrics_path)
    log.info("prepared %s", counts)
    return counts
