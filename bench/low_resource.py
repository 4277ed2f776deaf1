"""Few labels, much unlabeled text: does continued pre-training (and vocabulary extension) pay, and does the
fine-tuned model beat the TF-IDF baseline? Prints one JSON object.

Method, side by side in one run on one machine, everything seeded (base.seed):
- labeled: `--per-class` rows per class sampled from the dataset's train.csv (80% train / 20% validation,
  per class); unlabeled: every other train text, plus the dataset's unlabeled.csv when it has one
  (capped by `--max-unlabeled`); test: `--test-rows` rows of test.csv (stratified sample, or all);
- baseline: TF-IDF + LinearSVC on the labeled train rows (evaluate's own baseline, tuneloop.baseline);
- plain: `tuneloop train` from the packaged MiniLM on the labeled rows, its vocabulary as it is;
- pretrained: `tuneloop pretrain` (MLM on labeled + unlabeled texts; `--extend-vocab` adds the corpus'
  unreadable units first), then the same `tuneloop train` from its checkpoint.
Both fine-tunes use the same train params (epochs, lr, early stopping): the steps each took are printed, with
the gate's verdict (no champion: floors and beats_baseline) and the base tokenizer's coverage of the train rows.

    .venv/bin/python bench/low_resource.py --dataset banking77 --per-class 10
    .venv/bin/python bench/low_resource.py --dataset toutiao --per-class 200 --extend-vocab --max-unlabeled 20000
    .venv/bin/python bench/low_resource.py --dataset sst2 --per-class 0 --no-pretrain   # default fine-tune vs baseline
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tuneloop.config import load_params
from tuneloop.evaluate import evaluate
from tuneloop.gate import run_gate
from tuneloop.pretrain import run as pretrain
from tuneloop.train import train

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TUNELOOP_SHARED_DATA", REPO.parent / "shared" / "data"))


def splits(args: argparse.Namespace, root: Path, seed: int) -> tuple[Path, Path, Path, Path]:
    """labeled train / val, unlabeled texts and test, written under `root`."""
    folder = DATA / args.dataset
    pool = pd.read_csv(folder / "train.csv", dtype=str, keep_default_na=False)[["text", "label"]]
    labeled = pool.groupby("label", group_keys=False).apply(
        lambda g: g.sample(min(len(g), args.per_class or len(g)), random_state=seed)
    )
    val = labeled.groupby("label", group_keys=False).apply(lambda g: g.sample(max(1, len(g) // 5), random_state=seed))
    unlabeled = pool.drop(index=labeled.index)["text"].tolist()
    if (folder / "unlabeled.csv").is_file():
        unlabeled += pd.read_csv(folder / "unlabeled.csv", dtype=str, keep_default_na=False)["text"].tolist()
    unlabeled = pd.Series(unlabeled).sample(frac=1.0, random_state=seed).head(args.max_unlabeled)
    test = pd.read_csv(folder / "test.csv", dtype=str, keep_default_na=False)[["text", "label"]]
    test = test[test["label"].isin(set(labeled["label"]))]
    if args.test_rows and len(test) > args.test_rows:
        test = test.sample(args.test_rows, random_state=seed)
    paths = root / "train.csv", root / "val.csv", root / "unlabeled.csv", root / "test.csv"
    labeled.drop(index=val.index).to_csv(paths[0], index=False)
    val.to_csv(paths[1], index=False)
    pd.DataFrame({"text": unlabeled}).to_csv(paths[2], index=False)
    test.to_csv(paths[3], index=False)
    return paths


def fine_tune(params, base: str, paths: tuple[Path, ...], out: Path) -> dict:
    """Train, evaluate (with the baseline) and run the gate's floors and beats_baseline (no champion)."""
    started = time.perf_counter()
    result = train(params, paths[0], paths[1], out / "model", base=base, live_dir=None)
    seconds = time.perf_counter() - started
    report = evaluate(params, out / "model", paths[3], out / "eval", behaviour_file="", train_path=paths[0])
    verdict = run_gate(params, out / "model", out / "eval", paths[3])
    beats = next(c for c in verdict.checks if c.name == "beats_baseline")
    return {
        "accuracy": round(report.accuracy, 4),
        "macro_f1": round(report.macro_f1, 4),
        "steps": result.steps,
        "train_seconds": round(seconds, 1),
        "gate": {"passed": verdict.passed, "failed": [c.name for c in verdict.failed], "beats_baseline": beats.passed},
        "baseline": report.baseline,
    }


def coverage_of(base: str, path: Path) -> dict:
    """What validation's tokenizer_coverage measures, for the base model's own tokenizer."""
    from tuneloop.vocab import coverage, load_tokenizer

    return coverage(load_tokenizer(base), pd.read_csv(path)["text"].astype(str).tolist()).summary()


def with_pretraining(args: argparse.Namespace, common: list[str], paths: tuple[Path, ...], root: Path) -> dict:
    """`tuneloop pretrain` on labeled + unlabeled texts, then the same fine-tune from its checkpoint."""
    params = load_params(
        REPO / "params.yaml",
        [
            *common,
            f"vocab.extend={str(args.extend_vocab).lower()}",  # plain fine-tunes the base as it is
            "pretrain.enabled=true",
            f"pretrain.epochs={args.pretrain_epochs}",
            f"pretrain.extra_text=[{paths[2]}]",
        ],
    )
    started = time.perf_counter()
    record = pretrain(params, [paths[0], paths[1]], root / "pretrained")
    seconds = time.perf_counter() - started
    result = fine_tune(params, str(root / "pretrained"), paths, root / "pre")
    result.pop("baseline")
    return result | {
        "pretrain_texts": record["texts"],
        "pretrain_seconds": round(seconds, 1),
        "pretrain_steps": record["steps"],
        "mlm_loss": [record["mlm_loss_before"], record["mlm_loss_after"]],
        "vocab_added": (record["vocab_extension"] or {}).get("added", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="banking77")
    parser.add_argument("--per-class", type=int, default=10, help="labeled rows per class; 0 = every train row")
    parser.add_argument("--test-rows", type=int, default=0, help="0 = the whole test split")
    parser.add_argument("--max-unlabeled", type=int, default=50_000)
    parser.add_argument("--extend-vocab", action="store_true")
    parser.add_argument("--no-pretrain", action="store_true", help="plain fine-tune vs baseline only")
    parser.add_argument("--pretrain-epochs", type=float, default=3.0)
    parser.add_argument("--train-epochs", type=float, default=8.0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra params overrides")
    args = parser.parse_args()
    common = [
        "serve.backend=torch",  # judge the weights; the backends bench measures variants
        f"train.epochs={args.train_epochs}",
        "train.best_metric=loss",
        "gate.latency_requests=20",  # no champion: the latency ratio is not judged
        *args.overrides,
    ]
    with tempfile.TemporaryDirectory(prefix="tuneloop-lowres-") as tmp:
        root = Path(tmp)
        params = load_params(REPO / "params.yaml", common)
        paths = splits(args, root, params.base.seed)
        rows = {name: len(pd.read_csv(p)) for name, p in zip(("train", "val", "unlabeled", "test"), paths)}
        plain = fine_tune(params, params.train.base_model, paths, root / "plain")
        pretrained = None if args.no_pretrain else with_pretraining(args, common, paths, root)
        base_coverage = coverage_of(params.train.base_model, paths[0])
    baseline = plain.pop("baseline")
    result = {
        "dataset": args.dataset,
        "per_class": args.per_class or "all",
        "rows": rows,
        "base_tokenizer_coverage": base_coverage,
        "baseline": {
            "accuracy": round(baseline.accuracy, 4),
            "macro_f1": round(baseline.macro_f1, 4),
            "analyzer": baseline.analyzer,
            "fit_seconds": round(baseline.fit_seconds, 3),
        },
        "plain": plain,
        "pretrained": pretrained,
    }
    if pretrained is not None:
        result["macro_f1_gain_points"] = round(100 * (pretrained["macro_f1"] - plain["macro_f1"]), 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
