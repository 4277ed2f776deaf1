"""The reference a model is monitored against, built once when it is registered.

One row per held-out text (validation + test): the text descriptors, true and predicted labels,
raw and calibrated confidences, the top-k scores and the projected embedding from the model's own
encoder (`tuneloop.model.predict_with_embedding`, the same projection the service logs). The
calibration, the settings it was built with and (registered by the pipeline) the raw corpus' rows per
label travel in the Parquet file's metadata, so the file alone is enough to
monitor against; the registry keeps it content-hashed in the model's entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.monitor import MonitorError
from tuneloop.monitor.estimate import fit_calibration
from tuneloop.monitor.label_mix import CORPUS_LABELS
from tuneloop.registry import REFERENCE_FILE  # the registry owns the file name

if TYPE_CHECKING:
    import pandas as pd

REFERENCE_VERSION = 1
DESCRIPTORS = ("text_chars", "word_count", "unk_rate", "non_letter_share")
EMBEDDING_PREFIX = "emb_"


def token_ids(texts: list[str], tokenizer: Any) -> list[list[int]]:
    """Wordpiece ids of each whole text (no special tokens, no truncation): tokenised once per run."""
    return tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"] if texts else []


def text_descriptors(texts: list[str], tokenizer: Any, ids: list[list[int]] | None = None) -> pd.DataFrame:
    """Per text: characters, words, share of [UNK] tokens (characters outside the tokenizer's
    alphabet: emoji, scripts it never saw) and share of characters that are neither letters nor spaces."""
    import pandas as pd

    ids = token_ids(texts, tokenizer) if ids is None else ids
    unk = tokenizer.unk_token_id
    return pd.DataFrame(
        {
            "text_chars": [len(t) for t in texts],
            "word_count": [len(t.split()) for t in texts],
            "unk_rate": [sum(i == unk for i in row) / len(row) if row else 0.0 for row in ids],
            "non_letter_share": [_non_letter_share(t) for t in texts],
        }
    )


def _non_letter_share(text: str) -> float:
    if not text:
        return 0.0
    return sum(not (c.isalpha() or c.isspace()) for c in text) / len(text)


def top_k_lists(probs: np.ndarray, labels: list[str], k: int = 3) -> list[list[dict[str, Any]]]:
    """Each row's k best labels with scores, as the service logs them."""
    best = np.argsort(-probs, axis=1)[:, :k]
    return [[{"label": labels[j], "score": float(row[j])} for j in top] for row, top in zip(probs, best)]


def embedding_columns(dim: int) -> list[str]:
    return [f"{EMBEDDING_PREFIX}{i}" for i in range(dim)]


def build_reference(
    model_dir: str | Path,
    frame: pd.DataFrame,
    *,
    text_col: str = "text",
    label_col: str = "label",
    backend: str = "torch-int8",
    variants: Path | None = None,
    batch_size: int = 64,
    recheck_margin: float = 0.0,
    corpus_labels: dict[str, int] | None = None,
) -> pd.DataFrame:
    """The monitoring reference for the model in `model_dir`, from labeled held-out rows.

    `backend` and `recheck_margin` must be what the service runs (`serve.backend`, `serve.int8_recheck_margin`;
    ONNX variants read from `variants`, else the model dir's `onnx/`): the reference's confidences and
    embeddings then come from the same variant as production's, so they compare like for like.
    `corpus_labels`: rows per label of the raw corpus the rows were prepared from (`label_mix.corpus_label_counts`),
    kept in the metadata so the predicted-label test expects the corpus' mix (tuneloop.monitor.label_mix); None
    for held-out rows of any other origin.
    """
    from tuneloop.compress import for_serving
    from tuneloop.model import load_classifier, predict_with_embedding

    if frame.empty or text_col not in frame or label_col not in frame:
        raise MonitorError(f"reference needs labeled rows with columns {text_col!r} and {label_col!r}")
    clf = for_serving(load_classifier(model_dir), backend, variants, recheck_margin=recheck_margin)
    texts = frame[text_col].astype(str).tolist()
    probs, embeddings = predict_with_embedding(clf, texts, batch_size=batch_size)
    labels = frame[label_col].astype(str).tolist()
    return reference_frame(texts, labels, probs, embeddings, clf, clf.backend, corpus_labels)


def reference_frame(
    texts: list[str],
    labels: list[str],
    probs: np.ndarray,
    embeddings: np.ndarray,
    clf: Any,
    backend: str,
    corpus_labels: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Assemble the reference rows and fit the calibration on them (pure; see `build_reference`)."""
    import pandas as pd

    predicted = [clf.labels[i] for i in probs.argmax(axis=1)]
    confidence = probs.max(axis=1)
    correct = np.array([p == t for p, t in zip(predicted, labels)])
    calibration = fit_calibration(confidence, correct)
    frame = text_descriptors(texts, clf.tokenizer)
    frame.insert(0, "text", texts)
    frame["true_label"] = labels
    frame["predicted"] = predicted
    frame["confidence"] = confidence
    frame["calibrated_confidence"] = calibration(confidence)
    frame["top_k"] = [json.dumps(row) for row in top_k_lists(probs, clf.labels)]
    frame = pd.concat([frame, pd.DataFrame(embeddings, columns=embedding_columns(embeddings.shape[1]))], axis=1)
    frame.attrs["tuneloop_reference"] = {
        "version": REFERENCE_VERSION,
        "labels": list(clf.labels),
        "calibration": calibration.to_dict(),
        "backend": backend,
        "embedding_dim": int(embeddings.shape[1]),
        "rows": len(texts),
        "accuracy": float(correct.mean()),
    }
    if corpus_labels is not None:
        frame.attrs["tuneloop_reference"][CORPUS_LABELS] = dict(corpus_labels)
    return frame


def write_reference(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the reference as Parquet (its settings in the file's metadata), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)  # pandas keeps DataFrame.attrs in the Parquet metadata
    tmp.replace(path)
    return path


def read_reference(path: str | Path) -> pd.DataFrame:
    """Read a reference written by `write_reference`.

    Raises:
        MonitorError: the file is missing or is not a tuneloop reference.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MonitorError(
            f"{path}: no monitoring reference. Register the model with one "
            "(`tuneloop monitor reference MODEL_DIR --data VAL_TEST.csv`) or re-register it."
        )
    frame = pd.read_parquet(path)
    if "tuneloop_reference" not in frame.attrs:
        raise MonitorError(f"{path}: not a tuneloop monitoring reference (no settings in its metadata)")
    return frame


def reference_for(tag: str) -> pd.DataFrame:
    """The reference stored with registry entry `tag`, its SHA-256 checked against the metadata.

    Raises:
        MonitorError: the entry has no reference, or the file differs from the one registered.
    """
    from tuneloop import registry
    from tuneloop.provenance import file_digest

    entry = registry.get(tag)
    path = entry.path / REFERENCE_FILE
    expected = entry.metadata.get("reference_sha256")
    if not expected or not path.is_file():
        raise MonitorError(
            f"model {entry.tag} has no monitoring reference: it was registered without one. Re-register it "
            "with `tuneloop models register MODEL_DIR --reference FILE` (or `tuneloop monitor reference`)."
        )
    if file_digest(path) != expected:
        raise MonitorError(f"model {entry.tag}: {path} differs from the reference registered (SHA-256 mismatch)")
    return read_reference(path)
