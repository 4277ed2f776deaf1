"""Compression: smaller or faster variants of a fine-tuned classifier, each judged before it is served.

`for_serving` builds the variant `serve.backend` names, for the service, evaluate and the monitoring
reference alike. `onnx`: the export, ONNX Runtime's BERT graph fusions and an int8 variant from its dynamic
quantiser (tuneloop.compress.onnx); `distill`: smaller students. Kept out of tuneloop.model, so that changing
how variants are built does not re-run DVC's train stage.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tuneloop.model import Classifier, ModelError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-int8", "onnx", "onnx-int8")
VARIANTS_DIR = "onnx"  # the ONNX variants' folder inside a registry entry
MANIFEST = "manifest.json"  # in that folder: each file's SHA-256, its source weights, its parity outputs
FALLBACK = {"onnx": "torch", "onnx-int8": "torch-int8"}  # the torch backend served when an ONNX variant is not


def for_serving(
    clf: Classifier,
    backend: str,
    variants: Path | None = None,
    expected_sha256: str | None = None,
    recheck_margin: float = 0.0,
) -> Classifier:
    """The variant the service runs (`serve.backend`), the only place that builds it.

    - `torch`: the fp32 weights as they are;
    - `torch-int8`: every Linear layer's weights quantised to int8 with dynamic activation scales (CPU only;
      on CUDA the model is returned as is). Measured on the demo MiniLM, 2 CPU cores: 2.1x texts/s single,
      2.3-2.5x in batches, same test predictions;
    - `onnx`, `onnx-int8`: ONNX Runtime variants built by tuneloop.compress.onnx, read from `variants` (a
      registry entry keeps them in its `onnx/` folder) and proven on load. One that is missing, damaged or
      does not reproduce its outputs is not served: the torch backend of the same precision is, with the
      reason logged, so a service never fails to start for want of a variant. `onnx-int8` with
      `recheck_margin` > 0 (serve.int8_recheck_margin) computes again in fp32 the rows whose top two
      probabilities are closer than that: the rows int8 flips.

    evaluate scores this variant too (served.json) and the gate bounds its drop, so what is served is what was
    judged.
    """
    if backend not in BACKENDS:
        raise ModelError(f"serve.backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend in FALLBACK:
        from tuneloop.compress.onnx import CompressError, load

        try:
            runner = load(variants or clf.path / VARIANTS_DIR, backend, clf, expected_sha256, recheck_margin)
        except CompressError as exc:
            log.warning("serving the %s backend instead of %s: %s", FALLBACK[backend], backend, exc)
            return for_serving(clf, FALLBACK[backend])
        return dataclasses.replace(clf, backend=backend, runner=runner)
    if backend == "torch" or next(clf.model.parameters()).is_cuda:
        return clf
    import warnings

    import torch

    with warnings.catch_warnings():  # torch.ao's eager quantisation warns it is moving to torchao
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(clf.model, {torch.nn.Linear}, dtype=torch.qint8)
    return dataclasses.replace(clf, model=model, backend="torch-int8")


def recheck_margin(clf: Classifier) -> float | None:
    """The int8 recheck margin the served variant runs with (serve.int8_recheck_margin); None when it has none
    (another backend, a torch fallback, or margin 0)."""
    return getattr(clf.runner, "margin", 0.0) or None


def build_variants(model_dir: Path, backend: str, out: Path) -> Path | None:
    """The ONNX variants of the model, built in `out`, when `backend` needs them; None (and the reason logged)
    when the model does not export, so the torch backend is judged and served instead."""
    if backend not in FALLBACK:
        return None
    from tuneloop.compress.onnx import CompressError, export

    try:
        export(model_dir, out)
    except CompressError as exc:
        log.warning("no ONNX variant, the %s backend will be judged and served: %s", FALLBACK[backend], exc)
        return None
    return out
