"""Augmentation with few labels: fine-tune with and without `prepare.augment`, side by side in one run.

Method: Banking77 cut to `--classes` classes (20, drawn with base.seed; 0 = all 77) and `--per-class`
training rows each (10, drawn with base.seed), scored on those classes' test rows (at most `--test-rows`,
the same rows for every arm). Each arm fine-tunes the packaged MiniLM with tuneloop's own Trainer setup
(`tuneloop.train.build_trainer`: the train.* params, same seed, so the same initial head) for a fixed number
of optimisation steps, with no early stopping and no checkpoints, then scores the test rows:

- plain: the labeled rows, `--epochs` epochs (S steps);
- noise, same steps: the rows plus `--copies` noisy copies each (`tuneloop.augment.noise`), S steps, so
  the same compute: does augmentation use it better than more passes over the originals?
- noise, same epochs: `--epochs` epochs over the augmented rows (what turning it on in the pipeline does:
  more steps), and plain run for those same steps as its control, so "more steps" and "augmentation"
  are told apart (`--no-same-epochs` skips both).

Each arm reports accuracy, macro-F1, its training seconds (wall time on whatever else the machine runs)
and McNemar's exact test (per-row correctness) against plain at the same number of steps. Contextual
substitution needs an MLM head: the packaged MiniLM has none, and a tiny random one would only insert
random words, so it is measured only with `--mlm FOLDER` (e.g. models/pretrained from `tuneloop pretrain`).

On a busy 2-core machine, one torch thread is faster than two (1.2 s vs 3.7 s per step measured here):

    python bench/augment.py --set train.num_threads=1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def few_labels(
    data_dir: Path, classes: int, per_class: int, test_rows: int, seed: int, workdir: Path
) -> dict[str, Any]:
    """The labeled subset (`classes` seeded classes, 0 = all), a one-row-per-class val file (build_trainer needs
    one; nothing selects on it) and the test sample of those classes, all normalised as prepare normalises."""
    import pandas as pd

    from tuneloop.tabular import LABEL, TEXT, read_table
    from tuneloop.text import normalize_text

    pool = read_table(data_dir / "train.csv").frame.sample(frac=1.0, random_state=seed)
    chosen = pd.Series(sorted(pool[LABEL].unique()))
    chosen = set(chosen.sample(n=classes, random_state=seed) if 0 < classes < len(chosen) else chosen)
    pool = pool[pool[LABEL].isin(chosen)]
    pool[TEXT] = pool[TEXT].map(normalize_text)
    pool = pool.drop_duplicates(TEXT)
    train = pool.groupby(LABEL, sort=True).head(per_class)
    val = pool.drop(train.index).groupby(LABEL, sort=True).head(1)
    test = read_table(data_dir / "test.csv").frame
    test = test[test[LABEL].isin(chosen)].copy()
    test[TEXT] = test[TEXT].map(normalize_text)
    test = test.sample(n=min(test_rows, len(test)), random_state=seed)
    val.to_csv(workdir / "val.csv", index=False)
    return {"train": train.sort_index(), "val": workdir / "val.csv", "test": test}


def fine_tune(params: Any, train_csv: Path, val_csv: Path, test: Any, steps: int, workdir: Path) -> dict[str, Any]:
    """Train for exactly `steps` steps (no evaluation, no early stopping), then predict the test rows."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    from tuneloop.model import resolve_base_model
    from tuneloop.tabular import LABEL, TEXT
    from tuneloop.train import build_trainer

    trainer, info = build_trainer(
        params, train_csv, val_csv, resolve_base_model("minilm"), workdir / "ckpt", max_steps=steps
    )
    trainer.args.eval_strategy = "no"
    trainer.args.save_strategy = "no"
    trainer.args.load_best_model_at_end = False
    trainer.callback_handler.callbacks = [
        c for c in trainer.callback_handler.callbacks if type(c).__name__ != "EarlyStoppingCallback"
    ]
    started = time.time()
    trainer.train()
    train_s = time.time() - started
    label2id = {label: i for i, label in enumerate(info["labels"])}
    truth = np.array([label2id[v] for v in test[LABEL]])
    predicted = predict(trainer.model, trainer.processing_class, test[TEXT].tolist(), params.train.max_length)
    correct = predicted == truth
    return {
        "rows": info["train_rows"],
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0), 2),
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(float(f1_score(truth, predicted, average="macro")), 4),
        "train_s": round(train_s, 1),
        "_correct": correct,
    }


def predict(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> Any:
    """Predicted label ids in input order. Not `Trainer.predict`: with train.* length-grouped batches its eval
    sampler groups by length too and returns rows shuffled (0.06 accuracy, chance, against the input order)."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start : start + 64], padding=True, truncation=True, max_length=max_length)
            out.append(model(**batch.convert_to_tensors("pt").to(model.device)).logits.argmax(-1).cpu())
    return torch.cat(out).numpy()


def versus(arm: dict[str, Any], control: dict[str, Any]) -> dict[str, Any]:
    """Deltas against the control arm (same steps) and McNemar's exact test on per-row correctness."""
    from tuneloop.gate import mcnemar

    test = mcnemar(control["_correct"], arm["_correct"])
    return {
        "accuracy_delta": round(arm["accuracy"] - control["accuracy"], 4),
        "macro_f1_delta": round(arm["macro_f1"] - control["macro_f1"], 4),
        "mcnemar_p": round(float(test["p_value"]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "banking77")
    parser.add_argument("--classes", type=int, default=20, help="classes drawn with base.seed; 0 = all 77")
    parser.add_argument("--per-class", type=int, default=10, help="labeled training rows per class")
    parser.add_argument("--test-rows", type=int, default=1000, help="test rows scored (a seeded sample)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the plain arm (its steps: S)")
    parser.add_argument("--copies", type=int, default=1, help="prepare.augment.copies")
    parser.add_argument("--mlm", default=None, help="a model with an MLM head: also measure contextual")
    parser.add_argument("--no-same-epochs", action="store_true", help="skip the same-epochs arm and its control")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="tuneloop param override")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-augment"))
    args = parser.parse_args()

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    from tuneloop.augment import augment, load_mlm
    from tuneloop.config import AugmentParams, load_params
    from tuneloop.tabular import TEXT

    params = load_params(args.params, args.overrides)
    seed, batch = params.base.seed, params.train.batch_size
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = few_labels(args.data_dir, args.classes, args.per_class, args.test_rows, seed, args.workdir)
    started = time.time()
    sets: dict[str, Path] = {"plain": args.workdir / "plain.csv"}
    data["train"].to_csv(sets["plain"], index=False)
    timings: dict[str, float] = {}
    methods = [["noise"]] + ([["contextual"]] if args.mlm else [])
    for method in methods:
        clock = time.time()
        aug = AugmentParams(methods=method, copies=args.copies, mlm_model=args.mlm)
        mlm = load_mlm(args.mlm, "--mlm") if method == ["contextual"] else None
        rows = augment(data["train"], aug, seed, mlm=mlm, avoid=set(data["test"][TEXT]))
        timings[method[0]] = round(time.time() - clock, 2)
        sets[method[0]] = args.workdir / f"{method[0]}.csv"
        rows.to_csv(sets[method[0]], index=False)

    steps = args.epochs * -(-len(data["train"]) // batch)
    run = {name: fine_tune(params, path, data["val"], data["test"], steps, args.workdir) for name, path in sets.items()}
    result: dict[str, Any] = {"same_steps": {"plain": run.pop("plain")}}
    for name, arm in run.items():
        result["same_steps"][name] = arm | versus(arm, result["same_steps"]["plain"])
    if not args.no_same_epochs:
        noisy = fine_tune(params, sets["noise"], data["val"], data["test"], steps * (1 + args.copies), args.workdir)
        control = fine_tune(params, sets["plain"], data["val"], data["test"], noisy["steps"], args.workdir)
        result["same_epochs"] = {"plain_same_steps_as_noise": control, "noise": noisy | versus(noisy, control)}
    for group in result.values():
        for arm in group.values():
            arm.pop("_correct")
    summary = {
        "data": str(args.data_dir),
        "train_rows": len(data["train"]),
        "classes": int(data["train"]["label"].nunique()),
        "test_rows": len(data["test"]),
        "base_model": "minilm (packaged)",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}",
        "params": {"lr": params.train.lr, "batch_size": batch, "seed": seed, "copies": args.copies}
        | {"word_share": AugmentParams().word_share, "overrides": args.overrides},
        "augment_s": timings,
        "contextual": "measured" if args.mlm else "not measured: the packaged MiniLM has no MLM head (pass --mlm)",
        **result,
        "wall_s": round(time.time() - started, 1),
    }
    json.dump(summary, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
