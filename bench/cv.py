"""Cross-validation cost and spread: `tuneloop cv` vs one plain `tuneloop train`, same data, same run.

Method: a seeded sample of the prepared train and val files (default: the demo's data/prepared) is
copied into a scratch folder, so both sides read exactly the same rows and nothing is written beside
the source. Then, in one process, one after the other:
- plain: `tuneloop.train.train` on train.csv with early stopping on val.csv;
- cv: `tuneloop.cv.cross_validate` with K folds over train.csv + val.csv (the test split is not read).
Both use params.yaml's train settings and the same `--max-steps` cap per fine-tune. Prints JSON: the
per-fold and mean ± std macro-F1, total seconds, seconds per fold against the plain run's seconds
(the cost of a fold relative to one training run), and the plain run's validation macro-F1.

    python bench/cv.py --data /path/to/prepared --folds 5 --train-rows 600 --val-rows 150 --max-steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def sample_copy(source: Path, workdir: Path, train_rows: int, val_rows: int, seed: int) -> dict[str, int]:
    """Seeded samples of source/train.csv and source/val.csv (and labels.json) written into `workdir`;
    returns the rows written per file."""
    import pandas as pd

    written = {}
    for name, rows in (("train.csv", train_rows), ("val.csv", val_rows)):
        frame = pd.read_csv(source / name)
        if 0 < rows < len(frame):
            frame = frame.sample(n=rows, random_state=seed).sort_index()
        frame.to_csv(workdir / name, index=False)
        written[name.removesuffix(".csv")] = len(frame)
    if (source / "labels.json").is_file():  # the label order train and cv both read beside train.csv
        shutil.copy(source / "labels.json", workdir / "labels.json")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "prepared", help="folder with train.csv, val.csv")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--train-rows", type=int, default=600, help="seeded sample of train.csv (0: all)")
    parser.add_argument("--val-rows", type=int, default=150, help="seeded sample of val.csv (0: all)")
    parser.add_argument("--max-steps", type=int, default=60, help="cap on each fine-tune's steps (-1: epochs decide)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="tuneloop param override")
    args = parser.parse_args()
    if not (args.data / "train.csv").is_file():
        sys.exit(f"{args.data}/train.csv not found: run `make demo` first, or pass --data FOLDER")

    import logging

    logging.basicConfig(level=logging.WARNING)
    from tuneloop.config import load_params
    from tuneloop.cv import cross_validate
    from tuneloop.train import train

    params = load_params(args.params, args.overrides)
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-cv-") as tmp:
        work = Path(tmp)
        rows = sample_copy(args.data, work, args.train_rows, args.val_rows, params.base.seed)
        train_csv, val_csv = work / "train.csv", work / "val.csv"
        started = time.perf_counter()
        plain = train(params, train_csv, val_csv, work / "model", live_dir=None, max_steps=args.max_steps)
        plain_s = time.perf_counter() - started
        started = time.perf_counter()
        report = cross_validate(params, train_csv, val_csv, work / "cv", folds=args.folds, max_steps=args.max_steps)
        cv_s = time.perf_counter() - started
    per_fold_s = cv_s / report.folds
    result = {
        "data": str(args.data),
        "rows": rows | {"cv": report.rows},
        "base_model": report.base_model,
        "device": report.device,
        "max_steps": args.max_steps,
        "folds": report.folds,
        "per_fold_macro_f1": [round(f.macro_f1, 4) for f in report.per_fold],
        "per_fold_steps": [f.steps for f in report.per_fold],
        "macro_f1": {"mean": round(report.summary.macro_f1.mean, 4), "std": round(report.summary.macro_f1.std, 4)},
        "accuracy": {"mean": round(report.summary.accuracy.mean, 4), "std": round(report.summary.accuracy.std, 4)},
        "cv_total_s": round(cv_s, 1),
        "cv_seconds_per_fold": round(per_fold_s, 1),
        "plain_train_s": round(plain_s, 1),
        "plain_train_steps": plain.steps,
        "plain_val_macro_f1": round(plain.val_metrics["macro_f1"], 4),
        "fold_over_plain": round(per_fold_s / plain_s, 2),
        "cv_over_plain": round(cv_s / plain_s, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
