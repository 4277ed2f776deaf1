"""Pretrain stage: continued masked-language-model pre-training on the domain's own text.

Between choosing a base model and fine-tuning it: the encoder reads the corpus' texts (train and
validation splits; never the test split), any unlabeled text files listed in `pretrain.extra_text`,
and optionally the newest prediction-log texts, and learns to fill masked words. With
`vocab.extend` the tokenizer first gains the corpus' unreadable units (tuneloop.vocab), which this
stage is what teaches. Masking is whole-word (every piece of a word masked together, through the
tokenizer's offsets); BERT pre-tokenises CJK text into single characters, so there it is
per-character. Next-sentence prediction is left out: texts here are single short utterances or
titles with no next sentence, and RoBERTa showed MLM alone matches or beats MLM + NSP.

With `pretrain.enabled: false` the stage writes only a marker, and `train` starts from
`train.base_model`; enabled, it writes a model folder (MLM head included, for augmentation) that
`train` starts from. Either way DVC re-runs `train` when this stage's output changes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop.config import Params
from tuneloop.errors import DataError, first_line
from tuneloop.model import RESTORE, ModelError, load_tokenizer, loader_errors, resolve_base_model, write_model_folder
from tuneloop.provenance import RUN_FILE, data_version, file_digest, utc_now
from tuneloop.tabular import TEXT, decode_file, read_labeled, read_rows, refuse_repeated, write_text_atomic

log = logging.getLogger(__name__)

MARKER = "pretrain.json"  # what the stage did (or that it was off): in the output folder either way
HELD_OUT = 0.05  # share of the texts kept aside to measure the MLM loss before and after


def read_extra_text(path: str | Path) -> list[str]:
    """Unlabeled text: a .csv/.tsv with a `text` column, else a plain file with one text per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pretrain.extra_text names {path}, which does not exist. Fix the path or remove it.")
    if path.suffix.lower() in (".csv", ".tsv"):  # the corpus' reader: its encoding, quoting and size checks
        frame, _ = read_rows(path, (TEXT,))
        refuse_repeated(path, frame, {TEXT: TEXT})
        if TEXT not in frame:
            raise DataError(f"{path}: no '{TEXT}' column (columns: {list(frame.columns)[:10]}). Name the text column "
                            f"'{TEXT}', or give a plain .txt file with one text per line.")  # fmt: skip
        return frame[TEXT].fillna("").astype(str).tolist()
    text, _ = decode_file(path, strict=True)
    return [line.strip() for line in text.splitlines() if line.strip()]


def corpus(params: Params, splits: list[Path]) -> list[str]:
    """Every pre-training text, deduplicated in a fixed order: the labeled splits, extra files, the log."""
    texts: list[str] = []
    for split in splits:
        texts += read_labeled(split)[TEXT].tolist()
    for extra in params.pretrain.extra_text:
        texts += read_extra_text(extra)
    if params.pretrain.prediction_log_rows:
        from tuneloop.predlog import read_window

        logged = read_window(last=params.pretrain.prediction_log_rows)
        texts += logged[TEXT].dropna().astype(str).tolist() if TEXT in logged else []
    return list(dict.fromkeys(t for t in texts if t.strip()))


def run(params: Params, splits: list[Path], out_dir: str | Path, max_steps: int = -1) -> dict[str, Any]:
    """The stage: pre-train when `pretrain.enabled`, else write the marker only. Returns what pretrain.json says."""
    out = Path(out_dir)
    if not params.pretrain.enabled:
        if out.exists():
            shutil.rmtree(out)
        record = {"enabled": False, "note": "pretrain.enabled is false: train starts from train.base_model"}
        write_text_atomic(json.dumps(record, indent=2) + "\n", out / MARKER)
        return record
    return pretrain(params, splits, out, max_steps)


def _load(base: str, seed: int) -> tuple[Any, Any]:
    from transformers import AutoModelForMaskedLM, set_seed

    set_seed(seed)  # an MLM head the base lacks is initialised from it
    try:
        source = resolve_base_model(base)
        with loader_errors(f"cannot load base model '{base}' for pre-training", RESTORE, keep=(OSError, ValueError)):
            return load_tokenizer(source), AutoModelForMaskedLM.from_pretrained(source, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load base model '{base}' for masked-language-model pre-training: {first_line(exc)}. "
            "train.base_model must be a local BERT-family folder with model.safetensors."
        ) from None


class _Texts:
    """Tokenised texts with offsets: the collator masks whole words from them."""

    def __init__(self, tokenizer: Any, texts: list[str], max_length: int):
        enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
        self.rows = [{"input_ids": i, "offset_mapping": o} for i, o in zip(enc["input_ids"], enc["offset_mapping"])]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class _PaddedOffsets:
    """transformers' MLM collator pads input_ids but not offset_mapping, which whole-word masking needs:
    pad the offsets to the batch's longest text with (0, 0), the offsets of special tokens (never masked)."""

    def __init__(self, collator: Any):
        self.collator = collator

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        longest = max(len(f["input_ids"]) for f in features)
        padded = [
            f | {"offset_mapping": f["offset_mapping"] + [(0, 0)] * (longest - len(f["input_ids"]))} for f in features
        ]
        return self.collator(padded)


def pretrain(params: Params, splits: list[Path], out: Path, max_steps: int = -1) -> dict[str, Any]:
    """Extend the vocabulary (vocab.extend), then MLM-train on the corpus; write the model and pretrain.json."""
    import torch
    from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer

    from tuneloop.vocab import extend_if_asked

    started, p = time.time(), params.pretrain
    torch.set_num_threads(params.train.num_threads or os.cpu_count() or 1)
    texts = corpus(params, splits)
    if len(texts) < 20:
        raise DataError(f"pre-training needs text: found {len(texts)} distinct texts in {[str(s) for s in splits]}.")
    tokenizer, model = _load(params.train.base_model, params.base.seed)
    extension = extend_if_asked(params.vocab, tokenizer, model, texts)
    held = max(int(len(texts) * HELD_OUT), min(64, len(texts) // 5))  # enough masked tokens for a loss
    order = pd.Series(texts).sample(frac=1.0, random_state=params.base.seed).tolist()
    train_ds, eval_ds = (_Texts(tokenizer, t, params.train.max_length) for t in (order[held:], order[:held]))
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=p.mlm_probability, whole_word_mask=p.whole_word_mask, seed=params.base.seed
    )
    trainer = Trainer(
        model=model,
        args=_arguments(params, out, max_steps),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=_PaddedOffsets(collator) if p.whole_word_mask else collator,
    )
    trainer.remove_callback(PrinterCallback)  # raw dicts on stdout; the stage logs one line at the end instead
    before = trainer.evaluate()["eval_loss"]
    steps = int(trainer.train().global_step)
    after = trainer.evaluate()["eval_loss"]
    record = _record(params, splits, texts, extension, steps, before, after)
    facts = {"wall_time_s": round(time.time() - started, 1), "created_at": utc_now()}
    _save(trainer, tokenizer, out, record, facts)
    log.info("pre-trained on %d texts, %d steps: MLM loss %.3f -> %.3f (perplexity %.1f -> %.1f)",
             len(texts), steps, before, after, math.exp(min(before, 50)), math.exp(min(after, 50)))  # fmt: skip
    return record | facts


def _arguments(params: Params, out: Path, max_steps: int) -> Any:
    import torch
    from transformers import TrainingArguments

    p, cuda = params.pretrain, torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(out.with_name(out.name + ".checkpoints")),
        num_train_epochs=p.epochs,
        max_steps=max_steps,
        per_device_train_batch_size=params.train.cuda_batch_size if cuda else p.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=p.lr,
        warmup_steps=0.06,  # a float < 1 is a ratio of all steps
        weight_decay=0.01,
        bf16=cuda,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        report_to=[],
        seed=params.base.seed,
        data_seed=params.base.seed,
        remove_unused_columns=False,  # the collator reads offset_mapping for whole-word masking
        disable_tqdm=True,
        use_cpu=not cuda,
    )


def _record(
    params: Params,
    splits: list[Path],
    texts: list[str],
    extension: dict[str, Any] | None,
    steps: int,
    before: float,
    after: float,
) -> dict[str, Any]:
    return {
        "enabled": True,
        "base_model": params.train.base_model,
        "texts": len(texts),
        "data": data_version({s.stem: s for s in splits}),
        "extra_text": {str(f): file_digest(f, "md5") for f in params.pretrain.extra_text},
        "prediction_log_rows": params.pretrain.prediction_log_rows,
        "steps": steps,
        "mlm_loss_before": round(before, 4),
        "mlm_loss_after": round(after, 4),
        "vocab_extension": extension,
        "params": params.pretrain.model_dump(),
    }


def _save(trainer: Any, tokenizer: Any, out: Path, record: dict[str, Any], facts: dict[str, Any]) -> None:
    """The MLM model with its tokenizer, plus the base's pooler (the classifier reads it; MLM has none); the
    run's time stamp and run time in RUN_FILE, out of the record train copies into its tuneloop.json."""

    def save(tmp: Path) -> None:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _keep_pooler(Path(resolve_base_model(record["base_model"])), tmp)

    write_model_folder(out, save, {MARKER: record, RUN_FILE: facts})
    shutil.rmtree(out.with_name(out.name + ".checkpoints"), ignore_errors=True)


def _keep_pooler(base: Path, model_dir: Path) -> None:
    """Copy the base's pooler into the saved weights: BertForMaskedLM drops it, and a sequence classifier
    built from the folder would otherwise start from a random pooler."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = base / "model.safetensors"
    if not source.is_file():
        return
    with safe_open(str(source), "pt") as handle:
        pooler = {k: handle.get_tensor(k) for k in handle.keys() if "pooler." in k}
    if not pooler:
        return
    weights = load_file(str(model_dir / "model.safetensors"))
    weights |= {("bert." + k if not k.startswith("bert.") else k): v for k, v in pooler.items()}
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
