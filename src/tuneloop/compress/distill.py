"""Knowledge distillation: a smaller student of the teacher's own family, trained on the teacher's soft labels
plus the true labels, then judged and registered like any model (tuneloop.release), its teacher recorded.

The student is the teacher with fewer encoder layers: embeddings, pooler and classifier head copied, and
`student_layers` of the teacher's layers, every k-th ending at the top (6 -> 3 keeps 1, 3, 5), as DistilBERT
initialises its student from every other layer. The loss is Hinton's: `alpha` x T^2 x KL(teacher || student)
at temperature T, plus (1 - alpha) x cross-entropy on the true label. Unlabeled production texts from the
prediction log (`distill.transfer_rows`, the newest N) add teacher-only transfer examples.

Everything else is the train stage's: its TrainingArguments (`train:` params, but `distill.lr` and
`distill.early_stopping_patience`: a student cut from its teacher needs more adaptation), dynamic padding,
checkpoints and the self-describing model dir.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.config import Params
from tuneloop.errors import TuneloopError
from tuneloop.tabular import TEXT

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

LAYER_KEY = re.compile(r"^(.*\.(?:encoder|transformer)\.layer\.)(\d+)(\..*)$")
NO_LABEL = -100  # cross-entropy's ignore_index: a transfer text has only the teacher's soft label


class DistillError(TuneloopError):
    """The student cannot be built (another family, more layers than the teacher) or trained."""


def kept_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Every k-th teacher layer, ending at the top one (6 -> 3: [1, 3, 5]; 12 -> 4: [2, 5, 8, 11]).

    Measured on the demo (6 -> 3, lr 2e-4): [1, 3, 5] reached val loss 0.170 / accuracy 0.950 where the
    first-to-last spacing [0, 2, 5] reached 0.192 / 0.927 (test accuracy 0.9665 for both)."""
    if not 1 <= student_layers < teacher_layers:
        raise DistillError(
            f"--student-layers {student_layers}: a student needs at least 1 and fewer than the teacher's "
            f"{teacher_layers} layers"
        )
    step = teacher_layers / student_layers
    return [round((i + 1) * step) - 1 for i in range(student_layers)]


def make_student(teacher: Any, student_layers: int) -> Any:
    """A copy of `teacher` (a transformers sequence classifier) keeping `kept_layers` of its encoder layers."""
    config = copy.deepcopy(teacher.config)
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int):
        raise DistillError(f"{type(teacher).__name__}: no num_hidden_layers in its config; distil a BERT-family model")
    keep = kept_layers(total, student_layers)
    config.num_hidden_layers = student_layers
    student = type(teacher)(config)
    state: dict[str, Any] = {}
    for key, value in teacher.state_dict().items():
        match = LAYER_KEY.match(key)
        if match is None:
            state[key] = value
        elif int(match.group(2)) in keep:
            state[f"{match.group(1)}{keep.index(int(match.group(2)))}{match.group(3)}"] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DistillError(f"{type(teacher).__name__}: layers not where a BERT-family model keeps them ({missing[:3]})")
    return student


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor) -> Any:
    """Patient KD's intermediate loss (Sun et al. 2019): mean over rows and layers of the squared distance between
    the L2-normalised [CLS] states of each student layer and of the teacher layer it was cut from; both
    (rows, layers, hidden)."""
    import torch.nn.functional as F

    s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    return (s - t).pow(2).sum(-1).mean()


def distill_loss(
    logits: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor, t: float, alpha: float
) -> Any:
    """alpha x T^2 x KL(teacher_T || student_T) + (1 - alpha) x CE(labels); rows labelled NO_LABEL count in the
    KL term only. Without teacher logits (validation) it is the cross-entropy alone."""
    import torch.nn.functional as F

    logits = logits.float()
    hard = F.cross_entropy(logits, labels, ignore_index=NO_LABEL) if (labels != NO_LABEL).any() else logits.sum() * 0
    if teacher is None:
        return hard
    student_t, teacher_t = F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher.float() / t, dim=-1)
    soft = F.kl_div(student_t, teacher_t, reduction="batchmean", log_target=True)
    return alpha * t * t * soft + (1 - alpha) * hard


def _trainer_class() -> type:
    import torch
    from transformers import Trainer

    class DistillTrainer(Trainer):
        """Trainer whose loss reads the batch's teacher logits (absent in validation batches)."""

        def __init__(self, *args: Any, temperature: float, alpha: float, hidden_weight: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.temperature, self.alpha, self.hidden_weight = temperature, alpha, hidden_weight

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None):
            teacher = inputs.pop("teacher_logits", None)
            teacher_cls = inputs.pop("teacher_cls", None)
            labels = inputs.pop("labels")
            outputs = model(**inputs, output_hidden_states=teacher_cls is not None)
            loss = distill_loss(outputs.logits, teacher, labels, self.temperature, self.alpha)
            if teacher_cls is not None:  # hidden_states[0] is the embeddings' output: layer i is i + 1
                student_cls = torch.stack([h[:, 0] for h in outputs.hidden_states[1:]], dim=1)
                loss = loss + self.hidden_weight * hidden_loss(student_cls, teacher_cls)
            return (loss, outputs) if return_outputs else loss

    return DistillTrainer


class _Collator:
    """Dynamic padding of the token ids; the teacher's logits and [CLS] states stacked as they are."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer, padding="longest")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import numpy as np
        import torch

        extra = {
            key: torch.from_numpy(np.stack([np.asarray(f.pop(key), dtype=np.float32) for f in features]))
            for key in ("teacher_logits", "teacher_cls")
            if features and key in features[0]
        }
        return dict(self.pad(features)) | extra


class _Rows:
    """Token ids, labels (NO_LABEL for transfer texts) and, for training, the teacher's logits and (with
    `distill.hidden_weight`) its [CLS] states at the kept layers."""

    def __init__(
        self, input_ids: list[list[int]], labels: list[int], teacher: Any = None, teacher_cls: Any = None
    ) -> None:
        self.input_ids, self.labels, self.teacher, self.teacher_cls = input_ids, labels, teacher, teacher_cls

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row: dict[str, Any] = {"input_ids": self.input_ids[i], "labels": self.labels[i]}
        if self.teacher is not None:
            row["teacher_logits"] = self.teacher[i]
        if self.teacher_cls is not None:
            row["teacher_cls"] = self.teacher_cls[i]
        return row


def _teacher_outputs(clf: Any, texts: list[str], batch_size: int, layers: list[int] | None) -> tuple[Any, Any]:
    """The teacher's logits for every text, input order, and (given `layers`) its [CLS] state after each of those
    encoder layers, shape (texts, layers, hidden); precomputed once, as the teacher never changes."""
    import numpy as np
    import torch

    from tuneloop.model import length_sorted_batches

    logits = np.zeros((len(texts), len(clf.labels)), dtype=np.float32)
    cls = np.zeros((len(texts), len(layers or []), clf.model.config.hidden_size), dtype=np.float32)
    clf.model.eval()
    with torch.inference_mode():
        for idx, batch in length_sorted_batches(clf, texts, batch_size):
            out = clf.model(**batch, output_hidden_states=bool(layers))
            logits[idx] = out.logits.float().cpu().numpy()
            if layers:
                cls[idx] = torch.stack([out.hidden_states[k + 1][:, 0] for k in layers], 1).float().cpu().numpy()
    return logits, (cls if layers else None)


def distill(
    params: Params,
    teacher_dir: str | Path,
    train_path: str | Path,
    val_path: str | Path,
    out_dir: str | Path,
    *,
    teacher_tag: str | None = None,
    student_layers: int | None = None,
    transfer_texts: list[str] | None = None,
) -> dict[str, Any]:
    """Train a student of the model in `teacher_dir` and write it as a tuneloop model dir; returns its tuneloop.json.

    Raises:
        DistillError: the teacher's family has no layers to drop, the layer count is not smaller, or the
            training rows hold labels the teacher does not know.
    """
    from tuneloop.model import load_classifier
    from tuneloop.train import TrainResult, _fit, _write_model_dir, describe_run, load_training_data, run_facts

    started, layers = time.time(), student_layers or params.distill.student_layers
    teacher = load_classifier(teacher_dir)
    train_df, val_df, labels = load_training_data(params, Path(train_path), Path(val_path))
    unknown = sorted(set(labels) - set(teacher.labels))
    if unknown:
        raise DistillError(f"{train_path}: labels {unknown[:5]} are unknown to the teacher {teacher_dir}")
    extra = [t for t in (transfer_texts or []) if isinstance(t, str) and t.strip()]
    augmented = _augmented_texts(params, train_df, avoid=extra)
    extra += augmented
    checkpoints = Path(out_dir).with_name(Path(out_dir).name + ".checkpoints")
    shutil.rmtree(checkpoints, ignore_errors=True)
    trainer, batch = _trainer(
        params, teacher, make_student(teacher.model, layers), train_df, val_df, extra, checkpoints
    )
    steps = _fit(trainer, None, batch, params.train.max_length)
    final = trainer.evaluate()
    val_metrics = {k: float(final[f"eval_{k}"]) for k in ("loss", "accuracy", "macro_f1")}
    run = TrainResult(Path(out_dir), val_metrics, 0.0, time.time() - started, steps)
    info: dict[str, Any] = {"labels": teacher.labels, "base_model": f"distilled from {teacher_tag or teacher_dir}"}
    info |= {"device": str(trainer.args.device), "train_rows": len(train_df), "val_rows": len(val_df)}
    meta = describe_run(params, info | {"production_rows": 0}, {"train": Path(train_path), "val": Path(val_path)}, run)
    meta["distillation"] = _record(params, teacher, teacher_tag or str(teacher_dir), layers, len(extra), len(augmented))
    _write_model_dir(trainer, Path(out_dir), meta, run_facts(run, params))
    shutil.rmtree(checkpoints, ignore_errors=True)
    log.info("student (%d layers) written to %s: val %s", layers, out_dir, val_metrics)
    return meta


def _augmented_texts(params: Params, train_df: Any, avoid: list[str]) -> list[str]:
    """`distill.augment_copies` light-noise variants of each training text (tuneloop.augment's noise, seeded),
    for transfer: the teacher labels them, so a typo that would change the true label costs nothing. TinyBERT's
    task distillation gains most of its accuracy from such augmented transfer sets."""
    if not params.distill.augment_copies:
        return []
    from tuneloop.augment import noise

    rows = noise(
        train_df,
        seed=params.base.seed,
        copies=params.distill.augment_copies,
        word_share=params.prepare.augment.word_share,
        avoid=avoid,
    )
    return [str(t) for t in rows[TEXT]]


def _record(
    params: Params, teacher: Any, teacher_name: str, layers: int, transfer_rows: int, augmented_rows: int
) -> dict[str, Any]:
    """What the student's tuneloop.json says about its distillation (`distillation`)."""
    total = int(teacher.model.config.num_hidden_layers)
    return {
        "teacher": teacher_name,
        "teacher_layers": total,
        "student_layers": layers,
        "kept_layers": kept_layers(total, layers),
        "temperature": params.distill.temperature,
        "alpha": params.distill.alpha,
        "hidden_weight": params.distill.hidden_weight,
        "transfer_rows": transfer_rows,  # the prediction log's texts and the augmented ones
        "augmented_rows": augmented_rows,
    }


def _trainer(
    params: Params, teacher: Any, student: Any, train_df: Any, val_df: Any, extra: list[str], checkpoints: Path
) -> tuple[Any, int]:
    """The train stage's TrainingArguments and early stopping around the student, the teacher's logits in every
    training row (labelled rows and transfer texts); returns (trainer, batch size)."""
    import torch
    from transformers import EarlyStoppingCallback

    from tuneloop.train import encode, macro_f1_metrics, training_arguments

    p = params.train
    label2id = {label: i for i, label in enumerate(teacher.labels)}
    keep = kept_layers(int(teacher.model.config.num_hidden_layers), student.config.num_hidden_layers)
    texts = train_df[TEXT].tolist() + extra
    hidden = keep if params.distill.hidden_weight > 0 else None
    soft, cls = _teacher_outputs(teacher, texts, params.evaluate.batch_size, hidden)
    encoded = encode(teacher.tokenizer, train_df, label2id, p.max_length)
    transfer_ids = teacher.tokenizer(extra, truncation=True, max_length=p.max_length)["input_ids"] if extra else []
    train_rows = _Rows(encoded.input_ids + transfer_ids, encoded.labels + [NO_LABEL] * len(extra), soft, cls)
    val = encode(teacher.tokenizer, val_df, label2id, p.max_length)
    cuda = torch.cuda.is_available()
    batch = p.cuda_batch_size if cuda else p.batch_size
    args = training_arguments(params, checkpoints, max(1, -(-len(train_rows) // batch)), cuda)
    args.remove_unused_columns = False  # teacher_logits is not a forward() argument; the loss reads it
    args.learning_rate = params.distill.lr
    trainer = _trainer_class()(
        model=student,
        args=args,
        train_dataset=train_rows,
        eval_dataset=_Rows(val.input_ids, val.labels),
        data_collator=_Collator(teacher.tokenizer),
        processing_class=teacher.tokenizer,
        compute_metrics=macro_f1_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=params.distill.early_stopping_patience)],
        temperature=params.distill.temperature,
        alpha=params.distill.alpha,
        hidden_weight=params.distill.hidden_weight,
    )
    return trainer, batch
