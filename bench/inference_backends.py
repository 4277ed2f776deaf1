"""Inference backends side by side, in one process, on the same labeled file: which `serve.backend` to serve.

For torch fp32, torch int8, ONNX fp32 and ONNX int8 (tuneloop.compress.for_serving, the service's own builder; ONNX
variants exported by tuneloop.compress.onnx.export; ONNX int8 as served, its close rows computed again in fp32 by
serve.int8_recheck_margin, and `onnx-int8-no-recheck`, the int8 graph alone): texts/s and p50/p95 latency per call
at batch 1 and batch 16, timed in turns of BLOCK calls per backend (each round runs every backend on the same texts,
in a rotating order, so a busy machine slows all alike), then accuracy, macro-F1 and label agreement with torch fp32
on every row of the file. ONNX Runtime's intra-op spinning is off (tuneloop.compress.onnx._session): with it on, the
torch figures measured in the same process fell 3-4x. Prints one JSON object; the ratios the issue names are
`onnx_int8_vs_torch_fp32_batch1` and `onnx_int8_vs_torch_fp32_batch16`.

    .venv/bin/python bench/inference_backends.py                       # the champion, data/prepared/test.csv
    .venv/bin/python bench/inference_backends.py --model DIR --data ../shared/data/banking77/test.csv
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

BACKENDS = ("torch", "torch-int8", "onnx", "onnx-int8")
# Backends take turns in blocks of this many timed calls (rotating which goes first), each block after one
# untimed call: timed call by call, a call right after torch's ran while torch's OpenMP threads still spun
# (they wait actively after each parallel region), which cost the ONNX Runtime call after it ~0.8 ms at batch 1
# (2.5 vs 1.7 ms); a service runs one backend, never two in turn.
BLOCK = 10
# onnx-int8 is timed as served (its close rows computed again in fp32, serve.int8_recheck_margin); this row is the
# int8 graph alone, beside it, so the recheck's cost and gain are in the same run
PURE_INT8 = "onnx-int8-no-recheck"


def _champion_dir() -> Path:
    from tuneloop import registry
    from tuneloop.config import load_params

    entry = registry.champion(load_params(REPO / "params.yaml").task.name)
    if entry is None:
        sys.exit("no champion: run `make demo` first, or pass --model DIR")
    return Path(entry.path)


def _variants(model: Path, scratch: Path, prefix: str = "", recheck_margin: float = 0.0) -> dict:
    from tuneloop.compress import for_serving
    from tuneloop.compress.onnx import export
    from tuneloop.model import load_classifier

    started = time.perf_counter()
    export(model, scratch)
    export_s = time.perf_counter() - started
    clf = load_classifier(model)
    clf.model.to("cpu")
    # quantize_dynamic copies: clf stays fp32
    served = {b: for_serving(clf, b, scratch, recheck_margin=recheck_margin) for b in BACKENDS}
    assert all(served[b].backend == b for b in BACKENDS), {b: served[b].backend for b in BACKENDS}
    if recheck_margin > 0:
        served[PURE_INT8] = for_serving(clf, "onnx-int8", scratch)
    return {"served": {f"{prefix}{b}": c for b, c in served.items()}, "export_s": round(export_s, 1)}


def _speed(served: dict, texts: list[str], batch: int, calls: int) -> dict:
    from tuneloop.model import predict_proba

    for clf in served.values():  # warm-up: first calls allocate
        predict_proba(clf, texts[:batch], batch_size=batch)
    times: dict[str, list[float]] = {b: [] for b in served}
    order = list(served)
    for block in range(-(-calls // BLOCK)):
        calls_in_block = range(block * BLOCK, min(calls, (block + 1) * BLOCK))
        chunks = [[texts[(i * batch + j) % len(texts)] for j in range(batch)] for i in calls_in_block]
        for name in order[block % len(order) :] + order[: block % len(order)]:
            predict_proba(served[name], chunks[0], batch_size=batch)  # untimed: the switch from another backend
            for chunk in chunks:
                start = time.perf_counter()
                predict_proba(served[name], chunk, batch_size=batch)
                times[name].append(time.perf_counter() - start)
    return {
        b: {
            "texts_per_s": round(batch * len(t) / sum(t), 1),
            "p50_ms": round(float(np.percentile(t, 50)) * 1000, 2),
            "p95_ms": round(float(np.percentile(t, 95)) * 1000, 2),
        }
        for b, t in times.items()
    }


def _quality(served: dict, frame) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    from tuneloop.model import predict_proba

    texts, truth = frame["text"].tolist(), frame["label"].astype(str).to_numpy()
    predicted = {b: np.array(clf.labels)[predict_proba(clf, texts).argmax(axis=1)] for b, clf in served.items()}
    return {
        b: {
            "accuracy": round(float(accuracy_score(truth, p)), 4),
            "macro_f1": round(float(f1_score(truth, p, average="macro", zero_division=0)), 4),
            "agreement_with_torch_fp32": round(float((p == predicted["torch"]).mean()), 4),
        }
        for b, p in predicted.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="tuneloop model dir (default: the task's champion)")
    parser.add_argument("--data", type=Path, default=REPO / "data/prepared/test.csv", help="labeled CSV")
    parser.add_argument("--rows", type=int, default=400, help="texts timed (quality uses every row)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per backend and batch size")
    parser.add_argument("--student", type=Path, help="a distilled student's model dir (tuneloop distill), timed beside")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (ONNX Runtime: one per core)")
    parser.add_argument(
        "--recheck-margin", type=float, help="onnx-int8's recheck margin (default: params.yaml's; 0: int8 alone)"
    )
    args = parser.parse_args()

    import torch

    from tuneloop.tabular import read_labeled

    torch.set_num_threads(args.threads)
    model = args.model or _champion_dir()
    frame = read_labeled(args.data)
    unknown = set(frame["label"].astype(str)) - set(json.loads((model / "tuneloop.json").read_text())["labels"])
    if unknown:
        sys.exit(f"{args.data}: labels {sorted(unknown)[:5]} are unknown to {model}; pass its own test file")
    texts = frame["text"].tolist()[: args.rows]
    margin = args.recheck_margin
    if margin is None:
        from tuneloop.config import load_params

        margin = load_params(REPO / "params.yaml").serve.int8_recheck_margin
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as scratch:
        built = _variants(model, Path(scratch) / "teacher", recheck_margin=margin)
        served = built["served"]
        if args.student:
            served |= _variants(args.student, Path(scratch) / "student", "student-", margin)["served"]
        speed = {
            f"batch{b}": _speed(served, texts, b, args.calls if b == 1 else max(args.calls // 4, 10)) for b in (1, 16)
        }
        quality = _quality(served, frame)
    result = {
        "model": str(model),
        "data": str(args.data),
        "rows": len(frame),
        "threads": args.threads,
        "recheck_margin": margin,
        "export_s": built["export_s"],
        "speed": speed,
        "quality": quality,
    }
    for other in ("torch-int8", "onnx", "onnx-int8", *([PURE_INT8] if margin > 0 else [])):
        key = other.replace("-", "_")
        for b in ("batch1", "batch16"):
            result[f"{key}_vs_torch_fp32_{b}"] = round(
                speed[b][other]["texts_per_s"] / speed[b]["torch"]["texts_per_s"], 2
            )
    for b in ("batch1", "batch16"):
        result[f"onnx_int8_vs_torch_int8_{b}"] = round(
            speed[b]["onnx-int8"]["texts_per_s"] / speed[b]["torch-int8"]["texts_per_s"], 2
        )
    if args.student:
        for backend in BACKENDS:
            key = backend.replace("-", "_")
            for b in ("batch1", "batch16"):
                result[f"student_vs_teacher_{key}_{b}"] = round(
                    speed[b][f"student-{backend}"]["texts_per_s"] / speed[b][backend]["texts_per_s"], 2
                )
        result["student_accuracy_drop"] = round(quality["torch"]["accuracy"] - quality["student-torch"]["accuracy"], 4)
    for name in ("onnx-int8", *([PURE_INT8] if margin > 0 else [])):
        drop = quality["torch"]["macro_f1"] - quality[name]["macro_f1"]
        result[f"{name.replace('-', '_')}_macro_f1_drop"] = round(drop, 4)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
