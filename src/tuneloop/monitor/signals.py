"""Signals over one window of the prediction log against the model's reference, as Evidently 0.7
reports (explicit DataDefinition; every result looked up by its metric's id, never by position).

Per window: text descriptors, predicted labels, confidences and novelty are tested with
Evidently's `ValueDrift`; the embedding drift decision is Evidently's embedding drift method
itself (`ModelDriftMethod`: a domain classifier's held-out ROC AUC), called directly: Evidently's
`EmbeddingsDrift` metric runs the same method but always adds a t-SNE picture of up to 5,000
points, 10-20 s per run on this CPU even for 600 rows (measured), which would spend the 60 s budget
of a 100k-row window on a plot. Its score is in the verdict, not in the snapshot.

Novelty is the signal for "a share of the traffic is unlike anything in the reference": each
text's distance to its nearest reference embedding, flagged beyond the `novelty_quantile` of the
reference's own leave-one-out distances. A window with 10% new texts shows ~10% flags against ~1%
expected, which a two-proportion z-test sees in 200 rows where a whole-distribution test (KS on
lengths, a classifier on embeddings) still sees noise. The fine-tuned encoder is invariant to
what it learnt to ignore, though: new words and padded context barely move its embedding (measured:
10-15% of vocabulary-drifted texts beyond the cut, in any layer). `new_tokens` covers that: per
text, how many of its wordpiece tokens (numbers aside) never occur in the reference texts (for a
reference text: in the other reference texts). Undrifted demo traffic has ~0.15 per text, 12% of
texts at least one (typos); vocabulary and length drift put new tokens in every text.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.monitor.reference import DESCRIPTORS, EMBEDDING_PREFIX, text_descriptors, token_ids
from tuneloop.monitor.verdict import LabeledMetrics, SignalResult

if TYPE_CHECKING:
    import pandas as pd

    from tuneloop.config import MonitorParams

NUMERIC_TEST = "ks"  # Evidently's default for numerical columns under 1000 rows; p-value
COUNT_TEST = "t_test"  # new_tokens: a shift of the mean count, carried by a share of texts with several
CATEGORICAL_TEST = "chisquare"
BINARY_TEST = "z"  # two-proportion z-test: Evidently's choice for a binary category
NOVEL, USUAL = "novel", "usual"


@dataclass
class Features:
    """The columns every signal reads, for the reference or a window."""

    frame: pd.DataFrame  # descriptors (those computable), predicted, confidence, novelty
    embeddings: np.ndarray | None  # (rows with an embedding, dim) or None
    descriptors: tuple[str, ...]
    token_ids: list[list[int]] | None = None  # each text's wordpiece ids, when texts were logged


def reference_features(reference: pd.DataFrame) -> Features:
    """The reference's feature columns and embedding matrix."""
    columns = [c for c in reference.columns if c.startswith(EMBEDDING_PREFIX)]
    frame = reference[[*DESCRIPTORS, "predicted", "confidence"]].copy()
    return Features(frame, reference[columns].to_numpy(np.float32), DESCRIPTORS)


def window_features(window: pd.DataFrame, tokenizer: Any, dim: int) -> Features:
    """Descriptors from the logged texts (only `text_chars` when the log keeps hashes), and the
    logged embeddings decoded (rows logged without one are left out of the embedding signals)."""
    import pandas as pd

    has_text = bool(len(window)) and window["text"].notna().all()
    ids = token_ids(window["text"].astype(str).tolist(), tokenizer) if has_text else None
    if has_text:
        frame = text_descriptors(window["text"].astype(str).tolist(), tokenizer, ids)
    else:
        frame = pd.DataFrame({"text_chars": window["text_chars"].astype(int).to_numpy()})
    frame["predicted"] = window["predicted"].astype(str).to_numpy()
    frame["confidence"] = window["confidence"].astype(float).to_numpy()
    blobs = [b for b in window.get("embedding", pd.Series(dtype=object)) if b is not None and len(b) == 4 * dim]
    embeddings = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(-1, dim) if blobs else None
    return Features(frame, embeddings, DESCRIPTORS if has_text else ("text_chars",), ids)


def new_token_counts(
    reference_texts: list[str], texts: list[str] | None, tokenizer: Any, ids: list[list[int]] | None = None
) -> tuple[Any, Any]:
    """Per text, its non-numeric wordpiece tokens absent from the reference texts: for the reference
    (leave-one-out: absent from every other reference text) and for `texts` (None: no texts logged;
    `ids`: their token ids when already computed)."""
    from collections import Counter

    def tokens(rows: list[list[int]]) -> list[set[int]]:
        vocabulary = sorted({i for row in rows for i in row})
        pieces = tokenizer.convert_ids_to_tokens(vocabulary)
        numeric = {i for i, p in zip(vocabulary, pieces) if any(c.isdigit() for c in p)}
        return [set(row) - numeric for row in rows]

    ref = tokens(token_ids(reference_texts, tokenizer))
    seen = Counter(t for row in ref for t in row)
    ref_counts = np.array([sum(seen[t] == 1 for t in row) for row in ref], dtype=float)
    if texts is None:
        return ref_counts, None
    rows = tokens(token_ids(texts, tokenizer) if ids is None else ids)
    return ref_counts, np.array([sum(t not in seen for t in row) for row in rows], dtype=float)


def nearest_distances(reference: np.ndarray, current: np.ndarray, *, leave_one_out: bool = False) -> np.ndarray:
    """Cosine distance from each current row to its nearest reference row (unit vectors), in chunks."""
    out = np.empty(len(current), dtype=np.float32)
    for start in range(0, len(current), 4096):
        sims = current[start : start + 4096] @ reference.T
        if leave_one_out:  # the reference against itself: a row is not its own neighbour
            rows = np.arange(sims.shape[0])
            sims[rows, rows + start] = -np.inf
        out[start : start + 4096] = 1.0 - sims.max(axis=1)
    return out


def novelty_flags(ref: np.ndarray, cur: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Novel/usual per reference row (leave-one-out) and per window row, and the distance cut."""
    ref_dist = nearest_distances(ref, ref, leave_one_out=True)
    cut = float(np.quantile(ref_dist, quantile))
    flag = np.array([USUAL, NOVEL])
    return flag[(ref_dist > cut).astype(int)], flag[(nearest_distances(ref, cur) > cut).astype(int)], cut


def auc_threshold(n_ref: int, n_cur: int, alpha: float) -> float:
    """The ROC AUC a domain classifier exceeds by chance with probability alpha on its held-out half
    (Mann-Whitney normal approximation): Evidently's fixed 0.55 is a ~10% false alarm at 200 rows."""
    from scipy.stats import norm

    n1, n2 = max(n_ref // 2, 1), max(n_cur // 2, 1)
    return 0.5 + float(norm.ppf(1 - alpha)) * math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def embedding_signal(ref: np.ndarray, cur: np.ndarray, params: MonitorParams) -> SignalResult:
    """Evidently's embedding drift method over the window (sampled to max_embedding_rows)."""
    import pandas as pd
    from evidently.metrics.embeddings import MMDDriftMethod, ModelDriftMethod

    if len(cur) > params.max_embedding_rows:
        cur = cur[np.random.default_rng(0).choice(len(cur), params.max_embedding_rows, replace=False)]
    if params.embedding_method == "model":
        threshold, rule = auc_threshold(len(ref), len(cur), params.alpha), "value > threshold"
        method: Any = ModelDriftMethod(threshold=threshold)
    else:
        threshold, rule = 0.015, "value > threshold"  # Evidently's MMD default
        method = MMDDriftMethod(threshold=threshold)
    score, drifted, name = method(pd.DataFrame(cur), pd.DataFrame(ref))
    return SignalResult(
        name="embedding",
        method=f"evidently {name} drift",
        value=float(score),
        threshold=threshold,
        rule=rule,
        drifted=bool(drifted),
        counts=False,
        detail=f"{len(cur)} window rows vs {len(ref)} reference rows",
    )


def value_drift_metrics(features: Features, with_novelty: bool, alpha: float) -> dict[str, Any]:
    """One Evidently ValueDrift per signal column, keyed by signal name."""
    from evidently.metrics import ValueDrift

    metrics: dict[str, Any] = {
        c: ValueDrift(column=c, method=NUMERIC_TEST, threshold=alpha) for c in features.descriptors
    }
    if "new_tokens" in features.frame:
        metrics["new_tokens"] = ValueDrift(column="new_tokens", method=COUNT_TEST, threshold=alpha)
    metrics["predicted_label"] = ValueDrift(column="predicted", method=CATEGORICAL_TEST, threshold=alpha)
    metrics["confidence"] = ValueDrift(column="confidence", method=NUMERIC_TEST, threshold=alpha)
    if with_novelty:
        metrics["novelty"] = ValueDrift(column="novelty", method=BINARY_TEST, threshold=alpha)
    return metrics


def data_definition(descriptors: tuple[str, ...], with_novelty: bool, with_new_tokens: bool) -> Any:
    from evidently import DataDefinition

    return DataDefinition(
        numerical_columns=[*descriptors, *(["new_tokens"] if with_new_tokens else []), "confidence"],
        categorical_columns=["predicted", *(["novelty"] if with_novelty else [])],
    )


def distribution_signals(
    reference: Features, window: Features, params: MonitorParams, extra: list[Any] | None = None
) -> tuple[Any, list[SignalResult]]:
    """Run the drift report (window vs reference) and read each ValueDrift by its metric id."""
    from evidently import Dataset, Report

    with_novelty = "novelty" in window.frame
    metrics = value_drift_metrics(window, with_novelty, params.alpha)
    definition = data_definition(window.descriptors, with_novelty, "new_tokens" in window.frame)
    columns = list(definition.numerical_columns or []) + list(definition.categorical_columns or [])
    current = Dataset.from_pandas(window.frame[columns], data_definition=definition)
    ref = Dataset.from_pandas(reference.frame[columns], data_definition=definition)
    snapshot = Report([*metrics.values(), *(extra or [])]).run(current, ref)
    results = []
    for name, metric in metrics.items():
        p_value = float(snapshot.metric_results[metric.metric_id].value)
        results.append(
            SignalResult(
                name=name,
                method=f"evidently ValueDrift {metric.method}",
                value=None if math.isnan(p_value) else p_value,
                threshold=params.alpha,
                rule="value < threshold",
                drifted=p_value < params.alpha,  # NaN (one value on both sides: nothing to compare) is False
                counts=False,
                detail="one value on both sides" if math.isnan(p_value) else "",
            )
        )
    return snapshot, results


def labeled_metrics(window: pd.DataFrame) -> tuple[Any, LabeledMetrics]:
    """Accuracy, macro-F1 and per-class recall on the rows with feedback labels (Evidently report)."""
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.metrics import Accuracy, F1Score, RecallByLabel

    rows = window[window["true_label"].notna()]
    if rows.empty:
        return None, LabeledMetrics(rows=0)
    frame = rows[["true_label", "predicted"]].astype(str).reset_index(drop=True)
    definition = DataDefinition(
        categorical_columns=["true_label", "predicted"],
        classification=[MulticlassClassification(target="true_label", prediction_labels="predicted")],
    )
    accuracy, f1, recall = Accuracy(), F1Score(), RecallByLabel()
    snapshot = Report([accuracy, f1, recall]).run(Dataset.from_pandas(frame, data_definition=definition), None)
    by_label = snapshot.metric_results[recall.metric_id].values
    return snapshot, LabeledMetrics(
        rows=len(frame),
        accuracy=float(snapshot.metric_results[accuracy.metric_id].value),
        macro_f1=float(snapshot.metric_results[f1.metric_id].value),
        per_class_recall={str(k): float(v.value) for k, v in by_label.items()},
    )


def parse_top_k(values: pd.Series) -> list[Any]:
    """Logged top-k lists (JSON from SQL, or JSON strings in a reference file)."""
    return [json.loads(v) if isinstance(v, str) else v for v in values]
