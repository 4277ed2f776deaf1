"""Gate: decide whether a challenger model may replace the champion.

A challenger passes only if
1. every absolute floor holds (macro-F1, accuracy, per-class recall, behavioural pass rate,
   calibration error, p95 single-request CPU latency, model size), read from its evaluation on
   the test file and measured here;
2. it is not worse than the current champion **re-scored now on the same test rows** (never a
   number stored from another data version), judged with a paired test: McNemar's exact test on
   per-row correctness, or a paired bootstrap of the macro-F1 difference; noise neither blocks a
   good model nor lets a lucky one through;
3. no slice (text length, slice columns) loses more accuracy than `gate.max_slice_drop`.
With no champion yet, the floors alone decide. The verdict goes to gate.json (every check with
value, threshold, pass/fail and why) and gate.md.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneloop.config import EvaluateParams, GateParams, Params
from tuneloop.errors import TuneloopError
from tuneloop.tabular import LABEL, TEXT, read_table, write_text_atomic

log = logging.getLogger(__name__)


class GateFailed(TuneloopError):
    """The challenger did not pass the gate; the message names the failed checks."""


@dataclass
class Check:
    """One gate check: its measured value, the threshold, the verdict and why."""

    name: str
    value: Any
    threshold: Any
    passed: bool
    why: str


@dataclass
class GateReport:
    """The whole verdict."""

    challenger: str
    champion: str | None
    data: str
    checks: list[Check] = field(default_factory=list)
    comparison: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "challenger": self.challenger,
            "champion": self.champion,
            "data": self.data,
            "failed_checks": [c.name for c in self.failed],
            "checks": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.checks},
            "comparison": self.comparison,
        }


# ---------------------------------------------------------------- pure checks


def floor_checks(metrics: dict[str, Any], gate: GateParams) -> list[Check]:
    """Absolute floors from an evaluation's metrics.json."""
    checks = [
        _at_least("macro_f1", metrics["macro_f1"], gate.min_macro_f1),
        _at_least("accuracy", metrics["accuracy"], gate.min_accuracy),
        _at_most("ece", metrics["ece"], gate.max_ece),
    ]
    recalls = {k: v["recall"] for k, v in metrics["per_class"].items() if v["support"] > 0}
    worst = min(recalls, key=lambda k: recalls[k]) if recalls else None
    checks.append(
        Check(
            "min_class_recall",
            round(recalls[worst], 4) if worst else None,
            gate.min_class_recall,
            worst is None or recalls[worst] >= gate.min_class_recall,
            f"lowest recall: class '{worst}'" if worst else "no classes present",
        )
    )
    rates = {k: v for k, v in (metrics.get("behaviour") or {}).items() if v is not None}
    if rates:
        name = min(rates, key=lambda k: rates[k])
        checks.append(
            Check(
                "behaviour_pass_rate",
                round(rates[name], 4),
                gate.min_behaviour_pass_rate,
                rates[name] >= gate.min_behaviour_pass_rate,
                f"lowest: {name}",
            )
        )
    else:
        checks.append(
            Check(
                "behaviour_pass_rate",
                None,
                gate.min_behaviour_pass_rate,
                True,
                "no behavioural tests ran (evaluate.behaviour_file is null)",
            )
        )
    served = metrics.get("served")
    if served:  # serve.quantize: judge the variant the service will run, not only the fp32 weights
        checks.append(_at_least("served_agreement", served["agreement"], gate.min_served_agreement))
        checks.append(
            _at_most("served_f1_drop", max(metrics["macro_f1"] - served["macro_f1"], 0.0), gate.max_served_f1_drop)
        )
    return checks


def _at_least(name: str, value: float, threshold: float) -> Check:
    ok = value >= threshold
    return Check(name, round(value, 4), threshold, ok, f"{value:.4f} {'>=' if ok else '<'} floor {threshold}")


def _at_most(name: str, value: float, threshold: float) -> Check:
    ok = value <= threshold
    return Check(name, round(value, 4), threshold, ok, f"{value:.4f} {'<=' if ok else '>'} ceiling {threshold}")


def mcnemar(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on paired correctness; returns counts, p-value and direction."""
    from scipy.stats import binomtest

    worse = int((champion_correct & ~challenger_correct).sum())  # champion right, challenger wrong
    better = int((~champion_correct & challenger_correct).sum())
    n = worse + better
    p = 1.0 if n == 0 else float(binomtest(worse, n, 0.5).pvalue)
    return {
        "test": "mcnemar",
        "challenger_wrong_champion_right": worse,
        "challenger_right_champion_wrong": better,
        "p_value": p,
        "delta_accuracy": (better - worse) / max(len(champion_correct), 1),
    }


def paired_bootstrap(
    y_true: np.ndarray, champion_pred: np.ndarray, challenger_pred: np.ndarray, samples: int, seed: int
) -> dict[str, Any]:
    """Paired bootstrap of the macro-F1 difference (challenger - champion) over the same rows."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    n = len(y_true)
    deltas = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, n, n)
        deltas[i] = f1_score(y_true[idx], challenger_pred[idx], average="macro", zero_division=0) - f1_score(
            y_true[idx], champion_pred[idx], average="macro", zero_division=0
        )
    observed = float(
        f1_score(y_true, challenger_pred, average="macro", zero_division=0)
        - f1_score(y_true, champion_pred, average="macro", zero_division=0)
    )
    # Two-sided p-value of "no difference": how often the resampled delta crosses zero.
    p = float(min(1.0, 2 * min((deltas <= 0).mean(), (deltas >= 0).mean())))
    return {
        "test": "bootstrap",
        "delta_macro_f1": observed,
        "ci95": [float(np.quantile(deltas, 0.025)), float(np.quantile(deltas, 0.975))],
        "p_value": p,
    }


def comparison_check(result: dict[str, Any], alpha: float) -> Check:
    """Fail only when the challenger is significantly worse than the champion."""
    delta = result.get("delta_accuracy", result.get("delta_macro_f1", 0.0))
    worse = delta < 0 and result["p_value"] < alpha
    verdict = (
        "significantly worse"
        if worse
        else "significantly better"
        if delta > 0 and result["p_value"] < alpha
        else "no significant difference"
    )
    return Check(
        "no_regression_vs_champion",
        round(result["p_value"], 6),
        alpha,
        not worse,
        f"{result['test']}: {verdict} (delta {delta:+.4f}, p={result['p_value']:.4g})",
    )


def slice_checks(
    frame: pd.DataFrame,
    champion_correct: np.ndarray,
    challenger_correct: np.ndarray,
    gate: GateParams,
    evaluate: EvaluateParams,
) -> list[Check]:
    """Per-slice accuracy drop (challenger vs champion) within `max_slice_drop`, on evaluate's slices."""
    from tuneloop.evaluate import slice_keys

    keys = slice_keys(frame, evaluate)
    worst: tuple[float, str] | None = None
    judged = 0
    for name, key in keys.items():
        for value, idx in key.groupby(key).indices.items():
            if len(idx) < gate.min_slice_rows:
                continue
            judged += 1
            drop = float(champion_correct[idx].mean() - challenger_correct[idx].mean())
            if worst is None or drop > worst[0]:
                worst = (drop, f"{name}={value} ({len(idx)} rows)")
    if worst is None:
        return [
            Check("slice_drop", None, gate.max_slice_drop, True, f"no slice has {gate.min_slice_rows}+ rows to judge")
        ]
    return [
        Check(
            "slice_drop",
            round(worst[0], 4),
            gate.max_slice_drop,
            worst[0] <= gate.max_slice_drop,
            f"largest accuracy drop of {judged} slices: {worst[1]}",
        )
    ]


# ---------------------------------------------------------------- measured checks


def p95_latency_ms(model_dir: Path, texts: list[str], requests: int) -> float:
    """p95 latency of single-text predictions on CPU (the model loaded fresh, 5 warm-up calls)."""
    import torch

    from tuneloop.model import load_classifier, predict_proba

    clf = load_classifier(model_dir)
    clf.model.to("cpu")  # type: ignore[arg-type]  # transformers' to() overloads confuse mypy
    sample = [texts[i % len(texts)] for i in range(requests + 5)]
    timings = []
    with torch.inference_mode():
        for i, text in enumerate(sample):
            start = time.perf_counter()
            predict_proba(clf, [text], batch_size=1)
            if i >= 5:
                timings.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(timings, 95))


def model_size_mb(model_dir: Path) -> float:
    """Size of every file in the model dir, in MB."""
    return sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file()) / 1e6


# ---------------------------------------------------------------- entry point


def run_gate(
    params: Params,
    challenger_dir: str | Path,
    eval_dir: str | Path,
    data_path: str | Path,
    champion_dir: str | Path | None = None,
    champion_name: str | None = None,
) -> GateReport:
    """Judge `challenger_dir` (evaluated into `eval_dir` on `data_path`) against the floors and the champion."""
    from tuneloop.model import load_classifier, predict_proba

    gate = params.gate
    eval_dir = Path(eval_dir)
    metrics_path = eval_dir / "metrics.json"
    if not metrics_path.is_file():
        raise TuneloopError(
            f"{metrics_path}: no evaluation found. Run `tuneloop evaluate --model {challenger_dir} "
            f"--data {data_path} --out {eval_dir}` first."
        )
    metrics = json.loads(metrics_path.read_text())
    if Path(metrics["data"]).resolve() != Path(data_path).resolve():
        raise TuneloopError(
            f"{metrics_path} scored {metrics['data']}, not {data_path}: the gate compares models "
            "on one test file. Re-run evaluate on it."
        )
    frame = read_table(data_path).frame
    predictions = pd.read_csv(eval_dir / "predictions.csv", dtype=str, keep_default_na=False)
    if len(predictions) != len(frame):
        raise TuneloopError(
            f"{eval_dir / 'predictions.csv'} has {len(predictions)} rows, {data_path} has "
            f"{len(frame)}: the evaluation is stale. Re-run evaluate."
        )
    report = GateReport(challenger=str(challenger_dir), champion=champion_name, data=str(data_path))
    report.checks += floor_checks(metrics, gate)
    latency = p95_latency_ms(Path(challenger_dir), frame[TEXT].tolist(), gate.latency_requests)
    report.checks.append(_at_most("p95_latency_ms", latency, gate.max_p95_latency_ms))
    report.checks.append(_at_most("model_size_mb", model_size_mb(Path(challenger_dir)), gate.max_model_size_mb))

    if champion_dir is None:
        report.comparison = {"note": "no champion yet: the floors alone decide"}
        return report
    champion = load_classifier(champion_dir)
    y_true_labels = frame[LABEL].to_numpy()
    unknown = set(y_true_labels) - set(champion.labels)
    challenger_correct = predictions["predicted"].to_numpy() == y_true_labels
    champion_pred = np.array(champion.labels)[
        predict_proba(champion, frame[TEXT].tolist(), params.evaluate.batch_size).argmax(axis=1)
    ]
    champion_correct = champion_pred == y_true_labels
    if gate.paired_test == "mcnemar":
        result = mcnemar(champion_correct, challenger_correct)
    else:
        ids = {
            label: i
            for i, label in enumerate(sorted(set(y_true_labels) | set(champion_pred) | set(predictions["predicted"])))
        }
        to_ids = np.vectorize(ids.__getitem__)
        result = paired_bootstrap(
            to_ids(y_true_labels),
            to_ids(champion_pred),
            to_ids(predictions["predicted"].to_numpy()),
            gate.bootstrap_samples,
            params.base.seed,
        )
    result.update(
        {
            "champion_accuracy": float(champion_correct.mean()),
            "challenger_accuracy": float(challenger_correct.mean()),
            "labels_unknown_to_champion": sorted(unknown),
        }
    )
    report.comparison = result
    report.checks.append(comparison_check(result, gate.alpha))
    report.checks += slice_checks(frame, champion_correct, challenger_correct, gate, params.evaluate)
    return report


def render_markdown(report: GateReport) -> str:
    """gate.md: the verdict and a table of every check."""
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# Gate: {verdict}",
        "",
        f"- challenger: `{report.challenger}`",
        f"- champion: `{report.champion or 'none yet'}`",
        f"- test data: `{report.data}`",
        "",
        "| check | value | threshold | result | why |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    lines += [
        f"| {c.name} | {c.value} | {c.threshold} | {'pass' if c.passed else '**FAIL**'} | {c.why} |"
        for c in report.checks
    ]
    return "\n".join(lines) + "\n"


def write_report(report: GateReport, out_dir: str | Path) -> Path:
    """Write gate.json and gate.md into `out_dir`."""
    out = Path(out_dir)
    write_text_atomic(json.dumps(report.to_dict(), indent=2) + "\n", out / "gate.json")
    write_text_atomic(render_markdown(report), out / "gate.md")
    return out / "gate.json"


def failure_message(report: GateReport) -> str:
    """One message naming each failed check and why."""
    return "gate failed, the challenger is not promoted:\n" + "\n".join(f"  - {c.name}: {c.why}" for c in report.failed)
