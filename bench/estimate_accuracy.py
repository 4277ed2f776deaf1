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
for both, and their ratio. With --biased-feedback, each F also runs with feedback that is not a random
sample: wrong answers --biased-feedback times as likely to be reported as right ones (users who report
what they doubt), estimated with and without leaving out feedback the check calls not random
(monitor.feedback_sampling_check: exclude; tuneloop.monitor.estimate.sampling_check against the window's
own rows, as monitoring checks it against the unlabeled traffic of the feedback's period), with the share
of windows where it was left out.

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


def feedback_rows_of(scored, rest: np.ndarray, rows: int, bias: float, rng):
    """`rows` of `rest` as feedback: uniformly, or with wrong answers `bias` times as likely to be picked."""
    if not bias:
        picked = rest[:rows]
    else:
        wrong = (scored["predicted"] != scored["label"]).to_numpy()[rest]
        weight = np.where(wrong, bias, 1.0)
        picked = rng.choice(rest, size=min(rows, len(rest)), replace=False, p=weight / weight.sum())
    return scored.iloc[picked].rename(columns={"label": "true_label"})


def kind_errors(scored, ref, feedback_rows: int, args, rng, bias: float = 0.0) -> dict:
    from sklearn.metrics import f1_score

    from tuneloop.monitor.estimate import estimate, fit_on, sampling_check

    cbpe, naive, f1_err, true_acc, inside, checked, left_out = [], [], [], [], [], [], []
    for _ in range(args.windows):
        order = rng.permutation(len(scored))
        window = scored.iloc[order[: args.size]]
        feedback = feedback_rows_of(scored, order[args.size :], feedback_rows, bias, rng)
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
        check = sampling_check(feedback["confidence"].to_numpy(), window["confidence"].to_numpy())
        kept = check is None or check.random
        left_out.append(not kept)
        final = calibration if kept else fit_on([ref])[0]
        checked.append(abs(estimate(window["predicted"].tolist(), window["confidence"].to_numpy(), top_k,
                                    final).accuracy - accuracy) * 100)  # fmt: skip
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
        "with_sampling_check": {  # feedback left out where it does not look like a random sample
            "cbpe_error_points": {
                "median": round(float(np.median(checked)), 2),
                "worst": round(float(np.max(checked)), 2),
            },
            "feedback_left_out_share": round(float(np.mean(left_out)), 3),
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
    parser.add_argument("--biased-feedback", type=float, default=0.0, help="also: wrong answers this many times as "
                        "likely to get feedback (0: only random feedback)")  # fmt: skip
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
            for bias in [0.0] + ([args.biased_feedback] if args.biased_feedback and feedback_rows else []):
                print(
                    json.dumps(
                        {
                            "kind": kind,
                            "feedback_rows": feedback_rows,
                            "feedback_wrong_answer_bias": bias,
                            "windows": args.windows,
                            "size": args.size,
                            **kind_errors(scored, ref, feedback_rows, args, rng, bias),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
