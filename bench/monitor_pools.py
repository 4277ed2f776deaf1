"""Shared by the monitoring benches: the champion's reference and pools of scored traffic.

Scores each pool once with the served variant (the --backend a bench names, with params.yaml's
serve.int8_recheck_margin as the service runs it; one forward pass gives the probabilities and the
projected embedding, as the service logs them) and caches the result in
build/bench-pools/ (keyed by model folder and pool), so the benches sample windows without
re-running the model. A window is a DataFrame shaped like `tuneloop.predlog.read_window`'s.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from tuneloop.config import load_params
from tuneloop.demo import generate
from tuneloop.monitor.reference import build_reference, top_k_lists
from tuneloop.monitor.simulate import new_intent_rows

CACHE = Path("build/bench-pools")
REPO = Path(__file__).resolve().parents[1]
MARGIN = load_params(REPO / "params.yaml").serve.int8_recheck_margin  # onnx-int8's recheck, as served
POOLS = {  # name -> (rows, seed, demo drift kind); seeds differ from the demo corpus's 42
    "none": (4000, 101, "none"),
    "vocabulary": (3000, 102, "vocabulary"),
    "length": (3000, 103, "length"),
    "label-mix": (3000, 104, "label-mix"),
    "new-intents": (2000, 105, "new-intents"),
}


def pool_rows(name: str) -> pd.DataFrame:
    rows, seed, kind = POOLS[name]
    if kind == "new-intents":
        return new_intent_rows(rows, seed)
    return generate(rows, seed=seed, drift=kind)[["text", "label"]]  # type: ignore[arg-type]


def scored_pool(model_dir: Path, name: str, backend: str) -> pd.DataFrame:
    """The pool's texts and labels with predicted, confidence, top_k and embedding (cached)."""
    from tuneloop.compress import for_serving
    from tuneloop.model import load_classifier, predict_with_embedding

    key = hashlib.sha256(f"{model_dir.resolve()}|{name}|{backend}|{MARGIN}|{POOLS[name]}".encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{key}.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    frame = pool_rows(name).reset_index(drop=True)
    clf = for_serving(load_classifier(model_dir), backend, recheck_margin=MARGIN)
    probs, embeddings = predict_with_embedding(clf, frame["text"].tolist())
    tops = top_k_lists(probs, clf.labels)
    frame["predicted"] = [t[0]["label"] for t in tops]
    frame["confidence"] = probs.max(axis=1)
    frame["top_k"] = [json.dumps(t) for t in tops]
    frame["embedding"] = [e.astype("<f4").tobytes() for e in embeddings]
    CACHE.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return frame


def scored_pool_rows(model_dir: Path, name: str, backend: str, rows: int, seed: int) -> pd.DataFrame:
    """A fresh pool (another size and seed) of kind `name`, scored (cached like the others)."""
    POOLS[f"{name}-{rows}-{seed}"] = (rows, seed, POOLS[name][2])
    return scored_pool(model_dir, f"{name}-{rows}-{seed}", backend)


def reference(model_dir: Path, data: list[Path], backend: str, corpus: Path | None = None) -> pd.DataFrame:
    """The champion's reference from its held-out files (val + test), as registration builds it (with the raw
    corpus' rows per label when `corpus` is given, as the pipeline registers it)."""
    from tuneloop.monitor.label_mix import corpus_label_counts
    from tuneloop.tabular import read_labeled

    frame = pd.concat([read_labeled(p) for p in data], ignore_index=True)
    counts = corpus_label_counts(corpus) if corpus else None
    return build_reference(model_dir, frame, backend=backend, recheck_margin=MARGIN, corpus_labels=counts)


def window(base: pd.DataFrame, drifted: pd.DataFrame | None, size: int, share: float, rng: np.random.Generator):
    """`size` rows: `share` of them from `drifted`, the rest from `base`, shuffled, as read_window returns."""
    n_drift = 0 if drifted is None else round(size * share)
    parts = [base.iloc[rng.choice(len(base), size - n_drift, replace=False)]]
    if n_drift:
        parts.append(drifted.iloc[rng.choice(len(drifted), n_drift, replace=False)])  # type: ignore[union-attr]
    frame = pd.concat(parts).sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)
    return as_log_window(frame)


def as_log_window(frame: pd.DataFrame, labeled: bool = False) -> pd.DataFrame:
    start = datetime(2026, 11, 29, tzinfo=UTC)
    return pd.DataFrame(
        {
            "created_at": [start + timedelta(seconds=i) for i in range(len(frame))],
            "text": frame["text"].to_numpy(),
            "text_chars": frame["text"].str.len().to_numpy(),
            "predicted": frame["predicted"].to_numpy(),
            "confidence": frame["confidence"].to_numpy(),
            "top_k": [json.loads(t) for t in frame["top_k"]],
            "embedding": frame["embedding"].to_numpy(),
            "true_label": frame["label"].to_numpy() if labeled else [None] * len(frame),
            "label": frame["label"].to_numpy(),
        }
    )


def demo_champion():
    """params.yaml and its task's champion (after `make demo`); exits with the fix when there is none."""
    from tuneloop import registry
    from tuneloop.config import load_params

    params = load_params(REPO / "params.yaml")
    champion = registry.champion(params.task.name)
    if champion is None:
        raise SystemExit("no champion: run `make demo` first")
    return params, champion
