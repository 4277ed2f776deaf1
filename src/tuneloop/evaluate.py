"""Evaluate stage: honest metrics for a model dir on any labeled file.

Writes into the output folder:
- metrics.json: the headline numbers: accuracy, macro-F1, weighted-F1, ROC-AUC (one-vs-rest, macro),
  log loss, expected calibration error (tuneloop.reports.EvalReport reads the folder back, typed);
- per_class.json: precision/recall/F1/support per class; served.json: the served variant's scores;
- slices.json: the same headline metrics per text-length bucket and per slice column value;
- behaviour.json: every behavioural test with its failures;
- baseline.json: a TF-IDF + linear classifier fitted on the training split, scored on the same rows
  (tuneloop.baseline; the gate's `beats_baseline` check);
- confusion.json + confusion.png, calibration.json + reliability.png: plot data for `dvc plots`
  and pictures for people;
- predictions.csv: text, label, predicted, confidence (plus any slice columns, then baseline_predicted)
  for error analysis.

The metric core (`classification_metrics`) is pure numpy/scikit-learn and tested against
scikit-learn on hand-made examples.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tuneloop.config import EvaluateParams, Params
from tuneloop.errors import DataError
from tuneloop.reports import REPORT_VERSION, BaselineMetrics, EvalReport, Headline, ServedMetrics
from tuneloop.tabular import LABEL, TEXT, read_labeled, write_csv_atomic, write_text_atomic
from tuneloop.text import swap_letters

if TYPE_CHECKING:
    from tuneloop.model import Classifier

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- metrics (pure)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> tuple[float, list[dict]]:
    """ECE over equal-width confidence bins, and the per-bin table behind the reliability diagram."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi) if lo > 0 else (confidence >= lo) & (confidence <= hi)
        n = int(in_bin.sum())
        if n == 0:
            continue
        acc, conf = float(correct[in_bin].mean()), float(confidence[in_bin].mean())
        ece += n / len(y_true) * abs(acc - conf)
        table.append(
            {
                "bin_low": round(float(lo), 4),
                "bin_high": round(float(hi), 4),
                "count": n,
                "accuracy": acc,
                "confidence": conf,
            }
        )
    return float(ece), table


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC-AUC over the classes that occur in `y_true` (None if fewer than two).

    Equal to scikit-learn's `roc_auc_score(multi_class="ovr", average="macro")` when every class
    occurs; unlike it, still defined when a test file lacks some classes.
    """
    from sklearn.metrics import roc_auc_score

    present = [k for k in np.unique(y_true) if 0 < (y_true == k).sum() < len(y_true)]
    if not present:  # one class only: nothing to rank against (else at least two are present)
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true == 1, probs[:, 1]))
    return float(np.mean([roc_auc_score(y_true == k, probs[:, k]) for k in present]))


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], ece_bins: int = 15
) -> dict[str, Any]:
    """Headline and per-class metrics from true label ids and predicted probabilities."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_recall_fscore_support

    y_pred = probs.argmax(axis=1)
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    present = [k for k in ids if support[k] > 0]  # macro over classes the data contains
    ece, _ = expected_calibration_error(y_true, probs, ece_bins)
    clipped = np.clip(probs, 1e-12, 1.0)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0)),
        "roc_auc_ovr": roc_auc_ovr(y_true, probs),
        "log_loss": float(log_loss(y_true, clipped / clipped.sum(axis=1, keepdims=True), labels=ids)),
        "ece": ece,
        "per_class": {
            labels[k]: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k in ids
        },
    }


def _headline(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def length_bucket(text: str, edges: list[int]) -> str:
    """The text-length slice a text falls into, by word count: '1-5', '6-12', ..., '26+'."""
    words, low = len(text.split()), 1
    for edge in edges:
        if words <= edge:
            return f"{low}-{edge} words"
        low = edge + 1
    return f"{low}+ words"


def slice_keys(frame: pd.DataFrame, params: EvaluateParams) -> dict[str, pd.Series]:
    """The slicing of a labeled frame: text-length bucket plus each slice column, as string keys.

    Slice columns are `evaluate.slice_columns`, or every extra column with at most
    `evaluate.max_slice_values` distinct values. Evaluate reports these slices; the gate judges them.
    """
    extra = [c for c in frame.columns if c not in (TEXT, LABEL)]
    columns = params.slice_columns or [c for c in extra if frame[c].nunique(dropna=True) <= params.max_slice_values]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"evaluate.slice_columns names {missing}, which the data does not have (columns: {extra}).")
    keys = {"length": frame[TEXT].map(lambda t: length_bucket(t, params.length_buckets))}
    keys.update({c: frame[c].fillna("(missing)").astype(str) for c in columns})
    return keys


def slice_metrics(
    frame: pd.DataFrame, y_true: np.ndarray, y_pred: np.ndarray, params: EvaluateParams
) -> dict[str, Any]:
    """Accuracy and macro-F1 per text-length bucket and per value of each slice column."""
    return {
        name: {str(value): _headline(y_true[idx], y_pred[idx]) for value, idx in key.groupby(key).indices.items()}
        for name, key in slice_keys(frame, params).items()
    }


# ---------------------------------------------------------------- behavioural tests


PERTURBATIONS = {
    "uppercase": lambda t, rng, cfg: t.upper(),
    "lowercase": lambda t, rng, cfg: t.lower(),
    "extra_whitespace": lambda t, rng, cfg: "  " + "  ".join(t.split()) + " ",
    "typo": lambda t, rng, cfg: swap_letters(t, rng),
    "neutral_suffix": lambda t, rng, cfg: t + rng.choice(cfg.get("neutral_suffixes") or [" thanks"]),
}


def load_behaviour(path: str | Path) -> dict[str, Any]:
    """Read and check a behavioural-test YAML file.

    Raises:
        DataError: the file is missing, not YAML, or not shaped as behaviour/demo.yaml is; the
            message names the file, the section and the fix.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: behavioural test file not found. Fix evaluate.behaviour_file or set it to null.")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: not valid YAML ({str(exc).strip()}). Fix the syntax (behaviour/demo.yaml shows the "
            "format) or set evaluate.behaviour_file to null."
        ) from None
    if not isinstance(spec, dict):
        raise DataError(f"{path}: the top level must be a mapping with invariance: and minimum_functionality:.")
    unknown = set(spec) - {"invariance", "minimum_functionality"}
    if unknown:
        raise DataError(
            f"{path}: unknown sections {sorted(map(str, unknown))}; allowed: invariance, minimum_functionality."
        )
    _check_invariance(path, spec.get("invariance") or {})
    spec["minimum_functionality"] = _checked_cases(path, spec.get("minimum_functionality") or [])
    return spec


def _check_invariance(path: Path, inv: Any) -> None:
    if not isinstance(inv, dict):
        raise DataError(f"{path}: invariance must be a mapping (sample:, perturbations:, neutral_suffixes:).")
    perturbations = inv.get("perturbations") or []
    if not isinstance(perturbations, list):
        raise DataError(f"{path}: invariance.perturbations must be a list, e.g. [uppercase, typo].")
    bad = [p for p in perturbations if not isinstance(p, str) or p not in PERTURBATIONS]
    if bad:
        raise DataError(f"{path}: unknown perturbations {bad}; allowed: {', '.join(PERTURBATIONS)}.")
    sample = inv.get("sample", 200)
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
        raise DataError(f"{path}: invariance.sample = {sample!r} must be a whole number of texts >= 0, e.g. 200.")
    suffixes = inv.get("neutral_suffixes") or []
    if not isinstance(suffixes, list) or not all(isinstance(x, str) for x in suffixes):
        raise DataError(f'{path}: invariance.neutral_suffixes must be a list of strings, e.g. [" thanks"].')


def _checked_cases(path: Path, cases: Any) -> list[dict[str, str]]:
    """minimum_functionality cases with text and label as strings (a YAML `label: 1` becomes "1")."""
    if not isinstance(cases, list):
        raise DataError(f"{path}: minimum_functionality must be a list of {{text: ..., label: ...}} cases.")
    checked = []
    for i, case in enumerate(cases, start=1):
        if not isinstance(case, dict) or not {"text", "label"} <= set(case):
            raise DataError(f"{path}: minimum_functionality case {i} needs 'text' and 'label'.")
        text, label = case["text"], case["label"]
        if not isinstance(text, str) or not text or isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(
                f"{path}: minimum_functionality case {i} needs a non-empty text and a label (quote a label "
                "YAML reads as a boolean, e.g. 'yes')."
            )
        checked.append({**case, "text": text, "label": str(label)})
    return checked


def run_behaviour(predict: Any, texts: list[str], labels: list[str], spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """Invariance and minimum-functionality tests; `predict(texts) -> label ids`."""
    rng = random.Random(seed)
    results: dict[str, Any] = {}
    inv = spec.get("invariance") or {}
    sample = texts[: int(inv.get("sample", 200))]
    if sample and inv.get("perturbations"):
        base = predict(sample)
        for name in inv["perturbations"]:
            changed = [PERTURBATIONS[name](t, rng, inv) for t in sample]
            after = predict(changed)
            fails = [
                {"text": o, "perturbed": c, "before": labels[b], "after": labels[a]}
                for o, c, b, a in zip(sample, changed, base, after)
                if a != b
            ]
            results[f"invariance_{name}"] = {
                "type": "invariance",
                "cases": len(sample),
                "pass_rate": 1 - len(fails) / len(sample),
                "failures": fails[:20],
            }
    mft = spec.get("minimum_functionality") or []
    known = [c for c in mft if c["label"] in labels]
    if known:
        predicted = predict([c["text"] for c in known])
        fails = [
            {"text": c["text"], "expected": c["label"], "predicted": labels[p]}
            for c, p in zip(known, predicted)
            if labels[p] != c["label"]
        ]
        results["minimum_functionality"] = {
            "type": "minimum_functionality",
            "cases": len(known),
            "skipped_unknown_label": len(mft) - len(known),
            "pass_rate": 1 - len(fails) / len(known),
            "failures": fails,
        }
    elif mft:
        results["minimum_functionality"] = {
            "type": "minimum_functionality",
            "cases": 0,
            "skipped_unknown_label": len(mft),
            "pass_rate": None,
            "failures": [],
        }
    return results


# ---------------------------------------------------------------- plots


def confusion_points(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> list[dict[str, str]]:
    """Rows in the shape of DVC's `confusion` plot template: one {actual, predicted} per example."""
    return [{"actual": labels[t], "predicted": labels[p]} for t, p in zip(y_true, y_pred)]


def _save_confusion_png(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(labels))))
    size = min(4 + 0.25 * len(labels), 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=max(4, 10 - len(labels) // 10))
    ax.set_yticks(range(len(labels)), labels, fontsize=max(4, 10 - len(labels) // 10))
    if len(labels) <= 20:
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if v > matrix.max() / 2 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_reliability_png(table: list[dict], ece: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar(
        [(r["bin_low"] + r["bin_high"]) / 2 for r in table],
        [r["accuracy"] for r in table],
        width=[r["bin_high"] - r["bin_low"] for r in table],
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([r["confidence"] for r in table], [r["accuracy"] for r in table], "o", color="darkred")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- entry point


def served_variant_metrics(
    clf: Classifier, texts: list[str], y_true: np.ndarray, probs: np.ndarray, params: Params
) -> dict[str, Any]:
    """Score the variant the service runs (`serve.backend`) on the same rows: its headline metrics,
    the share of rows where it predicts what the evaluated model does, and how far confidences move.

    ONNX backends are exported here, as registration exports them again (the export is deterministic:
    `variant_sha256` names the file that was judged, and the registry records the one it stores)."""
    import copy
    import dataclasses
    import tempfile

    from tuneloop.compress import build_variants, for_serving, recheck_margin
    from tuneloop.model import predict_proba

    if next(clf.model.parameters()).is_cuda:  # the service runs on CPU: judge that, not the GPU weights
        clf = dataclasses.replace(clf, model=copy.deepcopy(clf.model).cpu())
    with tempfile.TemporaryDirectory(prefix="tuneloop-variants-") as scratch:
        variants = build_variants(clf.path, params.serve.backend, Path(scratch))
        served_clf = for_serving(clf, params.serve.backend, variants, recheck_margin=params.serve.int8_recheck_margin)
        served = predict_proba(served_clf, texts, params.evaluate.batch_size)
    headline = classification_metrics(y_true, served, clf.labels, params.evaluate.ece_bins)
    return {
        "backend": served_clf.backend,
        "variant_sha256": served_clf.runner.sha256 if served_clf.runner is not None else None,
        "int8_recheck_margin": recheck_margin(served_clf),
        **{k: headline[k] for k in ("accuracy", "macro_f1", "ece")},
        "agreement": float((served.argmax(axis=1) == probs.argmax(axis=1)).mean()),
        "mean_confidence_shift": float(np.abs(served.max(axis=1) - probs.max(axis=1)).mean()),
    }


def _labeled_for(clf: Classifier, data_path: str | Path, model_dir: str | Path) -> pd.DataFrame:
    frame = read_labeled(data_path)
    unknown = sorted(set(frame[LABEL]) - set(clf.labels))
    if unknown:
        raise DataError(
            f"{data_path}: labels {unknown[:10]} are unknown to the model in {model_dir} "
            f"(it knows {len(clf.labels)}: {', '.join(clf.labels[:8])}...). Evaluate on data with "
            "the model's label set, or retrain with these labels."
        )
    return frame


def evaluate(
    params: Params,
    model_dir: str | Path,
    data_path: str | Path,
    out_dir: str | Path,
    behaviour_file: str | Path | None = None,
    train_path: str | Path | None = None,
) -> EvalReport:
    """Score `model_dir` on `data_path`, write every report into `out_dir` and return the typed report.

    `train_path` is the split the TF-IDF baseline is fitted on (default: the model's recorded training
    file, else train.csv beside `data_path`; with neither, no baseline is scored and the gate refuses)."""
    from tuneloop.model import load_classifier, predict_proba

    p = params.evaluate
    clf = load_classifier(model_dir)
    frame = _labeled_for(clf, data_path, model_dir)
    y_true = frame[LABEL].map({label: i for i, label in enumerate(clf.labels)}).to_numpy()
    texts = frame[TEXT].tolist()
    probs = predict_proba(clf, texts, p.batch_size)
    metrics = classification_metrics(y_true, probs, clf.labels, p.ece_bins)
    behaviour = _behaviour(clf, texts, params, behaviour_file)
    served = None
    if params.serve.backend != "torch":
        served = ServedMetrics(**served_variant_metrics(clf, texts, y_true, probs, params))
    baseline, baseline_pred = _baseline(frame, params, model_dir, data_path, train_path)
    headline = Headline(
        report_version=REPORT_VERSION,
        model=str(model_dir),
        data=str(data_path),
        **{k: metrics[k] for k in Headline.model_fields if k in metrics},
    )
    report = EvalReport(
        headline=headline,
        per_class=metrics["per_class"],
        served=served,
        baseline=baseline,
        behaviour={name: r["pass_rate"] for name, r in behaviour.items()},
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report.write(out, behaviour)
    _write_details(frame, y_true, probs, clf.labels, p, out, baseline_pred)
    m = report.headline
    log.info("evaluated %s on %s: accuracy %.4f, macro-F1 %.4f", model_dir, data_path, m.accuracy, m.macro_f1)
    return report


def _baseline(
    frame: pd.DataFrame, params: Params, model_dir: str | Path, data_path: str | Path, train_path: str | Path | None
) -> tuple[BaselineMetrics | None, np.ndarray | None]:
    """The TF-IDF + linear baseline fitted on the training split and scored on these rows (tuneloop.baseline)."""
    from sklearn.metrics import accuracy_score, f1_score

    from tuneloop.baseline import score_baseline, training_file

    source = training_file(model_dir, data_path, train_path)
    if source is None:
        log.warning("no training split found for %s: the baseline is not scored (pass --train)", model_dir)
        return None, None
    result = score_baseline(source, frame[TEXT].tolist(), params.evaluate.baseline, params.base.seed)
    y_true = frame[LABEL].to_numpy()
    present = sorted(set(y_true))  # macro over the classes the data holds, as for the model
    metrics = BaselineMetrics(
        analyzer=result.analyzer,
        train_path=result.train_path,
        train_rows=result.train_rows,
        fit_seconds=result.fit_seconds,
        accuracy=float(accuracy_score(y_true, result.predicted)),
        macro_f1=float(f1_score(y_true, result.predicted, labels=present, average="macro", zero_division=0)),
    )
    return metrics, result.predicted


def _behaviour(clf: Classifier, texts: list[str], params: Params, behaviour_file: str | Path | None) -> dict[str, Any]:
    """The behavioural tests of `behaviour_file` (default evaluate.behaviour_file; '' or null: none)."""
    from tuneloop.model import predict_proba

    path = behaviour_file if behaviour_file is not None else params.evaluate.behaviour_file
    if not path:
        return {}
    spec = load_behaviour(path)
    size = params.evaluate.batch_size
    return run_behaviour(
        lambda ts: predict_proba(clf, ts, size).argmax(axis=1), texts, clf.labels, spec, params.base.seed
    )


def _write_details(
    frame: pd.DataFrame,
    y_true: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    p: EvaluateParams,
    out: Path,
    baseline_pred: np.ndarray | None = None,
) -> None:
    """slices.json, plot data and pictures, predictions.csv."""
    y_pred = probs.argmax(axis=1)
    ece, calibration = expected_calibration_error(y_true, probs, p.ece_bins)
    write_text_atomic(json.dumps(slice_metrics(frame, y_true, y_pred, p), indent=2) + "\n", out / "slices.json")
    write_text_atomic(json.dumps(confusion_points(y_true, y_pred, labels)) + "\n", out / "confusion.json")
    write_text_atomic(json.dumps(calibration, indent=2) + "\n", out / "calibration.json")
    predictions = frame.assign(predicted=[labels[k] for k in y_pred], confidence=probs.max(axis=1).round(6))
    extra = [c for c in frame.columns if c not in (TEXT, LABEL)]
    if baseline_pred is not None:  # the gate's paired test against the baseline reads it
        predictions, extra = predictions.assign(baseline_predicted=baseline_pred), [*extra, "baseline_predicted"]
    write_csv_atomic(predictions[[TEXT, LABEL, "predicted", "confidence", *extra]], out / "predictions.csv")
    _save_confusion_png(y_true, y_pred, labels, out / "confusion.png")
    _save_reliability_png(calibration, ece, out / "reliability.png")
