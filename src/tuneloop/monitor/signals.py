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

import functools
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.monitor.label_mix import LabelMix, expected_label_mix
from tuneloop.monitor.reference import DESCRIPTORS, EMBEDDING_PREFIX, text_descriptors, token_ids
from tuneloop.monitor.verdict import LabeledMetrics, SignalResult

if TYPE_CHECKING:
    import pandas as pd

    from tuneloop.config import MonitorParams

NUMERIC_TEST = "ks"  # Evidently's default for numerical columns under 1000 rows; p-value
COUNT_TEST = "t_test"  # new_tokens: a shift of the mean count, carried by a share of texts with several
# predicted_label: Pearson's chi-square test of homogeneity on the 2 x K table (reference, window) x label,
# registered with Evidently as a stattest (`_register_label_test`). Evidently's own `chisquare` is a goodness-of-fit
# test that takes the reference's label shares as exact, though a reference of a few hundred rows is a sample too
# (a label the window has and the reference lacks gives p = 0). Undrifted 200-row windows, 360-row references
# (bench/label_test.py): at alpha 0.001 it flagged 5.5% with 10 labels and 93.5% with 77; this test at 0.02
# 1.5% and 1.0% (tests/monitor/test_signals.py holds the 77-label case). It judges references built without the
# raw corpus' label counts; one registered with them is judged against the mix those imply
# (tuneloop.monitor.label_mix: the expected-mix test, registered per mix as EXPECTED_MIX_TEST + its digest).
CATEGORICAL_TEST = "chi2_two_sample"
EXPECTED_MIX_TEST = "chi2_expected_mix"
BINARY_TEST = "z"  # two-proportion z-test: Evidently's choice for a binary category
NOVEL, USUAL = "novel", "usual"


@dataclass
class Features:
    """The columns every signal reads, for the reference or a window."""

    frame: pd.DataFrame  # descriptors (those computable), predicted, confidence, novelty
    embeddings: np.ndarray | None  # (rows with an embedding, dim) or None
    descriptors: tuple[str, ...]
    token_ids: list[list[int]] | None = None  # each text's wordpiece ids, when texts were logged
    label_mix: LabelMix | None = None  # the reference's expected predicted-label mix, when it has one


def reference_features(reference: pd.DataFrame) -> Features:
    """The reference's feature columns, embedding matrix and expected label mix."""
    columns = [c for c in reference.columns if c.startswith(EMBEDDING_PREFIX)]
    frame = reference[[*DESCRIPTORS, "predicted", "confidence"]].copy()
    embeddings = reference[columns].to_numpy(np.float32)
    return Features(frame, embeddings, DESCRIPTORS, label_mix=expected_label_mix(reference))


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


def token_sets(rows: list[list[int]], tokenizer: Any) -> list[set[int]]:
    """Each text's distinct wordpiece ids, numeric pieces left out (reference numbers, amounts, dates)."""
    vocabulary = sorted({i for row in rows for i in row})
    pieces = tokenizer.convert_ids_to_tokens(vocabulary)
    numeric = {i for i, p in zip(vocabulary, pieces) if any(c.isdigit() for c in p)}
    return [set(row) - numeric for row in rows]


def new_token_counts(ref: list[set[int]], rows: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per text, its tokens absent from the reference texts: for the reference (leave-one-out: absent from
    every other reference text) and for the window's `rows`."""
    from collections import Counter

    seen = Counter(t for row in ref for t in row)
    ref_counts = np.array([sum(seen[t] == 1 for t in row) for row in ref], dtype=float)
    return ref_counts, np.array([sum(t not in seen for t in row) for row in rows], dtype=float)


PERMUTATIONS = 1999  # token_shift's Monte Carlo p-value resolves 1/2000, finer than its threshold
MAX_TOKEN_ROWS = 2000  # window texts sampled for token_shift (as max_embedding_rows for the embedding test)


def recurring_new(cur: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per token (last axis): True when no reference text contains it and at least two window texts do
    (a word that recurs, unlike a typo)."""
    return (ref == 0) & (cur >= 2)


def _sample(texts: list[set[int]], at_most: int, rng: np.random.Generator) -> list[set[int]]:
    return texts if len(texts) <= at_most else [texts[i] for i in rng.choice(len(texts), at_most, replace=False)]


def _null(pooled: Any, total: np.ndarray, n_cur: int, n_ref: int, rng: np.random.Generator) -> np.ndarray:
    """The statistic of PERMUTATIONS random re-splits of the pooled texts (`total`: each token's count of
    texts; sparse products per chunk of 500: memory stays ~30 MB at 2,000 + 2,000 texts)."""
    stats = []
    for start in range(0, PERMUTATIONS, 500):
        splits = np.argsort(rng.random((min(500, PERMUTATIONS - start), n_ref + n_cur)), axis=1) < n_cur
        cur = np.asarray((pooled.T @ splits.T.astype(np.float32)).T)  # (permutations, tokens) window counts
        hits = pooled @ recurring_new(cur, total - cur).T.astype(np.float32)  # (texts, permutations)
        stats.append(((hits > 0) & splits.T).sum(axis=0))
    return np.concatenate(stats)


def _pooled(ref: list[set[int]], rows: list[set[int]]) -> tuple[Any, list[int]]:
    """Texts x tokens 0/1 matrix (reference rows first) and the token id of each column."""
    from scipy import sparse

    tokens = sorted({t for row in ref + rows for t in row})
    column = {t: i for i, t in enumerate(tokens)}
    cols = [column[t] for row in ref + rows for t in row]
    indptr = np.cumsum([0, *(len(row) for row in ref + rows)])
    return sparse.csr_matrix((np.ones(len(cols)), cols, indptr), shape=(len(ref) + len(rows), len(tokens))), tokens


def token_shift_signal(
    ref: list[set[int]], rows: list[set[int]], params: MonitorParams, tokenizer: Any
) -> SignalResult:
    """Words that a share of the window's texts use far more often than the reference's texts do.

    Statistic: how many window texts contain a `recurring_new` word (wordpiece, numbers aside): one no
    reference text has and 2+ window texts share (texts, not occurrences: words of one template move
    together, and counting each of them made the null's tail heavy). Null: the window and the reference are
    two samples of one population, so texts are exchangeable between them; the p-value is a permutation
    test (PERMUTATIONS random re-splits of the pooled texts). It counts when the p-value is under
    monitor.token_shift_alpha and the share of such texts, beyond what re-splitting alone gives (the permutations'
    median), reaches `min_token_share_gain`: an effect size, so a huge window does not
    flag a shift no one would act on. Over-represented words the reference does have were tried too
    (a chi-square-like sum): the generator's own template frequencies then made it noisier, at less power.

    Why: drifted vocabulary recurs (10% of texts saying "TurboPay", "crypto wallet", "ngl") while typos
    are each new once; `new_tokens`' t-test on per-text counts mixes the two and flagged 0% of 200-row
    windows at 10% drifted rows (p ~ 0.005 at alpha 0.001); one Fisher test per token, Bonferroni-corrected,
    missed such windows too, because the new words split the drifted texts between them (measured,
    bench/drift_power.py). Evidently has no token-level test: its text drift is a domain classifier
    (30% of such windows, per the issue's baseline).
    """
    rng = np.random.default_rng(0)
    ref, rows = (_sample(texts, MAX_TOKEN_ROWS, rng) for texts in (ref, rows))
    n_ref, n_cur = len(ref), len(rows)
    pooled, tokens = _pooled(ref, rows)
    total = np.asarray(pooled.sum(axis=0)).ravel()
    cur = np.asarray(pooled[n_ref:].sum(axis=0)).ravel()
    new = recurring_new(cur, total - cur)
    observed = int((pooled[n_ref:] @ new.astype(np.float32) > 0).sum())
    null = _null(pooled, total, n_cur, n_ref, rng)
    p_value = float((1 + (null >= observed).sum()) / (1 + PERMUTATIONS))
    effect = float((observed - np.median(null)) / max(n_cur, 1))  # beyond what re-splitting alone gives
    top = [t for t in np.argsort(-np.where(new, cur, 0))[:5] if new[t]]
    words = tokenizer.convert_ids_to_tokens([tokens[t] for t in top])
    shares = [f"{w} ({cur[t] / n_cur:.1%})" for w, t in zip(words, top)]
    gain = params.min_token_share_gain
    return SignalResult(
        name="token_shift",
        method=f"permutation test ({PERMUTATIONS}) of recurring tokens new to the reference",
        value=p_value,
        threshold=params.token_shift_alpha,
        rule=f"value < threshold and excess >= {gain}",
        drifted=p_value < params.token_shift_alpha and effect >= gain,
        counts=False,
        detail=f"{observed} texts with recurring new words, {effect:.1%} of the window beyond noise "
        f"(floor {gain:.1%}); " + ("most frequent: " + ", ".join(shares) if shares else "none"),
    )


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
    judged = math.isfinite(score)  # a window of a row or two leaves the classifier's held-out half one class
    return SignalResult(
        name="embedding",
        method=f"evidently {name} drift",
        value=float(score) if judged else None,
        threshold=threshold,
        rule=rule,
        drifted=bool(drifted) and judged,
        counts=False,
        detail=f"{len(cur)} window rows vs {len(ref)} reference rows" + ("" if judged else ": too few to judge"),
    )


def label_homogeneity(reference: pd.Series, current: pd.Series) -> float:
    """p-value of Pearson's chi-square test that two samples of labels come from one distribution (no continuity
    correction; 1.0 when both hold one and the same label)."""
    return _homogeneity(reference.value_counts(), current)


def label_mix_fit(mix: LabelMix, current: pd.Series) -> float:
    """p-value of the same test with the expected mix as the reference side, at the rows it is worth."""
    import pandas as pd

    return _homogeneity(pd.Series(mix.as_dict()) * mix.rows, current)


def _homogeneity(reference_counts: pd.Series, current: pd.Series) -> float:
    import pandas as pd
    from scipy.stats import chi2_contingency

    table = pd.concat([reference_counts, current.value_counts()], axis=1).fillna(0).to_numpy(float).T
    table = table[:, table.sum(axis=0) > 0]
    return float(chi2_contingency(table, correction=False).pvalue)


def label_distance(reference: pd.Series, current: pd.Series) -> float:
    """Total variation distance between two samples' label shares (0: the same shares, 1: no label in common)."""
    return _distance(reference.value_counts(normalize=True), current)


def _distance(reference_shares: pd.Series, current: pd.Series) -> float:
    shares = current.value_counts(normalize=True).sub(reference_shares, fill_value=0)
    return float(shares.abs().sum() / 2)


@functools.cache
def _register_label_test(mix: LabelMix | None = None) -> str:
    """Register the label test as a stattest Evidently's ValueDrift finds by name (its registry; once per process
    and mix) and return the name: the two-sample test, or the expected-mix test of one reference."""
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    def test(reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float) -> tuple[float, bool]:
        p_value = label_homogeneity(reference, current) if mix is None else label_mix_fit(mix, current)
        return p_value, p_value < threshold

    name, display = (
        (CATEGORICAL_TEST, "chi-square test of homogeneity (two samples) p_value")
        if mix is None
        else (f"{EXPECTED_MIX_TEST}_{mix.key()}", f"chi-square test against the {mix.describe()} p_value")
    )
    stattest = StatTest(name=name, display_name=display, allowed_feature_types=[ColumnType.Categorical])
    register_stattest(stattest, default_impl=test)
    return name


def value_drift_metrics(
    features: Features, with_novelty: bool, params: MonitorParams, label_mix: LabelMix | None = None
) -> dict[str, Any]:
    """One Evidently ValueDrift per signal column, keyed by signal name; each flags under its own threshold
    (`monitor.alpha`, `monitor.label_shift_alpha` for predicted_label, against `label_mix` when given)."""
    from evidently.metrics import ValueDrift

    label_test = _register_label_test(label_mix)
    alpha = params.alpha

    metrics: dict[str, Any] = {
        c: ValueDrift(column=c, method=NUMERIC_TEST, threshold=alpha) for c in features.descriptors
    }
    if "new_tokens" in features.frame:
        metrics["new_tokens"] = ValueDrift(column="new_tokens", method=COUNT_TEST, threshold=alpha)
    metrics["predicted_label"] = ValueDrift(column="predicted", method=label_test, threshold=params.label_shift_alpha)
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
    metrics = value_drift_metrics(window, with_novelty, params, reference.label_mix)
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
                threshold=metric.threshold,
                rule="value < threshold",
                drifted=p_value < metric.threshold,  # NaN (one value on both sides: nothing to compare) is False
                counts=False,
                detail="one value on both sides" if math.isnan(p_value) else "",
            )
        )
    return snapshot, [_label_shift_floor(r, reference, window, params) for r in results]


def _label_shift_floor(
    result: SignalResult, reference: Features, window: Features, params: MonitorParams
) -> SignalResult:
    """predicted_label drifts only when the chi-square says so *and* the distributions are at least
    `min_label_shift` apart (total variation distance): with 1000+ rows the test sees differences no one
    would retrain for, such as the reference (deduplicated data) against traffic that repeats itself."""
    if result.name != "predicted_label":
        return result
    mix, current = reference.label_mix, window.frame["predicted"]
    if mix is None:
        distance, against = label_distance(reference.frame["predicted"], current), "the reference's predicted labels"
    else:
        import pandas as pd

        distance, against = _distance(pd.Series(mix.as_dict()), current), mix.describe()
    floor = params.min_label_shift
    return result.model_copy(
        update={
            "method": "evidently ValueDrift " + (CATEGORICAL_TEST if mix is None else EXPECTED_MIX_TEST),
            "rule": f"value < threshold and total variation >= {floor}",
            "drifted": result.drifted and distance >= floor,
            "detail": f"total variation distance {distance:.3f} (floor {floor}) from {against}",
        }
    )


def labeled_metrics(window: pd.DataFrame) -> tuple[Any, LabeledMetrics]:
    """Accuracy, macro-F1 and per-class recall on the rows with feedback labels (Evidently report).

    Evidently 0.7 takes any data with exactly two labels (true and predicted together) for a binary task and then
    looks up its positive label, 1 unless told: string labels raised KeyError, so every window of a two-class
    model (sentiment, spam) with feedback, and a many-class window whose few labeled rows held two labels, failed.
    Such data is declared binary with a positive label of its own; F1 and recall are read per label, so both task
    kinds give the same numbers (scikit-learn's: macro-F1 over the labels seen, true or predicted; a label never
    true has F1 and recall 0, which Evidently's binary task leaves out)."""
    from evidently import BinaryClassification, DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.metrics import Accuracy, F1ByLabel, RecallByLabel

    rows = window[window["true_label"].notna()]
    if rows.empty:
        return None, LabeledMetrics(rows=0)
    frame = rows[["true_label", "predicted"]].astype(str).reset_index(drop=True)
    labels = sorted(set(frame["true_label"]) | set(frame["predicted"]))
    columns = {"target": "true_label", "prediction_labels": "predicted"}
    task = (
        BinaryClassification(**columns, pos_label=labels[1])
        if len(labels) == 2
        else MulticlassClassification(**columns)
    )
    definition = DataDefinition(categorical_columns=["true_label", "predicted"], classification=[task])
    accuracy, f1, recall = Accuracy(), F1ByLabel(), RecallByLabel()
    snapshot = Report([accuracy, f1, recall]).run(Dataset.from_pandas(frame, data_definition=definition), None)
    by_label = {str(k): float(v.value) for k, v in snapshot.metric_results[f1.metric_id].values.items()}
    recalls = {str(k): float(v.value) for k, v in snapshot.metric_results[recall.metric_id].values.items()}
    return snapshot, LabeledMetrics(
        rows=len(frame),
        accuracy=float(snapshot.metric_results[accuracy.metric_id].value),
        macro_f1=sum(by_label.get(label, 0.0) for label in labels) / len(labels),
        per_class_recall={label: recalls.get(label, 0.0) for label in labels},
    )


def parse_top_k(values: pd.Series) -> list[Any]:
    """Logged top-k lists (JSON from SQL, or JSON strings in a reference file)."""
    return [json.loads(v) if isinstance(v, str) else v for v in values]
