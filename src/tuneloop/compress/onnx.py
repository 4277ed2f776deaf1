"""ONNX Runtime variants of a fine-tuned classifier: export, graph fusion, int8, and the checks that keep a
wrong variant from being served.

`export(model_dir, out)` writes into `out` (a registry entry keeps it as `onnx/`):
- model.onnx: the classifier exported with torch's torch.export-based ONNX exporter, then ONNX Runtime's
  BERT fusions (SkipLayerNormalization, BiasGelu: `onnxruntime.transformers.optimizer`). The graph returns
  the logits and the mean-pooled last hidden state, so the service's logged embedding comes from the same
  pass, as with torch.
- model.int8.onnx: model.onnx with every MatMul's weights quantised to int8 (ONNX Runtime's dynamic
  quantiser: activation scales per call). Served with serve.int8_recheck_margin > 0, its runner recomputes with
  model.onnx the rows whose top two probabilities are closer than the margin: the labels int8's rounding
  changes are such rows (Banking77 MiniLM: every flip had a margin under 0.13; README: Compression).
- manifest.json: each file's SHA-256, the source weights' SHA-256, and each variant's probabilities on
  PARITY_TEXTS at export time.

Exporter, chosen by measurement (all-MiniLM-L6, transformers 5.24, torch 2.13): with transformers' default SDPA
attention the TorchScript exporter (`dynamo=False`) traced the attention-mask branches as constants (logits off
by 0.046 on a padded batch), while the torch.export-based one matched to 6e-8 but its graph gets no attention
fusion. With eager attention the TorchScript graph is exact (6e-7, padded and single texts) and fully fused,
and its int8 variant is 10-23% faster. So: eager attention, TorchScript first, torch.export if that fails or
differs (EXPORTERS); either must reproduce torch on PARITY_TEXTS, batched and one by one. Optimum was not
used: it adds a dependency for what these calls do.

`load(variants_dir, backend, clf)` is the only way a variant reaches `predict_proba`: it checks the file's
SHA-256 (against the registry's record when given, else the manifest's), that it reproduces its export-time
probabilities, and, for fp32, that it predicts what the torch model does. Any failure is a CompressError, on
which the caller serves the torch backend instead and logs why (`tuneloop.model.for_serving`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuneloop.compress import MANIFEST
from tuneloop.errors import TuneloopError, first_line
from tuneloop.provenance import file_digest, weights_digest
from tuneloop.tabular import write_text_atomic

if TYPE_CHECKING:
    from tuneloop.model import Classifier

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
OPSET = 18  # the torch.export-based exporter's; the TorchScript one writes opset 17
# Tried in this order; the first whose graph reproduces torch's probabilities wins. Measured on the demo MiniLM
# (eager attention): the TorchScript graph gets ONNX Runtime's full BERT fusion (EmbedLayerNormalization,
# Attention x6, BiasGelu, SkipLayerNormalization) and int8 ran 578 / 669 texts/s at batch 1 / 16; the
# torch.export graph only gets BiasGelu and SkipLayerNormalization (no attention fusion): 469 / 601.
EXPORTERS = ("torchscript", "dynamo")
FP32_MAX_PROB_DIFF = 1e-3  # the fp32 graph computes what torch does; more than rounding is a wrong export
REPRODUCE_MAX_PROB_DIFF = 1e-3  # a variant must give, when loaded, the probabilities it gave when exported
# Varied lengths (1 to ~60 tokens), scripts and padding: enough to exercise the dynamic axes and the mask.
PARITY_TEXTS = [
    "I lost my card yesterday",
    "where is my parcel?",
    "ok",
    "The transfer I made on Monday still has not arrived and the recipient keeps asking me about it, "
    "can you tell me what is going on and when it will be there?",
    "refund please!!!",
    "¿Dónde está mi tarjeta nueva? Llevo dos semanas esperando",
    "我的卡被吞了",
    "card charged twice 3x €40.00 #1234",
]


class CompressError(TuneloopError):
    """A variant cannot be built, or one on disk is missing, damaged or does not predict what it should."""


# The int8 graph's ops are so small on a call of a few short texts that waking a second thread costs more than
# it saves: one thread up to this many tokens (batch x padded length). Demo MiniLM, 2 cores, ms per call with
# 1 / 2 threads: int8 1.46 / 1.88 at 1 text (~20 tokens), 2.84 / 3.39 at 2, 6.64 / 6.00 at 4; fp32 4.20 / 3.21
# at 1 text already, so the fp32 variant always uses every core.
SMALL_CALL_TOKENS = 64


@dataclass
class Runner:
    """An ONNX Runtime session for one variant: tokenised numpy batch in, (logits, pooled) out. `small`, when
    set, is a one-thread session of the same file for calls of at most SMALL_CALL_TOKENS tokens. `exact`, when
    set (the int8 variant, serve.int8_recheck_margin > 0), is the fp32 variant's runner: rows whose top two
    probabilities are closer than `margin` are computed again by it (module docstring)."""

    session: Any
    inputs: list[str]
    backend: str
    sha256: str
    small: Any = None
    exact: Runner | None = None
    margin: float = 0.0

    def __call__(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self.inputs}
        small = self.small is not None and feed[self.inputs[0]].size <= SMALL_CALL_TOKENS
        logits, pooled = (self.small if small else self.session).run(["logits", "pooled"], feed)
        if self.exact is not None:
            return self._recheck(feed, logits, pooled)
        return logits, pooled

    def _recheck(self, feed: dict[str, np.ndarray], logits: np.ndarray, pooled: np.ndarray) -> tuple[Any, Any]:
        """The close rows' logits and pooled states from the exact runner, the rest as they are."""
        assert self.exact is not None
        if logits.shape[1] < 2:
            return logits, pooled
        top_two = np.sort(_softmax(logits), axis=1)[:, -2:]
        close = np.flatnonzero(top_two[:, 1] - top_two[:, 0] < self.margin)
        if close.size == 0:
            return logits, pooled
        mask = feed["attention_mask"][close]
        real = np.flatnonzero(mask.any(axis=0))  # drop only the trailing columns no close row uses (padding)
        width = int(real[-1]) + 1 if real.size else mask.shape[1]
        exact_logits, exact_pooled = self.exact({name: values[close, :width] for name, values in feed.items()})
        logits, pooled = logits.copy(), pooled.copy()
        logits[close], pooled[close] = exact_logits, exact_pooled
        return logits, pooled


def export(model_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Build model.onnx, model.int8.onnx and manifest.json in `out` from the tuneloop model dir.

    Raises:
        CompressError: the model does not export (another architecture, an operator ONNX lacks), or the
            exported graph does not predict what torch does.
    """
    from tuneloop.model import load_classifier, predict_proba

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        clf = load_classifier(model_dir)
        clf.model.to("cpu")  # type: ignore[arg-type]  # transformers' to() overloads confuse mypy
        expected = predict_proba(clf, PARITY_TEXTS)
        exporter, inputs = _export_checked(clf, out / FILES["onnx"], expected)
        _quantise(out / FILES["onnx"], out / FILES["onnx-int8"])
    except Exception as exc:  # the model's loader and the exporters raise many types: each means "no variant"
        raise CompressError(f"{model_dir}: ONNX export failed ({type(exc).__name__}: {_first_line(exc)})") from exc
    probs = {b: _run(Runner(_session(out / FILES[b]), inputs, b, ""), clf, PARITY_TEXTS) for b in FILES}
    manifest = {
        "version": MANIFEST_VERSION,
        "source_weights_sha256": weights_digest(Path(model_dir)),
        "exporter": exporter,
        "inputs": inputs,
        "opset": OPSET,
        "variants": {
            b: {
                "file": FILES[b],
                "sha256": file_digest(out / FILES[b]),
                "parity_probs": probs[b].round(6).tolist(),
                "agreement_with_torch": float((probs[b].argmax(1) == expected.argmax(1)).mean()),
                "max_prob_diff_from_torch": float(np.abs(probs[b] - expected).max()),
            }
            for b in FILES
        },
    }
    write_text_atomic(json.dumps(manifest, indent=2) + "\n", out / MANIFEST)
    log.info("exported %s to ONNX (%s exporter) in %s", model_dir, exporter, out)
    return manifest


def _export_checked(clf: Classifier, path: Path, expected: np.ndarray) -> tuple[str, list[str]]:
    """The first exporter (EXPORTERS) whose fused graph predicts what torch does, on the parity texts in one
    padded batch and one by one; returns (exporter, graph inputs)."""
    failures = []
    if hasattr(clf.model, "set_attn_implementation"):
        clf.model.set_attn_implementation("eager")  # the attention pattern ONNX Runtime's fusion recognises
    for exporter in EXPORTERS:
        try:
            inputs = _export_graph(clf, path, exporter)
            runner = Runner(_session(path), inputs, exporter, "")
            diffs = [np.abs(_run(runner, clf, PARITY_TEXTS) - expected).max()]
            diffs += [np.abs(_run(runner, clf, [t]) - expected[i]).max() for i, t in enumerate(PARITY_TEXTS)]
        except Exception as exc:  # an exporter that cannot trace this model: try the next
            failures.append(f"{exporter}: {type(exc).__name__}: {_first_line(exc)}")
            continue
        if max(diffs) <= FP32_MAX_PROB_DIFF:
            return exporter, inputs
        failures.append(f"{exporter}: differs from torch by {max(diffs):.2g} in probability")
    raise CompressError(f"no exporter reproduces the torch model ({'; '.join(failures)})")


def _export_graph(clf: Classifier, path: Path, exporter: str) -> list[str]:
    """Export logits + mean-pooled last hidden state with dynamic batch and sequence axes, then fuse."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    names: list[str] = ["input_ids", "attention_mask", "token_type_ids"]
    inputs = [n for n in names if n in clf.tokenizer.model_input_names]
    sample = clf.tokenizer(PARITY_TEXTS[:4], padding=True, truncation=True, max_length=64, return_tensors="pt")
    module = _pooled(clf.model, inputs).eval()
    with tempfile.TemporaryDirectory(prefix="tuneloop-onnx-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not the model's
        raw = Path(tmp) / "raw.onnx"
        common: dict[str, Any] = {"input_names": inputs, "output_names": ["logits", "pooled"], "verbose": False}
        if exporter == "torchscript":
            axes = {n: {0: "batch", 1: "sequence"} for n in inputs} | {"logits": {0: "batch"}, "pooled": {0: "batch"}}
            args = tuple(sample[n] for n in inputs)
            torch.onnx.export(module, args, str(raw), dynamic_axes=axes, opset_version=17, dynamo=False, **common)
        else:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=max(clf.max_length, 64))
            shapes = {n: {0: batch, 1: seq} if n in inputs else None for n in names}
            args = tuple(sample[n] if n in inputs else None for n in names)
            torch.onnx.export(module, args, str(raw), dynamic_shapes=shapes, opset_version=OPSET, dynamo=True, **common)
        config = clf.model.config
        fused = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0)),
            hidden_size=int(getattr(config, "hidden_size", 0)),
        )
        fused.save_model_to_file(str(path))
    return inputs


def _pooled_module() -> type:  # nn.Module is imported lazily: no torch import to read a manifest
    import torch

    class Pooled(torch.nn.Module):
        """The classifier's logits and the mean over real tokens of its last hidden state (float32)."""

        def __init__(self, model: Any, inputs: list[str]) -> None:
            super().__init__()
            self.model, self.inputs = model, inputs

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> tuple[Any, Any]:
            feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            feed = {k: v for k, v in feed.items() if k in self.inputs}
            out = self.model(**feed, output_hidden_states=True)
            hidden = out.hidden_states[-1].float()
            mask = feed["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            return out.logits.float(), (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    return Pooled


def _pooled(model: Any, inputs: list[str]) -> Any:
    return _pooled_module()(model, inputs)


def _quantise(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the fused graph holds com.microsoft ops (Attention, SkipLayerNormalization) ONNX's shape inference cannot type
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # the quantiser logs a line per tensor and advice on the root logger
    try:
        # Per-channel weight scales: MiniLM fine-tuned on Banking77, 2,464 test rows, label agreement with torch
        # fp32 0.9777 -> 0.9862 and accuracy 0.8904 -> 0.8929, at 4.20x -> 3.94x torch fp32's texts/s at batch 1
        # and 2.61x -> 2.58x at batch 16 (interleaved, one run). What else was measured is in the README.
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, extra_options=extra)
    finally:
        root.setLevel(level)


def _session(path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session. Intra-op spinning off: spinning threads took the CPU from everything else in
    the process (measured: torch in the same process fell 3-4x), and the service shares its process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Memory patterns are planned and kept per input shape; the service's (batch, length) shapes vary without
    # end, so RSS grew in steps (+1.9% in 120 s of random batches) and stays flat without them, at the same
    # texts/s (4,174 vs 4,145 batches; issue 9's soak).
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # errors only: its optimiser's notes are not the operator's business
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise CompressError(f"{path}: ONNX Runtime cannot load it ({_first_line(exc)})") from None


def _run(runner: Runner, clf: Classifier, texts: list[str]) -> np.ndarray:
    batch = clf.tokenizer(texts, padding=True, truncation=True, max_length=clf.max_length, return_tensors="np")
    logits, _ = runner(batch)
    return _softmax(logits)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float64)


def read_manifest(variants_dir: Path) -> dict[str, Any]:
    path = Path(variants_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompressError(
            f"{path}: no ONNX variants here. Registration builds them while serve.backend is onnx or onnx-int8; "
            f"for a model registered before, `tuneloop compress --model {path.parent.parent} --out {path.parent}`"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CompressError(f"{path}: damaged ({_first_line(exc)}); rebuild with `tuneloop compress`") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise CompressError(f"{path}: not a version-{MANIFEST_VERSION} manifest; rebuild with `tuneloop compress`")
    return manifest


def load(
    variants_dir: str | Path,
    backend: str,
    clf: Classifier,
    expected_sha256: str | None = None,
    recheck_margin: float = 0.0,
) -> Runner:
    """The variant `backend` of `clf`, proven: SHA-256, its export-time outputs reproduced, fp32 equal to torch.
    With `recheck_margin` > 0 the int8 variant carries the fp32 one (proven too) for its close rows (Runner).

    Raises:
        CompressError: naming the file and what is wrong with it.
    """
    variants_dir = Path(variants_dir)
    manifest = read_manifest(variants_dir)
    entry = manifest.get("variants", {}).get(backend)
    if entry is None or backend not in FILES:
        raise CompressError(f"{variants_dir}: no {backend!r} variant in {MANIFEST}")
    path = variants_dir / FILES[backend]
    if not path.is_file():
        raise CompressError(f"{path}: missing; rebuild the variants with `tuneloop compress`")
    sha = file_digest(path)
    if sha != (expected_sha256 or entry["sha256"]):
        raise CompressError(f"{path}: its SHA-256 differs from the one recorded when it was built; it was damaged")
    if manifest.get("source_weights_sha256") != weights_digest(clf.path):
        raise CompressError(f"{path}: built from other weights than {clf.path}'s; rebuild with `tuneloop compress`")
    session = _session(path)
    small = _session(path, threads=1) if backend == "onnx-int8" and (os.cpu_count() or 1) > 1 else None
    runner = Runner(session=session, inputs=manifest["inputs"], backend=backend, sha256=sha, small=small)
    probs = _run(runner, clf, PARITY_TEXTS)
    recorded = np.asarray(entry.get("parity_probs"), dtype=np.float64)
    if recorded.shape != probs.shape or np.abs(probs - recorded).max() > REPRODUCE_MAX_PROB_DIFF:
        raise CompressError(f"{path}: does not reproduce the probabilities it gave when it was built")
    if small is not None and not _small_agrees(runner, clf):
        raise CompressError(f"{path}: its one-thread session predicts otherwise than its session on every core")
    if backend == "onnx":
        from tuneloop.model import predict_proba

        torch_probs = predict_proba(clf, PARITY_TEXTS)
        if np.abs(probs - torch_probs).max() > FP32_MAX_PROB_DIFF:
            raise CompressError(f"{path}: does not predict what the torch model does")
    if backend == "onnx-int8" and recheck_margin > 0:
        return replace(runner, exact=load(variants_dir, "onnx", clf), margin=recheck_margin)
    return runner


def _small_agrees(runner: Runner, clf: Classifier) -> bool:
    """One text a call (the one-thread session's calls) gives what the session on every core gives."""
    full = replace(runner, small=None)
    return all(
        np.abs(_run(runner, clf, [text]) - _run(full, clf, [text])).max() <= REPRODUCE_MAX_PROB_DIFF
        for text in PARITY_TEXTS
    )


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the exporter colours its messages
    summary = text.split("## Exception summary", 1)[-1]  # torch.onnx puts the cause there
    return first_line(exc, summary)[:300]
