"""predicted_label's test: Evidently's one-sample chisquare vs tuneloop's two-sample test, side by side.

Simulated: pairs of a reference of R labels and a window of W labels, each pair drawn anew from one population of
K labels (Dirichlet shares), or with the window's mix moved toward the reversed shares by --shift (the demo's
label-mix kind), so the rates are over references as well as windows; per case, the share of pairs each test
flags (with monitor.min_label_shift's total-variation floor, as monitoring does): Evidently's `chisquare` at
monitor.alpha, the two-sample test (tuneloop.monitor.signals.label_homogeneity) at monitor.label_shift_alpha.
With --model DIR --data CSV also a real model: its predicted labels on --reference-rows of the file are its one
reference, windows are drawn from its predictions on the rest (undrifted): the rate a registered model would
see. Prints JSON lines.

    PYTHONPATH=src .venv/bin/python bench/label_test.py
    PYTHONPATH=src .venv/bin/python bench/label_test.py --model MODEL_DIR --data ../shared/data/banking77/test.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def flagged(pairs: list[tuple[pd.Series, pd.Series]], alpha: float, label_alpha: float, floor: float) -> dict:
    """Share of (reference, window) pairs each test flags (both with the total-variation floor)."""
    from evidently.legacy.calculations.stattests import chi_stat_test
    from evidently.legacy.core import ColumnType

    from tuneloop.monitor.signals import label_distance, label_homogeneity

    evidently = two_sample = 0
    for reference, window in pairs:
        far = label_distance(reference, window) >= floor
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy on zero expected counts
            evidently += far and chi_stat_test(reference, window, ColumnType.Categorical, alpha).drift_score < alpha
        two_sample += far and label_homogeneity(reference, window) < label_alpha
    return {"evidently_chisquare": evidently / len(pairs), "two_sample": two_sample / len(pairs)}


def _draw(rng: np.random.Generator, shares: np.ndarray, rows: int) -> pd.Series:
    return pd.Series(rng.choice(len(shares), rows, p=shares)).astype(str)


def simulated(args: argparse.Namespace, monitor) -> None:
    rng = np.random.default_rng(args.seed)
    for classes in args.classes:
        shares = np.sort(rng.dirichlet(np.ones(classes) * 5))[::-1]
        for reference_rows in args.reference_rows:
            for shift in (0.0, *args.shift):
                moved = (1 - shift) * shares + shift * shares[::-1]

                pairs = [
                    (_draw(rng, shares, reference_rows), _draw(rng, moved, args.window)) for _ in range(args.windows)
                ]
                result = flagged(pairs, monitor.alpha, monitor.label_shift_alpha, monitor.min_label_shift)
                case = {"classes": classes, "reference_rows": reference_rows, "window": args.window, "shift": shift}
                print(json.dumps({**case, "windows": args.windows, "flagged": result}), flush=True)


def real(args: argparse.Namespace, monitor) -> None:
    from tuneloop.monitor.reference import build_reference

    frame = pd.read_csv(args.data).sample(frac=1, random_state=args.seed).reset_index(drop=True)
    predicted = build_reference(args.model, frame, backend=args.backend)["predicted"]
    rng = np.random.default_rng(args.seed)
    for rows in args.reference_rows:
        reference, pool = predicted[:rows], predicted[rows:].reset_index(drop=True)
        windows = [pool.sample(args.window, random_state=int(rng.integers(1 << 30))) for _ in range(args.windows)]
        pairs = [(reference, window) for window in windows]
        result = flagged(pairs, monitor.alpha, monitor.label_shift_alpha, monitor.min_label_shift)
        case = {"model": str(args.model), "data": str(args.data), "labels": int(predicted.nunique())}
        print(json.dumps({**case, "reference_rows": rows, "window": args.window, "undrifted_windows": args.windows,
                          "flagged": result}), flush=True)  # fmt: skip


def main() -> None:
    from tuneloop.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 77])
    parser.add_argument("--reference-rows", type=int, nargs="+", default=[360, 1000])
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--windows", type=int, default=400)
    parser.add_argument("--shift", type=float, nargs="*", default=[0.25], help="share moved to the reversed mix")
    parser.add_argument("--model", type=Path, help="a model dir: also measure it on --data")
    parser.add_argument("--data", type=Path, help="labeled CSV the model's reference and windows come from")
    parser.add_argument("--backend", default="torch-int8")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    monitor = load_params(args.params).monitor
    print(json.dumps({"alpha": monitor.alpha, "label_shift_alpha": monitor.label_shift_alpha,
                      "min_label_shift": monitor.min_label_shift}))  # fmt: skip
    simulated(args, monitor)
    if args.model and args.data:
        real(args, monitor)


if __name__ == "__main__":
    main()
