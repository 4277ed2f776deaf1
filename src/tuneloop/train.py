"""Train stage: fine-tune a sequence classifier from a base model with transformers' Trainer.

Fast defaults rather than textbook ones (see params.yaml `train:` for the why of each value):
texts are tokenised once, without padding, and reused every epoch; batches are grouped by length
and padded only to their own longest text (dynamic padding); fused AdamW everywhere; CUDA gets bf16 + TF32 (fp16
before Ampere) and a large batch; CPU gets every core. Early stopping on validation macro-F1 restores the best
checkpoint; checkpoints are written every evaluation so `--resume` continues after a crash with
optimizer, scheduler, RNG and data order restored (all Trainer's own resume logic).

Data-parallel: the same command runs unchanged under `torchrun --nproc-per-node N` or `accelerate launch`
(or `train.nproc` / `--nproc N`, which launch torchrun themselves): one process per device, the Trainer's
DDP synchronises gradients, batch sizes in params are global (split over the processes) and length-grouped
batches are planned over the global batch, so N processes take the same steps as one; only rank 0 writes
dvclive files, the model and logs progress (Trainer itself saves checkpoints on rank 0 only).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from transformers import TrainerCallback  # this module is only imported to train

from tuneloop.config import Params
from tuneloop.errors import DataError, first_line
from tuneloop.model import (
    META_FILE,
    RESTORE,
    ModelError,
    load_tokenizer,
    loader_errors,
    resolve_base_model,
    write_model_folder,
)
from tuneloop.provenance import RUN_FILE, data_version, git_revision, utc_now
from tuneloop.tabular import LABEL, ORIGIN, PRODUCTION, TEXT, read_labeled

if TYPE_CHECKING:
    import torch
    from transformers import Trainer

log = logging.getLogger(__name__)

MIN_TRAIN_ROWS_PER_CLASS = 2  # one example cannot be both learnt from and checked
MIN_CLASSES = 2  # one label is not a classifier: it predicts that label for everything


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    val_metrics: dict[str, float]
    train_samples_per_second: float
    wall_time_s: float
    steps: int


# ---------------------------------------------------------------- processes


def world() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun / accelerate launch set them; (0, 1) when run alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes files and logs progress."""
    return world()[0] == 0


def per_device_batch(global_batch: int, key: str, processes: int = 0) -> int:
    """The batch each of `processes` (default: this run's world size) takes so that all of them together
    take `global_batch` per step.

    Raises:
        ModelError: the global batch does not split evenly over the processes.
    """
    processes = processes or world()[1]
    if global_batch % processes:
        raise ModelError(
            f"train.{key}={global_batch} is the global batch (all processes together) and does not split over "
            f"{processes} processes: set it to a multiple of {processes} (e.g. "
            f"--set train.{key}={max(1, round(global_batch / processes)) * processes})."
        )
    return global_batch // processes


def processes_to_launch(nproc: int) -> int:
    """train.nproc resolved: 0 = one per visible CUDA device (1 without one)."""
    if nproc:
        return nproc
    import torch

    return max(1, torch.cuda.device_count())


def preflight(params: Params, train_path: Path, val_path: Path, base: str, processes: int) -> None:
    """Before launching `processes` training processes, the errors each would hit, said once: a global batch
    that does not split, unusable data, a missing base model (torchrun would print N copies and its own
    failure report)."""
    key = "cuda_batch_size" if _cuda() else "batch_size"
    per_device_batch(getattr(params.train, key), key, processes)
    load_training_data(params, train_path, val_path)
    resolve_base_model(base)


def under_launcher() -> bool:
    """Whether torchrun / accelerate launch started this process (they set LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def launch(nproc: int, args: list[str]) -> int:
    """Run `tuneloop <args>` as `nproc` data-parallel processes under torchrun on this machine; its exit code.

    `--standalone` rendezvous on a free local port, so two launches never collide. torchrun sets
    OMP_NUM_THREADS=1; build_trainer gives each CPU process its share of the cores instead. SIGTERM/SIGINT
    reach torchrun (which stops its workers) and nothing of the tree outlives this process (procs.run_tree;
    torchrun starts each worker in its own session, where a kill of this process group would not reach it).
    """
    from tuneloop.procs import run_tree

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "tuneloop", *args]
    log.info("launching %d training processes: %s", nproc, " ".join(cmd))
    return run_tree(cmd, dict(os.environ), "torchrun")


# ---------------------------------------------------------------- data


def load_split(path: str | Path, max_samples: int = 0, seed: int = 0) -> pd.DataFrame:
    """Read a labeled CSV (text, label) and refuse rows Trainer could not use.

    With `max_samples`, a seeded random sample (files are often sorted by label, so the first N
    rows would hold one class).
    """
    frame = read_labeled(path)
    if max_samples and max_samples < len(frame):
        frame = frame.sample(n=max_samples, random_state=seed).sort_index()
    return frame


def label_space(train: pd.DataFrame, val: pd.DataFrame, train_path: Path, val_path: Path) -> list[str]:
    """The label list (ids = positions): prepare's labels.json beside the train file, else sorted.

    Raises:
        DataError: a val label never appears in train, or a class has fewer than two train rows.
    """
    labels_file = Path(train_path).with_name("labels.json")
    seen = sorted(train[LABEL].unique())
    labels = json.loads(labels_file.read_text())["labels"] if labels_file.is_file() else seen
    unseen = sorted(set(val[LABEL]) - set(train[LABEL]))
    if unseen:
        raise DataError(
            f"{val_path}: labels {unseen} do not appear in {train_path}. The model cannot learn "
            "them: add training rows or remove them from the validation file."
        )
    counts = train[LABEL].value_counts()
    small = counts[counts < MIN_TRAIN_ROWS_PER_CLASS]
    if len(small):
        listed = ", ".join(f"'{k}' ({v})" for k, v in small.items())
        raise DataError(
            f"{train_path}: classes with fewer than {MIN_TRAIN_ROWS_PER_CLASS} training rows: {listed}. "
            "Add examples or merge the class (validate.min_rows_per_class guards this upstream)."
        )
    return [*labels, *(s for s in seen if s not in labels)]


def require_two_classes(train: pd.DataFrame, train_path: Path, sampled: int = 0) -> None:
    """Refuse to train what cannot be a classifier: one class (or none) left to learn.

    A one-label model predicts that label for everything and scores a macro-F1 of 1.0 on a
    validation split holding only it, so the run would look perfect.

    Raises:
        DataError: naming the file, the classes left and the fix.
    """
    classes = sorted(train[LABEL].unique())
    if len(classes) >= MIN_CLASSES:
        return
    held = f"only the class '{classes[0]}'" if classes else "no class"
    if sampled:
        raise DataError(
            f"{train_path}: the {sampled}-row sample leaves {held} with at least "
            f"{MIN_TRAIN_ROWS_PER_CLASS} rows; a classifier needs {MIN_CLASSES}. Raise train.max_samples "
            "(or --max-samples), or set it to 0 to train on every row."
        )
    raise DataError(
        f"{train_path}: holds {held} ({len(train)} rows); a classifier needs at least {MIN_CLASSES}. "
        "Add rows of another class to the data (then `dvc repro prepare`), or check that "
        "validation did not quarantine them (see reports/validation)."
    )


class EncodedDataset:
    """Token ids tokenised once (unpadded) plus integer labels; a map-style torch dataset."""

    def __init__(self, input_ids: list[list[int]], labels: list[int]):
        self.input_ids = input_ids
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}

    @property
    def real_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    def subset(self, rows: Sequence[int]) -> EncodedDataset:
        """The given rows, sharing their token ids (cross-validation folds index one encoding)."""
        return EncodedDataset([self.input_ids[i] for i in rows], [self.labels[i] for i in rows])


def encode(tokenizer: Any, frame: pd.DataFrame, label2id: dict[str, int], max_length: int) -> EncodedDataset:
    """Tokenise all texts in one fast-tokenizer call, truncated but not padded."""
    ids = tokenizer(frame[TEXT].tolist(), truncation=True, max_length=max_length)["input_ids"]
    return EncodedDataset(ids, [label2id[v] for v in frame[LABEL]])


# ---------------------------------------------------------------- trainer


def training_arguments(
    params: Params, checkpoint_dir: Path, steps_per_epoch: int, cuda: bool, max_steps: int = -1
) -> Any:
    """TrainingArguments from the `train:` section, with the fast settings per device."""
    from transformers import TrainingArguments

    p = params.train
    eval_steps = p.eval_steps or steps_per_epoch
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=p.epochs,
        max_steps=max_steps,
        learning_rate=learning_rate(params, cuda),
        weight_decay=p.weight_decay,
        warmup_steps=p.warmup_ratio,  # a float < 1 is a ratio of all steps
        lr_scheduler_type=p.scheduler,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,  # every evaluation is a checkpoint: best-model restore and resume
        save_total_limit=p.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss" if p.best_metric == "loss" else "macro_f1",
        greater_is_better=p.best_metric != "loss",
        logging_steps=max(1, min(50, eval_steps // 4)),
        train_sampling_strategy="group_by_length",
        seed=params.base.seed,
        data_seed=params.base.seed,
        report_to=[],  # dvclive is attached as a callback, nothing else reports
        disable_tqdm=not _interactive(),
        save_only_model=False,  # optimizer, scheduler and RNG state are what makes --resume exact
        # DDP: every parameter of a BERT classifier takes part in the loss, so the extra autograd traversal
        # find_unused_parameters=True costs per step (and PyTorch warns about) buys nothing.
        ddp_find_unused_parameters=False,
        # The loss is a per-process mean over equal shards (weighted_loss ignores num_items_in_batch), which
        # DDP's gradient averaging turns into the global mean; True would all-gather item counts every step
        # and scale the loss by the process count.
        average_tokens_across_devices=False,
        **device_arguments(params, cuda),
    )


def device_arguments(params: Params, cuda: bool) -> dict[str, Any]:
    """The TrainingArguments that differ between a CUDA device and the CPU: batch, precision, optimizer, loaders."""
    import torch

    p = params.train
    # bf16 and TF32 need Ampere or newer; older GPUs (T4, V100) get fp16 mixed precision instead.
    ampere = cuda and torch.cuda.get_device_capability()[0] >= 8
    key = "cuda_batch_size" if cuda else "batch_size"
    batch = per_device_batch(getattr(p, key), key)
    return {
        "per_device_train_batch_size": batch,
        "per_device_eval_batch_size": batch * 2,
        "bf16": ampere,
        "fp16": cuda and not ampere,
        "tf32": ampere,
        # Fused AdamW on the CPU too (torch >= 2.4): one kernel over all parameters. MiniLM-L6 (105 tensors, 22.7M
        # parameters), 2 cores: 17 ms an optimizer step vs 110 ms for the per-tensor loop "adamw_torch" runs, and
        # 30 training steps at batch 32 went 47.7-66.7 -> 59.7-76.5 samples/s (interleaved runs), same losses.
        "optim": "adamw_torch_fused",
        "dataloader_pin_memory": cuda,
        # CPU: the data is pre-tokenised and workers would only steal cores from the model. CUDA: collating
        # (padding) the next batches in two workers keeps the host off the step's critical path.
        "dataloader_num_workers": 2 if cuda else 0,
        "dataloader_persistent_workers": cuda,
        "torch_compile": cuda and p.compile,
        "use_cpu": not cuda,
    }


def learning_rate(params: Params, cuda: bool) -> float:
    """train.lr is the rate at the global batch train.batch_size; on CUDA (global batch cuda_batch_size)
    train.lr_scaling says whether it grows with the batch: linearly, by its square root, or not at all."""
    p = params.train
    if not cuda or p.lr_scaling == "none":
        return p.lr
    ratio = p.cuda_batch_size / p.batch_size
    return p.lr * (ratio if p.lr_scaling == "linear" else ratio**0.5)


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()


def macro_f1_metrics(eval_pred: Any) -> dict[str, float]:
    """compute_metrics for Trainer: accuracy and macro-F1 on the validation split."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, labels = eval_pred
    predicted = logits.argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro")),
    }


def weighted_loss(weights: torch.Tensor | None, smoothing: float):
    """Cross-entropy with optional class weights and label smoothing (Trainer's compute_loss_func)."""
    import torch.nn.functional as F

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs.logits.float()
        w = weights.to(logits.device) if weights is not None else None
        return F.cross_entropy(logits, labels, weight=w, label_smoothing=smoothing)

    return loss


class GlobalBatchSampler:
    """Trainer's length-grouped sampling, planned over the global batch and seeded per epoch.

    Trainer plans length groups over the per-device batch, so N processes would take other batches than
    one process with the same global batch. Here the index order is the one a single process takes, and
    accelerate's shards give rank r the r-th slice of every global batch: the same steps, whatever N. The
    order depends on (seed, epoch) only (Trainer calls set_epoch), so --resume continues it exactly.
    """

    def __init__(self, lengths: list[int], global_batch: int, seed: int):
        self.lengths, self.global_batch, self.seed, self.epoch = lengths, global_batch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Any:
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.global_batch, generator=generator))


def trainer_class() -> type[Trainer]:
    """Trainer with GlobalBatchSampler as its training sampler."""
    from transformers import Trainer

    class GlobalBatchTrainer(Trainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset: Any = train_dataset if train_dataset is not None else self.train_dataset  # EncodedDataset
            args = self.args
            global_batch = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
            return GlobalBatchSampler([len(ids) for ids in dataset.input_ids], global_batch, args.data_seed or 0)

    return GlobalBatchTrainer


class ThroughputCallback(TrainerCallback):
    """One log line per logging step (loss, samples/s, lr), and samples/s after warm-up for benchmarks."""

    def __init__(self, batch_size: int, warmup_steps: int = 5):
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps
        self._warm: tuple[float, int] | None = None  # (time, step) once warm-up is over
        self._end: tuple[float, int] | None = None
        self._last: tuple[float, int] = (0.0, 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_step = state.global_step  # > 0 when resuming
        self._last = (time.perf_counter(), state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        now = (time.perf_counter(), state.global_step)
        if state.global_step == self._start_step + self.warmup_steps:
            self._warm = now
        self._end = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if logs and "eval_macro_f1" in logs:
            log.info(
                "step %d/%d | val macro-F1 %.4f | val accuracy %.4f | val loss %.4f",
                state.global_step,
                state.max_steps,
                logs["eval_macro_f1"],
                logs["eval_accuracy"],
                logs["eval_loss"],
            )
        if not logs or "loss" not in logs:
            return
        now = time.perf_counter()
        rate = (state.global_step - self._last[1]) * self.batch_size / max(now - self._last[0], 1e-9)
        self._last = (now, state.global_step)
        logs["samples_per_second"] = round(rate, 1)
        log.info(
            "step %d/%d | loss %.4f | %.1f samples/s | lr %.2e",
            state.global_step,
            state.max_steps,
            logs["loss"],
            rate,
            logs.get("learning_rate", 0.0),
        )

    @property
    def samples_per_second(self) -> float:
        """Training samples per second after the first `warmup_steps` steps (0 if the run was shorter)."""
        if self._warm is None or self._end is None or self._end[1] <= self._warm[1]:
            return 0.0
        return (self._end[1] - self._warm[1]) * self.batch_size / max(self._end[0] - self._warm[0], 1e-9)


def open_live(live_dir: Path, resume: bool = False) -> Any:
    """A dvclive logger writing metrics and curves under `live_dir`, or None where dvclive cannot run.

    Under `dvc exp run` dvclive joins the experiment DVC started; otherwise it only writes files
    (save_dvc_exp=False: a plain CLI run must not create experiments behind the user's back).
    dvclive 3.49 fails in a git repository with no commit yet; training goes on without it.
    """
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    try:
        # dvcyaml=None: dvc.yaml declares the stage's metrics and plots; dvclive must not edit it.
        return Live(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
    except SCMError as exc:
        log.warning("dvclive disabled (%s): commit once so metrics and plots can be tracked", exc)
        return None


def load_training_data(
    params: Params, train_path: Path, val_path: Path, max_samples: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Both splits (sampled when asked) and the label space, refusing what cannot be a classifier."""
    limit = max_samples or params.train.max_samples
    train_df = load_split(train_path, limit, params.base.seed)
    val_df = load_split(val_path, limit, params.base.seed)
    if limit:  # a small sample may hold a class once or not at all: learn and score only those it holds twice
        counts = train_df[LABEL].value_counts()
        thin = sorted(counts[counts < MIN_TRAIN_ROWS_PER_CLASS].index)
        if thin:
            log.info(
                "the %d-row sample holds classes %s fewer than %d times; they sit this run out",
                limit,
                thin,
                MIN_TRAIN_ROWS_PER_CLASS,
            )
            train_df = train_df[~train_df[LABEL].isin(thin)]
        val_df = val_df[val_df[LABEL].isin(set(train_df[LABEL]))]
    require_two_classes(train_df, train_path, limit)
    return train_df, val_df, label_space(train_df, val_df, train_path, val_path)


def starting_point(params: Params, pretrained: str | Path | None) -> str:
    """The model to fine-tune: the pretrain stage's output when it holds a model (pretrain.enabled), else
    train.base_model (the stage then wrote only its pretrain.json marker)."""
    if pretrained is not None and (Path(pretrained) / "config.json").is_file():
        return str(pretrained)
    return params.train.base_model


def load_base_model(base: str, labels: list[str], seed: int) -> tuple[Any, Any, str]:
    """Tokenizer and a sequence classifier with a fresh head for `labels`, from safetensors only."""
    from transformers import AutoModelForSequenceClassification, set_seed

    source = resolve_base_model(base)
    set_seed(seed)  # the new classifier head's init depends on it
    try:
        with loader_errors(f"cannot load base model '{base}'", RESTORE, keep=(OSError, ValueError)):
            tokenizer = load_tokenizer(source)
            model = AutoModelForSequenceClassification.from_pretrained(
                source,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: i for i, label in enumerate(labels)},
                problem_type="single_label_classification",
                ignore_mismatched_sizes=True,
                use_safetensors=True,  # never a pickled pytorch_model.bin (torch.load) from a base folder
                # attention: transformers picks SDPA (flash / memory-efficient kernels on CUDA) for every model
                # that supports it (MiniLM loads as "sdpa"); forcing it would refuse older custom architectures
            )
    except OSError as exc:
        raise ModelError(
            f"cannot load base model '{base}': {first_line(exc)} Offline, a base model must "
            "be a local folder (or already in the Hugging Face cache) with model.safetensors weights "
            "(pickled pytorch_model.bin is refused: re-save it with save_pretrained); 'minilm' is the "
            "packaged one."
        ) from None
    except ValueError as exc:
        raise ModelError(
            f"base model '{base}' is not classifier-compatible ({first_line(exc)}). Use a "
            "BERT-family encoder that AutoModelForSequenceClassification supports."
        ) from None
    return tokenizer, model, source


def class_weights(train_df: pd.DataFrame, labels: list[str]) -> torch.Tensor:
    """Inverse-frequency loss weights (train.class_weights), one per label id."""
    import torch

    counts = train_df[LABEL].map({label: i for i, label in enumerate(labels)}).value_counts()
    counts = counts.reindex(range(len(labels)), fill_value=1)
    return torch.tensor((len(train_df) / (len(labels) * counts)).to_numpy(), dtype=torch.float32)


def training_callbacks(patience: int, throughput: ThroughputCallback, live_dir: Path | None, resume: bool) -> list[Any]:
    """Early stopping, the one-line-per-log progress, and dvclive when it has a folder."""
    from transformers import EarlyStoppingCallback

    callbacks: list[Any] = [EarlyStoppingCallback(early_stopping_patience=patience), throughput]
    live = open_live(live_dir, resume) if live_dir is not None and is_main_process() else None
    if live is not None:
        callbacks.append(live_callback(live))
    return callbacks


TIMINGS = re.compile(r"runtime|per_second")  # the Trainer's and ThroughputCallback's timing keys


def live_callback(live: Any) -> Any:
    """transformers' DVCLiveCallback without the run's timings: dvclive/ is a DVC output of the train stage, so
    the same data, code and params must write the same bytes there (run.json keeps the throughput)."""
    from transformers.integrations import DVCLiveCallback

    class ReproducibleLive(DVCLiveCallback):
        def on_log(self, args: Any, state: Any, control: Any, model: Any = None, logs: Any = None, **kw: Any) -> None:
            logs = {k: v for k, v in (logs or {}).items() if not TIMINGS.search(k)}
            super().on_log(args, state, control, model=model, logs=logs, **kw)

    return ReproducibleLive(live=live)


def build_trainer(
    params: Params,
    train_path: Path,
    val_path: Path,
    base: str,
    checkpoint_dir: Path,
    *,
    max_samples: int = 0,
    max_steps: int = -1,
    live_dir: Path | None = None,
    resume: bool = False,
) -> tuple[Trainer, dict[str, Any]]:
    """Load data and base model and assemble the Trainer; returns it with run info for metadata."""
    import torch

    from tuneloop.vocab import extend_if_asked

    p = params.train
    # Every core, shared out among this machine's training processes (torchrun would leave each one thread).
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(p.num_threads or max(1, (os.cpu_count() or 1) // local_processes))
    train_df, val_df, labels = load_training_data(params, train_path, val_path, max_samples)
    tokenizer, model, source = load_base_model(base, labels, params.base.seed)
    extension = extend_if_asked(params.vocab, tokenizer, model, train_df[TEXT].tolist())
    label2id = {label: i for i, label in enumerate(labels)}
    train_ds, val_ds = (encode(tokenizer, df, label2id, p.max_length) for df in (train_df, val_df))
    weights = class_weights(train_df, labels) if p.class_weights else None
    opts: dict[str, Any] = {"weights": weights, "max_steps": max_steps, "live_dir": live_dir, "resume": resume}
    trainer, throughput = make_trainer(params, model, tokenizer, train_ds, val_ds, checkpoint_dir, **opts)
    tokens = train_ds.real_tokens / max(len(train_ds), 1)
    info = {"labels": labels, "base_model": base, "base_model_source": source, "real_tokens_per_sample": tokens}
    info |= {"vocab_extension": extension, "pretrained": _pretrain_record(Path(source))}
    info |= {"train_rows": len(train_ds), "val_rows": len(val_ds), "device": "cuda" if _cuda() else "cpu"}
    info["production_rows"] = int((train_df.get(ORIGIN, pd.Series(dtype=str)) == PRODUCTION).sum())
    return trainer, info | {"batch_size": throughput.batch_size, "throughput": throughput}


def make_trainer(
    params: Params,
    model: Any,
    tokenizer: Any,
    train_ds: EncodedDataset,
    val_ds: EncodedDataset,
    checkpoint_dir: Path,
    *,
    weights: torch.Tensor | None = None,
    max_steps: int = -1,
    live_dir: Path | None = None,
    resume: bool = False,
) -> tuple[Trainer, ThroughputCallback]:
    """The train stage's Trainer over already-encoded splits: its arguments, loss, early stopping and
    progress line. Split from `build_trainer` so cross-validation fits each fold the same way."""
    from transformers import DataCollatorWithPadding, PrinterCallback

    p, cuda = params.train, _cuda()
    batch_size = p.cuda_batch_size if cuda else p.batch_size  # global: all processes together
    throughput, steps_per_epoch = ThroughputCallback(batch_size), max(1, -(-len(train_ds) // batch_size))
    trainer = trainer_class()(
        model=model,
        args=training_arguments(params, checkpoint_dir, steps_per_epoch, cuda, max_steps),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        # dynamic padding; multiples of 8 suit tensor cores
        data_collator=DataCollatorWithPadding(tokenizer, padding="longest", pad_to_multiple_of=8 if cuda else None),
        processing_class=tokenizer,
        compute_metrics=macro_f1_metrics,
        compute_loss_func=weighted_loss(weights, p.label_smoothing),
        callbacks=training_callbacks(p.early_stopping_patience, throughput, live_dir, resume),
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw dicts; ThroughputCallback logs one line instead
    return trainer, throughput


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _pretrain_record(source: Path) -> dict[str, Any] | None:
    marker = source / "pretrain.json"  # tuneloop.pretrain.MARKER: written beside a pre-trained model
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete checkpoint folder, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None


def train(
    params: Params,
    train_path: str | Path,
    val_path: str | Path,
    out_dir: str | Path,
    *,
    base: str | None = None,
    resume: bool = False,
    checkpoint_dir: str | Path | None = None,
    live_dir: str | Path | None = "dvclive",
    max_samples: int = 0,
    max_steps: int = -1,
    keep_checkpoints: bool = False,
) -> TrainResult:
    """Fine-tune on `train_path` (early stopping on `val_path`), then write a self-describing model dir to
    `out_dir`, replaced atomically. `base` overrides train.base_model; `resume` continues from the newest
    checkpoint in `checkpoint_dir` (default `<out_dir>.checkpoints`); `live_dir` is dvclive's folder (None:
    off); `max_samples` / `max_steps` bound smoke runs."""
    started = time.time()
    if under_launcher():  # a worker whose torchrun agent was killed must not train on as an orphan
        from tuneloop.procs import exit_with_parent

        exit_with_parent()
    out_dir, train_path, val_path = Path(out_dir), Path(train_path), Path(val_path)
    checkpoints = Path(checkpoint_dir) if checkpoint_dir else out_dir.with_name(out_dir.name + ".checkpoints")
    resume_from = checkpoint_to_resume(checkpoints, resume)
    opts: dict[str, Any] = {"live_dir": Path(live_dir) if live_dir else None, "resume": resume}
    opts |= {"max_samples": max_samples, "max_steps": max_steps}
    trainer, info = build_trainer(params, train_path, val_path, base or params.train.base_model, checkpoints, **opts)
    steps = _fit(trainer, resume_from, info["batch_size"], params.train.max_length)
    final = trainer.evaluate()  # the restored best model on the validation split
    val_metrics = {k: float(final[f"eval_{k}"]) for k in ("loss", "accuracy", "macro_f1")}
    speed = info.pop("throughput").samples_per_second
    result = TrainResult(out_dir, val_metrics, speed, time.time() - started, steps)
    meta = describe_run(params, info, {"train": train_path, "val": val_path}, result)
    meta["best_checkpoint"] = trainer.state.best_model_checkpoint
    if not is_main_process():  # the other ranks hold the same weights; rank 0 writes them
        return result
    _write_model_dir(trainer, out_dir, meta, run_facts(result, params))
    if not keep_checkpoints:
        shutil.rmtree(checkpoints, ignore_errors=True)
    log.info("model written to %s: val %s, %.1f samples/s, %.0f s", out_dir, val_metrics, speed, result.wall_time_s)
    return result


# The train keys that change the model: exactly the train stage's params in dvc.yaml (with base.seed and vocab;
# tests/code/test_dvc_deps.py holds the two lists equal). num_threads, nproc, compile and save_total_limit do not.
MODEL_TRAIN_KEYS = (
    "base_model",
    "max_length",
    "epochs",
    "batch_size",
    "cuda_batch_size",
    "lr",
    "lr_scaling",
    "weight_decay",
    "warmup_ratio",
    "scheduler",
    "label_smoothing",
    "class_weights",
    "early_stopping_patience",
    "best_metric",
    "eval_steps",
    "max_samples",
)


def model_params(params: Params) -> dict[str, Any]:
    """The params the model depends on (MODEL_TRAIN_KEYS, base.seed, vocab), as tuneloop.json records them."""
    dumped = params.model_dump(mode="json", by_alias=True)
    train = {key: dumped["train"][key] for key in MODEL_TRAIN_KEYS}
    return {"base": {"seed": dumped["base"]["seed"]}, "train": train, "vocab": dumped["vocab"]}


def describe_run(params: Params, info: dict[str, Any], inputs: dict[str, Path], run: TrainResult) -> dict[str, Any]:
    """tuneloop.json: what the model dir says about itself (params, data hashes, the run's outcome). Only what the
    same data, code and params reproduce: when and how fast it ran, and the run's whole params file, are in
    run.json (`run_facts`). It held the whole params file once: a key no stage depends on (serve.backend, a gate
    threshold) then changed the file, so the committed dvc.lock's train outs differed from what a new run wrote."""
    return {
        "tuneloop_version": _version(),
        "labels": info["labels"],
        "base_model": info["base_model"],
        "params": model_params(params),
        "data": data_version(inputs),
        "device": info["device"],
        "processes": world()[1],  # data-parallel training processes (torchrun / accelerate launch)
        "train_rows": info["train_rows"],
        "val_rows": info["val_rows"],
        "production_train_rows": info["production_rows"],  # feedback rows merged by tuneloop.retrain
        "steps": run.steps,
        "val_metrics": run.val_metrics,
        "vocab_extension": info.get("vocab_extension"),  # units this run added to the tokenizer (vocab.extend)
        "pretrained": info.get("pretrained"),  # the pretrain stage's record when it started from its checkpoint
    }


def run_facts(run: TrainResult, params: Params) -> dict[str, Any]:
    """run.json (provenance.RUN_FILE): this run's git revision, time stamp, run time, throughput and its whole
    params file (`run_params`)."""
    return {
        "git_revision": git_revision(),
        "created_at": utc_now(),
        "wall_time_s": round(run.wall_time_s, 1),
        "train_samples_per_second": round(run.train_samples_per_second, 1),
        "run_params": params.model_dump(mode="json", by_alias=True),
    }


def checkpoint_to_resume(checkpoints: Path, resume: bool) -> str | None:
    """With --resume, the newest checkpoint (an error when there is none); else none, old ones cleared."""
    if not resume:
        if checkpoints.exists() and is_main_process():
            shutil.rmtree(checkpoints)  # a fresh run must not mix with an old run's checkpoints
        return None
    newest = last_checkpoint(checkpoints)
    if newest is None:
        raise ModelError(
            f"--resume: no checkpoint in {checkpoints}. Start without --resume "
            "(a run writes a checkpoint at every evaluation)."
        )
    return newest


def _fit(trainer: Trainer, resume_from: str | None, batch_size: int, max_length: int) -> int:
    """Run the training loop; an out-of-memory GPU is a message naming the fix. Returns the steps taken."""
    import torch

    try:
        return int(trainer.train(resume_from_checkpoint=resume_from).global_step)
    except torch.OutOfMemoryError:
        raise ModelError(
            f"out of GPU memory at batch size {batch_size} and max_length {max_length}: lower "
            f"train.cuda_batch_size (e.g. --set train.cuda_batch_size={max(1, batch_size // 2)}) or train.max_length."
        ) from None


def _write_model_dir(trainer: Trainer, out_dir: Path, meta: dict[str, Any], facts: dict[str, Any]) -> None:
    """Weights (safetensors), config.json (id2label/label2id), tokenizer, tuneloop.json and run.json."""
    write_model_folder(out_dir, lambda tmp: trainer.save_model(str(tmp)), {META_FILE: meta, RUN_FILE: facts})


def _version() -> str:
    from tuneloop import __version__

    return __version__
