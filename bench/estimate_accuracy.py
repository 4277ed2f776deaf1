"""Label-free performance estimate (CBPE) vs the naive estimate (mean top-class confidence), side by side.

Method: the champion's reference (val + test, the served variant) fits the Platt calibration, as
`tuneloop monitor run` does (tuneloop.monitor.estimate.fit_on). For each kind (reference traffic,
vocabulary, length, label-mix, new-intents; every row of the window of that kind) --windows windows
of --size rows are sampled from the scored pools (bench/monitor_pools.py; windows of one kind share
rows, the pools hold 2000-4000), every row labeled. Per window: true accuracy and macro-F1 from the
labels, CBPE's estimates (tuneloop.monitor.estimate.estimate) and the naive one. With each F of
--feedback-rows the calibration also fits on F feedback-labeled rows of the same kind that are not in
the window (earlier traffic whose labels have arrived: monitor.calibration_feedback_rows); F=0 is
the reference alone. Prints per kind and F the median and worst absolute error in accuracy points
for both, and their ratio.

    PYTHONPATH=src .venv/bin/python bench/estimate_accuracy.py --model /tmp/mon-demo/models/candidate \\
        --data /tmp/mon-demo/data/prepared/val.csv /tmp/mon-demo/data/prepared/test.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import monitor_pools as pools


def kind_errors(scored, ref, feedback_rows: int, args, rng) -> dict:
    from sklearn.metrics import f1_score

    from tuneloop.monitor.estimate import estimate, fit_on

    cbpe, naive, f1_err, true_acc, inside = [], [], [], [], []
    for _ in range(args.windows):
        order = rng.permutation(len(scored))
        window = scored.iloc[order[: args.size]]
        feedback = scored.iloc[order[args.size : args.size + feedback_rows]].rename(columns={"label": "true_label"})
        calibration, _ = fit_on([ref, feedback])
        top_k = [json.loads(t) for t in window["top_k"]]
        est = estimate(window["predicted"].tolist(), window["confidence"].to_numpy(), top_k, calibration)
        accuracy = float((window["predicted"] == window["label"]).mean())
        macro_f1 = f1_score(window["label"], window["predicted"], average="macro")
        true_acc.append(accuracy)
        cbpe.append(abs(est.accuracy - accuracy) * 100)
        inside.append(abs(est.accuracy - accuracy) <= 2 * est.accuracy_sd)
        naive.append(abs(est.naive_accuracy - accuracy) * 100)
        f1_err.append(abs(est.macro_f1 - macro_f1) * 100)
    return {
        "true_accuracy_mean": round(float(np.mean(true_acc)), 4),
        "cbpe_error_points": {"median": round(float(np.median(cbpe)), 2), "worst": round(float(np.max(cbpe)), 2)},
        "naive_error_points": {"median": round(float(np.median(naive)), 2), "worst": round(float(np.max(naive)), 2)},
        "within_2_sd_share": round(float(np.mean(inside)), 3),  # ~0.95 where the calibration holds
        "median_error_ratio_cbpe_to_naive": round(float(np.median(cbpe) / max(np.median(naive), 1e-9)), 2),
        "cbpe_macro_f1_error_points": {
            "median": round(float(np.median(f1_err)), 2),
            "worst": round(float(np.max(f1_err)), 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--backend", default="torch-int8")
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feedback-rows", default="0,200", help="comma-separated F: earlier labeled rows per window")
    args = parser.parse_args()
    from tuneloop.monitor.estimate import fit_on

    ref = pools.reference(args.model, args.data, args.backend)
    calibration, _ = fit_on([ref])
    rng = np.random.default_rng(args.seed)
    print(
        json.dumps(
            {
                "reference_rows": len(ref),
                "calibration": calibration.to_dict(),
                "reference_accuracy": ref.attrs["tuneloop_reference"]["accuracy"],
                "reference_mean_confidence": round(float(ref["confidence"].mean()), 4),
            }
        )
    )
    for kind in pools.POOLS:
        scored = pools.scored_pool(args.model, kind, args.backend)
        for feedback_rows in (int(f) for f in args.feedback_rows.split(",")):
            print(
                json.dumps(
                    {
                        "kind": kind,
                        "feedback_rows": feedback_rows,
                        "windows": args.windows,
                        "size": args.size,
                        **kind_errors(scored, ref, feedback_rows, args, rng),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
