"""Drift power of the platform's verdict vs Evidently's DataDriftPreset on the text column, side by side.

Method: the champion's reference is built from its val + test files as registration builds it
(served int8 variant). Pools of scored traffic (bench/monitor_pools.py: undrifted demo texts with
other seeds, and each drift kind) are sampled into windows of --size rows, a --share of them
drifted; --windows windows per case. A window is "flagged" by the platform when any signal in
monitor.signals drifted (tuneloop.monitor.run.assess, the code `tuneloop monitor run` runs); the
baseline flags when DataDriftPreset (default settings, DataDefinition(text_columns=["text"]))
reports its DriftedColumnsCount share >= 0.5, i.e. the text column drifted. The baseline's text
drift fits ~1000 bootstrap classifiers per window (25-45 s each on this loaded CPU, profiled), so it
runs on --baseline-windows windows per case (the same first windows the platform sees). Then a
"day" of undrifted traffic read as --day-windows consecutive windows through the policy
(hysteresis): flagged windows and retrain verdicts. Per-signal flag rates say which signal carries
each case. Prints JSON.

    PYTHONPATH=src .venv/bin/python bench/drift_power.py --model /tmp/mon-demo/models/candidate \\
        --data /tmp/mon-demo/data/prepared/val.csv /tmp/mon-demo/data/prepared/test.csv \\
        --corpus /tmp/mon-demo/data/raw/corpus.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import monitor_pools as pools

CASES = [
    ("none", 0.0),
    ("vocabulary", 0.1),
    ("vocabulary", 0.2),
    ("length", 0.1),
    ("length", 0.2),
    ("new-intents", 0.1),
    ("new-intents", 0.2),
    ("label-mix", 0.2),
    ("label-mix", 0.5),
]


def baseline_flags(reference, window) -> bool:
    """Evidently's default DataDriftPreset on the text column; read by metric type, not position."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(text_columns=["text"])
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(window[["text"]], data_definition=definition),
        Dataset.from_pandas(reference[["text"]], data_definition=definition),
    )
    for entry in snapshot.dict()["metrics"]:
        if entry["config"]["type"] == "evidently:metric_v2:DriftedColumnsCount":
            return entry["value"]["share"] >= entry["config"]["drift_share"]
    raise RuntimeError("DataDriftPreset gave no DriftedColumnsCount")


def platform(reference, window, params, tokenizer) -> tuple[bool, list[str], bool | None]:
    """The verdict's flag and the signals that drifted; with a reference that expects the corpus' label mix, also
    the flag the same window gets when predicted_label is the two-sample test against the reference's own
    predicted labels (the test before tuneloop.monitor.label_mix; every other signal the same), else None."""
    from tuneloop.monitor.label_mix import CORPUS_LABELS
    from tuneloop.monitor.run import assess
    from tuneloop.monitor.signals import label_distance, label_homogeneity

    signals = assess(reference, window, params, tokenizer).signals
    flagged = [s.name for s in signals if s.drifted]
    counted = any(s.drifted and s.counts for s in signals)
    if CORPUS_LABELS not in reference.attrs["tuneloop_reference"]:
        return counted, flagged, None
    ref, cur = reference["predicted"].astype(str), window["predicted"].astype(str)
    label = next(s for s in signals if s.name == "predicted_label")
    two_sample = (
        label_homogeneity(ref, cur) < params.label_shift_alpha and label_distance(ref, cur) >= params.min_label_shift
    )
    others = any(s.drifted and s.counts for s in signals if s.name != "predicted_label")
    return counted, flagged, others or (two_sample and label.counts)


def run_case(kind, share, ref, scored, params, tokenizer, args, rng) -> dict:
    base, drifted = scored["none"], None if kind == "none" else scored[kind]
    flags, baseline, per_signal, seconds, two_sample = [], [], {}, [], []
    for i in range(args.windows):
        window = pools.window(base, drifted, args.size, share, rng)
        started = time.perf_counter()
        flagged, names, plain = platform(ref, window, params, tokenizer)
        seconds.append(time.perf_counter() - started)
        flags.append(flagged)
        if plain is not None:
            two_sample.append(plain)
        for name in names:
            per_signal[name] = per_signal.get(name, 0) + 1
        if i < args.baseline_windows:
            baseline.append(baseline_flags(ref, window))
    return {
        "case": kind,
        "drifted_share": share,
        "windows": len(flags),
        "platform_flagged": round(float(np.mean(flags)), 3),
        "platform_two_sample_label_test_flagged": round(float(np.mean(two_sample)), 3) if two_sample else None,
        "baseline_windows": len(baseline),
        "baseline_flagged": round(float(np.mean(baseline)), 3) if baseline else None,
        "per_signal_flagged": {k: round(v / len(flags), 3) for k, v in sorted(per_signal.items())},
        "platform_s_per_window": round(float(np.median(seconds)), 2),
    }


def day_of_traffic(ref, scored, params, tokenizer, args) -> dict:
    """Consecutive undrifted windows (fresh traffic, not the pools) through the policy's hysteresis."""
    from tuneloop.monitor import policy
    from tuneloop.monitor.run import assess

    day = pools.scored_pool_rows(args.model, "none", args.backend, rows=args.size * args.day_windows, seed=999)
    consecutive, statuses, now = 0, [], datetime(2026, 11, 29, tzinfo=UTC)
    for i in range(args.day_windows):
        window = pools.as_log_window(day.iloc[i * args.size : (i + 1) * args.size])
        decision = policy.decide(assess(ref, window, params, tokenizer).signals, params, consecutive, None, now)
        consecutive = decision.consecutive
        statuses.append(decision.status)
        now += timedelta(hours=24 / args.day_windows)
    return {
        "windows": args.day_windows,
        "flagged": sum(s != "ok" for s in statuses),
        "retrain_verdicts": statuses.count("retrain"),
        "hysteresis": params.hysteresis,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the champion's model dir")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="its val and test files (the reference)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="the raw corpus (data/raw/corpus.csv), as the pipeline registers the reference (the "
                        "label test expects the corpus' mix); also reports the two-sample label test beside it")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--backend", default="torch-int8")
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--baseline-windows", type=int, default=10)
    parser.add_argument("--day-windows", type=int, default=48)
    parser.add_argument("--cases", nargs="*", default=None, help="kind:share pairs (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from tuneloop.config import load_params

    params = load_params(args.params).monitor
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ref = pools.reference(args.model, args.data, args.backend, args.corpus)
    scored = {name: pools.scored_pool(args.model, name, args.backend) for name in pools.POOLS}
    cases = [(c.split(":")[0], float(c.split(":")[1])) for c in args.cases] if args.cases else CASES
    rng = np.random.default_rng(args.seed)
    results = [run_case(kind, share, ref, scored, params, tokenizer, args, rng) for kind, share in cases]
    for r in results:
        print(json.dumps(r), flush=True)
    if args.day_windows:
        day = day_of_traffic(ref, scored, params, tokenizer, args)
        print(json.dumps({"day_of_undrifted_traffic": day}), flush=True)
    print(json.dumps({"reference_rows": len(ref), "reference_accuracy": ref.attrs["tuneloop_reference"]["accuracy"],
                      "window_size": args.size, "alpha": params.alpha, "signals": params.signals}))  # fmt: skip


if __name__ == "__main__":
    main()
