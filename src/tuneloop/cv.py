"""Cross-validation (`tuneloop cv --folds K`): K fine-tunes over stratified folds of train + val.

Why: one validation split of a few hundred rows moves macro-F1 in coarse steps, so one number cannot
tell two settings apart. K folds give every row one turn as validation and put a spread beside the mean.

How: the rows of the prepared train and val files (never the test split) are cut into K folds by
scikit-learn's StratifiedKFold, shuffled by `base.seed`, so each fold holds every class in the whole
set's proportion (within one row). Texts are tokenised once and each fold indexes that encoding. Each
fold fine-tunes a copy of the same initial model with the train stage's own Trainer
(`tuneloop.train.make_trainer`: same arguments, loss, early stopping, GPU when there is one) and is
scored on its held-out rows: accuracy, macro-F1, loss, ECE, steps and seconds, then the mean and
sample standard deviation of each over the folds. Written as `cv.json` (typed: `CvReport`) and `cv.md`;
inside a Prefect flow run the markdown is also the artifact `cv-report`.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from tuneloop.config import Params
from tuneloop.errors import DataError
from tuneloop.tabular import LABEL

if TYPE_CHECKING:
    import pandas as pd

    from tuneloop.train import EncodedDataset

log = logging.getLogger(__name__)

CV_REPORT_VERSION = 1
CV_JSON, CV_MD = "cv.json", "cv.md"
ARTIFACT_KEY = "cv-report"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FoldResult(_Strict):
    """One fine-tune, scored on the fold it never saw."""

    fold: int  # 1-based
    train_rows: int
    val_rows: int
    accuracy: float
    macro_f1: float
    loss: float
    ece: float
    steps: int
    seconds: float  # fine-tune plus scoring of this fold


class Spread(_Strict):
    mean: float
    std: float  # sample standard deviation over the folds (ddof=1): the folds are a sample of possible splits


class CvSummary(_Strict):
    """Mean and standard deviation of every per-fold number (the FoldResult fields of the same names)."""

    accuracy: Spread
    macro_f1: Spread
    loss: Spread
    ece: Spread
    steps: Spread
    seconds: Spread


class CvReport(_Strict):
    """cv.json: what was cross-validated, each fold, and the summary over folds."""

    report_version: int = CV_REPORT_VERSION
    folds: int
    rows: int
    labels: list[str]
    base_model: str
    device: str
    seed: int
    max_steps: int  # -1: epochs and early stopping decide
    data: dict[str, Any]  # input files with their md5 (tuneloop.provenance.data_version)
    created_at: str
    wall_time_s: float
    per_fold: list[FoldResult]
    summary: CvSummary

    def write(self, out_dir: str | Path) -> None:
        """Write cv.json and cv.md into `out_dir`."""
        from tuneloop.tabular import write_text_atomic

        write_text_atomic(self.model_dump_json(indent=2) + "\n", Path(out_dir) / CV_JSON)
        write_text_atomic(render_markdown(self), Path(out_dir) / CV_MD)


# ---------------------------------------------------------------- folds (pure)


def check_folds(labels: Sequence[str], k: int, source: str) -> None:
    """Refuse K folds that cannot all hold every class.

    Raises:
        DataError: naming each class with fewer than K rows, its count, and the fix.
    """
    counts = Counter(labels)
    small = {label: n for label, n in sorted(counts.items()) if n < k}
    if not small:
        return
    listed = ", ".join(f"'{label}' ({n} rows)" for label, n in small.items())
    fewest = min(counts.values())
    lower = f"lower --folds to {fewest} or fewer, " if fewest >= 2 else ""  # 2 is the fewest folds there are
    raise DataError(
        f"{source}: classes with fewer rows than the {k} folds: {listed}. Stratified folds need every class "
        f"in every fold: {lower}add rows of {'that class' if len(small) == 1 else 'those classes'}, "
        "or merge them into another class."
    )


def stratified_folds(labels: Sequence[str], k: int, seed: int, source: str = "the data") -> list[list[int]]:
    """The held-out row positions of each of K stratified folds, shuffled by `seed`.

    Every row is held out exactly once; each fold's class counts are within one row of the whole's
    proportion (StratifiedKFold's guarantee).
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    check_folds(labels, k, source)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [sorted(held.tolist()) for _, held in splitter.split(np.zeros(len(labels)), np.asarray(labels))]


def summarise(folds: Sequence[FoldResult]) -> CvSummary:
    """Mean and sample standard deviation of each metric over the folds (at least two)."""
    values = {name: [float(getattr(f, name)) for f in folds] for name in CvSummary.model_fields}
    return CvSummary(**{n: Spread(mean=statistics.fmean(v), std=statistics.stdev(v)) for n, v in values.items()})


def render_markdown(report: CvReport) -> str:
    """cv.md: one row per fold, then mean ± std."""
    s = report.summary
    lines = [
        f"# Cross-validation: {report.folds} folds",
        "",
        f"{report.rows} rows of train + val, stratified by label (seed {report.seed}); base model "
        f"`{report.base_model}` on {report.device}. Standard deviation over folds (ddof=1).",
        "",
        "| fold | train rows | val rows | accuracy | macro-F1 | loss | ECE | steps | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in report.per_fold:
        lines.append(
            f"| {f.fold} | {f.train_rows} | {f.val_rows} | {f.accuracy:.4f} | {f.macro_f1:.4f} | {f.loss:.4f} "
            f"| {f.ece:.4f} | {f.steps} | {f.seconds:.1f} |"
        )
    cells = [f"{x.mean:.4f} ± {x.std:.4f}" for x in (s.accuracy, s.macro_f1, s.loss, s.ece)]
    cells += [f"{s.steps.mean:.0f} ± {s.steps.std:.0f}", f"{s.seconds.mean:.1f} ± {s.seconds.std:.1f}"]
    lines.append(f"| **mean ± std** | | | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def publish_artifact(markdown: str) -> bool:
    """Inside a Prefect flow run, publish the report as the markdown artifact `cv-report`; elsewhere nothing.

    Returns whether it published.
    """
    # A flow run has imported prefect already; a plain CLI run must not pay prefect's import (seconds).
    if "prefect" not in sys.modules:
        return False
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return False
    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY, description="cross-validation, mean ± std")
    return True


# ---------------------------------------------------------------- data and fine-tunes


def load_rows(
    params: Params, train_path: Path, val_path: Path, k: int, max_samples: int = 0
) -> tuple[pd.DataFrame, list[str]]:
    """Train and val rows as one frame (a seeded sample with `max_samples`) and the label list.

    Raises:
        DataError: a class has fewer than K rows (in a sample such classes sit the run out instead, as in
            train), or fewer than two classes are left.
    """
    import pandas as pd

    from tuneloop.tabular import AUGMENTED, ORIGIN, read_labeled
    from tuneloop.train import label_space, require_two_classes

    frame = pd.concat([read_labeled(train_path), read_labeled(val_path)], ignore_index=True)
    if ORIGIN in frame:  # prepare.augment's rows are copies of other rows: in another fold they would leak
        frame = frame[frame[ORIGIN] != AUGMENTED]
    sampled = max_samples if 0 < max_samples < len(frame) else 0
    if sampled:
        frame = frame.sample(n=max_samples, random_state=params.base.seed).sort_index()
        counts = frame[LABEL].value_counts()
        thin = sorted(counts[counts < k].index)
        if thin:  # a sample may hold a class too rarely for K folds: cross-validate the others
            log.info(
                "the %d-row sample holds classes %s fewer than %d times; they sit this run out", max_samples, thin, k
            )
            frame = frame[~frame[LABEL].isin(thin)]
    source = f"{train_path} + {val_path}"
    check_folds(frame[LABEL].tolist(), k, source)
    require_two_classes(frame, Path(source), sampled)
    return frame.reset_index(drop=True), label_space(frame, frame, train_path, val_path)


@dataclass(frozen=True)
class Shared:
    """What every fold reuses: the rows, their one encoding, the labels, tokenizer and the initial model."""

    frame: pd.DataFrame
    data: EncodedDataset
    labels: list[str]
    tokenizer: Any
    model: Any  # never trained itself: each fold trains a deep copy, so every fold starts from the same weights


def fit_fold(
    params: Params, shared: Shared, fold: int, held: list[int], checkpoints: Path, max_steps: int
) -> FoldResult:
    """Fine-tune on every row but `held` (train's Trainer and early stopping), then score the held rows."""
    from tuneloop.train import _fit, class_weights, make_trainer

    started = time.perf_counter()
    held_set = set(held)
    rest = [i for i in range(len(shared.data)) if i not in held_set]
    weights = class_weights(shared.frame.iloc[rest], shared.labels) if params.train.class_weights else None
    held_ds = shared.data.subset(held)
    trainer, throughput = make_trainer(
        params,
        copy.deepcopy(shared.model),
        shared.tokenizer,
        shared.data.subset(rest),
        held_ds,
        checkpoints,
        weights=weights,
        max_steps=max_steps,
    )
    steps = _fit(trainer, None, throughput.batch_size, params.train.max_length)
    scores = score_fold(trainer, held_ds, params.evaluate.ece_bins)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the best weights are in memory; a fold is not resumable
    seconds = time.perf_counter() - started
    result = FoldResult(fold=fold, train_rows=len(rest), val_rows=len(held), steps=steps, seconds=seconds, **scores)
    log.info(
        "fold %d: val macro-F1 %.4f, accuracy %.4f, %d steps, %.0f s",
        fold,
        result.macro_f1,
        result.accuracy,
        steps,
        seconds,
    )
    return result


def score_fold(trainer: Any, held: EncodedDataset, bins: int) -> dict[str, float]:
    """Accuracy, macro-F1 and loss (Trainer's own) and ECE of the restored best model on the held rows."""
    import numpy as np

    from tuneloop.evaluate import expected_calibration_error

    out = trainer.predict(held, metric_key_prefix="eval")
    logits = np.asarray(out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions, dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    ece, _ = expected_calibration_error(np.asarray(held.labels), probs, bins)
    m = out.metrics
    return {"accuracy": m["eval_accuracy"], "macro_f1": m["eval_macro_f1"], "loss": m["eval_loss"], "ece": ece}


def cross_validate(
    params: Params,
    train_path: str | Path,
    val_path: str | Path,
    out_dir: str | Path,
    *,
    folds: int | None = None,
    base: str | None = None,
    max_samples: int = 0,
    max_steps: int = -1,
) -> CvReport:
    """K stratified fine-tunes over train + val; writes cv.json and cv.md to `out_dir` and returns the report.

    `folds` overrides cv.folds, `base` train.base_model; `max_samples` / `max_steps` bound smoke runs.
    """
    import torch

    from tuneloop.provenance import data_version, utc_now

    started, k, base_model = time.time(), folds or params.cv.folds, base or params.train.base_model
    train_path, val_path, out_dir = Path(train_path), Path(val_path), Path(out_dir)
    torch.set_num_threads(params.train.num_threads or os.cpu_count() or 1)
    shared, held_out = prepare_folds(params, train_path, val_path, k, base_model, max_samples)
    checkpoints = out_dir.with_name(out_dir.name + ".checkpoints")
    try:
        results = [
            fit_fold(params, shared, i + 1, held, checkpoints / f"fold-{i + 1}", max_steps)
            for i, held in enumerate(held_out)
        ]
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)  # several hundred MB per fold with a real base model
    report = CvReport(
        folds=k,
        rows=len(shared.frame),
        labels=shared.labels,
        base_model=base_model,
        device="cuda" if torch.cuda.is_available() else "cpu",
        seed=params.base.seed,
        max_steps=max_steps,
        data=data_version({"train": train_path, "val": val_path}),
        created_at=utc_now(),
        wall_time_s=round(time.time() - started, 1),
        per_fold=results,
        summary=summarise(results),
    )
    report.write(out_dir)
    publish_artifact(render_markdown(report))
    return report


def prepare_folds(
    params: Params, train_path: Path, val_path: Path, k: int, base_model: str, max_samples: int = 0
) -> tuple[Shared, list[list[int]]]:
    """The rows, tokenised once, the initial model, and the held-out rows of each fold."""
    from tuneloop.train import encode, load_base_model

    frame, labels = load_rows(params, train_path, val_path, k, max_samples)
    held_out = stratified_folds(frame[LABEL].tolist(), k, params.base.seed, f"{train_path} + {val_path}")
    tokenizer, model, _ = load_base_model(base_model, labels, params.base.seed)
    encoded = encode(tokenizer, frame, {label: i for i, label in enumerate(labels)}, params.train.max_length)
    return Shared(frame, encoded, labels, tokenizer, model), held_out
