"""Structured pruning of attention heads, measured: does it buy speed at the same quality?

The champion (or --model) in torch fp32 beside copies with the least important heads physically removed
(query/key/value rows and output-projection columns cut with transformers' prune_linear_layer, so the
matrices shrink, not masked). A head's importance is what ablating it alone costs: the validation loss with
its output-projection columns zeroed, minus the loss with all heads (Michel et al. 2019 measure the same
thing by gradient). Heads are removed globally, least important first, at least one kept per layer.
No retraining after pruning: the question is whether pruning alone is worth shipping before distillation
or quantisation.

Speed is timed interleaved call by call with bench/inference_backends.py's timer (texts/s and p50/p95 at
batch 1 and 16); quality with its scorer (accuracy, macro-F1, agreement with the unpruned model) on every
row of the test file. Prints one JSON object.

    .venv/bin/python bench/prune_heads.py                       # the champion, data/prepared/{val,test}.csv
    .venv/bin/python bench/prune_heads.py --model DIR --val V.csv --data T.csv --fractions 0.25,0.5
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference_backends import _champion_dir, _quality, _speed  # noqa: E402  (the same timer and scorer)


def _layers(model):
    return model.base_model.encoder.layer


def _loss(clf, frame, batch_size: int = 64) -> float:
    import torch
    import torch.nn.functional as F

    ids = {label: i for i, label in enumerate(clf.labels)}
    texts, labels = frame["text"].tolist(), torch.tensor([ids[str(v)] for v in frame["label"]])
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = clf.tokenizer(texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt")
            logits = clf.model(**enc).logits
            total += float(F.cross_entropy(logits, labels[start : start + batch_size], reduction="sum"))
    return total / len(texts)


def head_importance(clf, frame) -> list[tuple[float, int, int]]:
    """(loss increase when the head alone is ablated, layer, head) for every head."""
    import torch

    base = _loss(clf, frame)
    scores = []
    for layer_index, layer in enumerate(_layers(clf.model)):
        dense = layer.attention.output.dense
        size = layer.attention.self.attention_head_size
        for head in range(layer.attention.self.num_attention_heads):
            cols = slice(head * size, (head + 1) * size)
            saved = dense.weight.data[:, cols].clone()
            with torch.no_grad():
                dense.weight.data[:, cols] = 0
            scores.append((_loss(clf, frame) - base, layer_index, head))
            with torch.no_grad():
                dense.weight.data[:, cols] = saved
    return scores


def prune(clf, heads: dict[int, list[int]]):
    """A copy of `clf` with `heads` ({layer: [head, ...]}) physically removed."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    pruned = copy.deepcopy(clf)
    for layer_index, drop in heads.items():
        attention = _layers(pruned.model)[layer_index].attention
        self_attn, size = attention.self, attention.self.attention_head_size
        keep = [h for h in range(self_attn.num_attention_heads) if h not in set(drop)]
        index = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep])
        self_attn.query = prune_linear_layer(self_attn.query, index)
        self_attn.key = prune_linear_layer(self_attn.key, index)
        self_attn.value = prune_linear_layer(self_attn.value, index)
        attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
        self_attn.num_attention_heads, self_attn.all_head_size = len(keep), len(keep) * size
    pruned.model.eval()
    return pruned


def plan(scores: list[tuple[float, int, int]], fraction: float, per_layer: int) -> dict[int, list[int]]:
    """The least important `fraction` of all heads, keeping at least one head in every layer."""
    budget, chosen = round(fraction * len(scores)), {}
    for _, layer, head in sorted(scores):
        if budget == 0:
            break
        if len(chosen.get(layer, [])) < per_layer - 1:
            chosen.setdefault(layer, []).append(head)
            budget -= 1
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="tuneloop model dir (default: the task's champion)")
    parser.add_argument("--val", type=Path, default=REPO / "data/prepared/val.csv", help="labeled CSV for importance")
    parser.add_argument("--data", type=Path, default=REPO / "data/prepared/test.csv", help="labeled CSV scored")
    parser.add_argument("--fractions", default="0.25,0.5", help="shares of all heads removed, comma-separated")
    parser.add_argument("--rows", type=int, default=400, help="texts timed (quality uses every row)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per model at batch 1 (batch 16: /4)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from tuneloop.model import load_classifier
    from tuneloop.tabular import read_labeled

    torch.set_num_threads(args.threads)
    model = args.model or _champion_dir()
    clf = load_classifier(model)
    clf.model.to("cpu").eval()
    val, test = read_labeled(args.val), read_labeled(args.data)
    started = time.perf_counter()
    scores = head_importance(clf, val)
    importance_s = time.perf_counter() - started
    heads = clf.model.config.num_attention_heads
    served = {"torch": clf}
    removed = {}
    for fraction in (float(f) for f in args.fractions.split(",")):
        chosen = plan(scores, fraction, heads)
        name = f"pruned-{round(fraction * 100)}pct"
        served[name] = prune(clf, chosen)
        removed[name] = {str(k): sorted(v) for k, v in sorted(chosen.items())}
    texts = test["text"].tolist()[: args.rows]
    speed = {f"batch{b}": _speed(served, texts, b, args.calls if b == 1 else max(args.calls // 4, 10)) for b in (1, 16)}
    quality = _quality(served, test)
    ratios = {
        name: {
            f"batch{b}": round(speed[f"batch{b}"][name]["texts_per_s"] / speed[f"batch{b}"]["torch"]["texts_per_s"], 2)
            for b in (1, 16)
        }
        for name in served
        if name != "torch"
    }
    result = {
        "model": str(model),
        "data": str(args.data),
        "rows": len(test),
        "threads": args.threads,
        "heads": heads * len(_layers(clf.model)),
        "importance_s": round(importance_s, 1),
        "least_important": [
            {"layer": layer, "head": head, "loss_increase": round(s, 5)} for s, layer, head in sorted(scores)[:5]
        ],
        "most_important": [
            {"layer": layer, "head": head, "loss_increase": round(s, 5)} for s, layer, head in sorted(scores)[-5:]
        ],
        "removed": removed,
        "speed": speed,
        "speedup_vs_unpruned": ratios,
        "quality": quality,
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
