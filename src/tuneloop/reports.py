"""Typed evaluation reports: what `evaluate` writes and the gate, registry, flows, CLI and monitoring read.

One report, several files in the evaluation folder, so `dvc metrics show` stays readable:
- metrics.json: the headline numbers only (declared as DVC metrics);
- per_class.json: precision, recall, F1 and support per class;
- served.json: the served variant (`serve.backend`) scored on the same rows (null: it is the
  evaluated model itself);
- behaviour.json: every behavioural test with its pass rate and failures;
- baseline.json: the TF-IDF + linear baseline fitted on the training split and scored on the same
  rows (its per-row predictions are the `baseline_predicted` column of predictions.csv).
`EvalReport.load` reads them back by attribute; a missing, older or damaged file is a clear error.
Pydantic only: no pandas or torch import to read a report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tuneloop.errors import TuneloopError, first_line

REPORT_VERSION = 4  # 1: one metrics.json with everything; 2: served.json named quantize, not backend; 3: no baseline
METRICS, PER_CLASS, SERVED, BEHAVIOUR = "metrics.json", "per_class.json", "served.json", "behaviour.json"
BASELINE = "baseline.json"


class ReportError(TuneloopError):
    """An evaluation folder is missing, from an older tuneloop, or damaged."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassMetrics(_Strict):
    precision: float
    recall: float
    f1: float
    support: int


class ServedMetrics(_Strict):
    """The variant the service runs, scored on the same rows as the evaluated weights."""

    backend: str  # what was scored: serve.backend, or its torch fallback when no ONNX variant could be built
    variant_sha256: str | None = None  # the ONNX file scored (the registry stores the same export)
    int8_recheck_margin: float | None = None  # onnx-int8: rows closer than this were computed again in fp32
    accuracy: float
    macro_f1: float
    ece: float
    agreement: float  # share of rows where it predicts what the evaluated model does
    mean_confidence_shift: float


class BaselineMetrics(_Strict):
    """The TF-IDF + linear baseline (tuneloop.baseline), fitted on the training split, scored on the same rows."""

    analyzer: str  # word | char n-grams
    train_path: str
    train_rows: int
    fit_seconds: float | None = None  # this run's; not written to baseline.json (a DVC output: reproducible bytes)
    accuracy: float
    macro_f1: float


class Headline(_Strict):
    """metrics.json: the numbers `dvc metrics show` prints."""

    report_version: int
    model: str
    data: str
    n: int
    accuracy: float
    macro_f1: float
    weighted_f1: float
    roc_auc_ovr: float | None
    log_loss: float
    ece: float


class EvalReport(_Strict):
    """One model scored on one labeled file."""

    headline: Headline
    per_class: dict[str, ClassMetrics]
    behaviour: dict[str, float | None]  # pass rate per behavioural test (None: no case could run)
    served: ServedMetrics | None = None
    baseline: BaselineMetrics | None = None  # None: no training file to fit it on (the gate then refuses)

    @property
    def accuracy(self) -> float:
        return self.headline.accuracy

    @property
    def macro_f1(self) -> float:
        return self.headline.macro_f1

    @property
    def ece(self) -> float:
        return self.headline.ece

    @property
    def data(self) -> str:
        return self.headline.data

    def summary(self) -> dict[str, Any]:
        """The headline numbers as a plain mapping (registry metadata, Prefect tables)."""
        return self.headline.model_dump(exclude={"report_version", "model", "data"})

    def judged_variant(self) -> dict[str, Any]:
        """What was scored as the served variant (the registry records it, the service compares its own with it):
        served.json, or the evaluated model itself when serve.backend was torch."""
        if self.served is not None:
            return self.served.model_dump()
        return {"backend": "torch", "agreement": 1.0, "macro_f1": self.headline.macro_f1}

    def write(self, out_dir: str | Path, behaviour_details: dict[str, Any]) -> None:
        """Write metrics.json, per_class.json, served.json, baseline.json (null when not scored), behaviour.json."""
        from tuneloop.tabular import write_text_atomic

        out = Path(out_dir)
        write_text_atomic(self.headline.model_dump_json(indent=2) + "\n", out / METRICS)
        per_class = {k: v.model_dump() for k, v in self.per_class.items()}
        write_text_atomic(json.dumps(per_class, indent=2, ensure_ascii=False) + "\n", out / PER_CLASS)
        served = "null"  # null: not scored
        if self.served is not None:  # the recheck margin is written where it applies (onnx-int8) only
            unset = {"int8_recheck_margin"} if self.served.int8_recheck_margin is None else None
            served = self.served.model_dump_json(indent=2, exclude=unset)
        write_text_atomic(served + "\n", out / SERVED)
        baseline = "null" if self.baseline is None else self.baseline.model_dump_json(indent=2, exclude={"fit_seconds"})
        write_text_atomic(baseline + "\n", out / BASELINE)
        write_text_atomic(json.dumps(behaviour_details, indent=2, ensure_ascii=False) + "\n", out / BEHAVIOUR)

    @classmethod
    def load(cls, eval_dir: str | Path) -> EvalReport:
        """Read an evaluation folder written by `tuneloop evaluate`.

        Raises:
            ReportError: a file is missing, not JSON, from an older report version, or lacks a key.
        """
        folder = Path(eval_dir)
        headline = _read(folder / METRICS)
        if not isinstance(headline, dict) or headline.get("report_version") != REPORT_VERSION:
            raise ReportError(
                f"{folder / METRICS}: written by another tuneloop version (report_version "
                f"{headline.get('report_version') if isinstance(headline, dict) else None}, expected "
                f"{REPORT_VERSION}). Re-run `tuneloop evaluate --out {folder}`."
            )
        behaviour = _read(folder / BEHAVIOUR)
        served = _read(folder / SERVED)
        try:
            return cls.model_validate(
                {
                    "headline": headline,
                    "per_class": _read(folder / PER_CLASS),
                    "served": served,
                    "baseline": _read(folder / BASELINE),
                    "behaviour": {k: v.get("pass_rate") for k, v in behaviour.items()},
                }
            )
        except (ValidationError, AttributeError) as exc:
            raise ReportError(
                f"{folder}: damaged evaluation report ({first_line(exc)}). Re-run `tuneloop evaluate --out {folder}`."
            ) from None


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ReportError(f"{path}: not found. Run `tuneloop evaluate --out {path.parent}` first.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(
            f"{path}: not valid JSON ({exc}); the file is damaged. Re-run `tuneloop evaluate --out {path.parent}`."
        ) from None
