"""ONNX Runtime variants: the export predicts what torch does, a damaged variant is never served, and a model
that does not export is served by the torch backend with the reason logged."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tuneloop.compress import build_variants, for_serving
from tuneloop.compress.onnx import MANIFEST, CompressError, _softmax, export, load
from tuneloop.model import load_classifier, predict_with_embedding
from tuneloop.provenance import file_digest, weights_digest

TEXTS = [
    "I lost my card",
    "how do I close my account and move the money to another bank before the end of the month?",
    "x",
    "Mi tarjeta no funciona en el cajero",
    "转账失败了怎么办",
    "!!! ??? 123",
    "refund",
    "my parcel never arrived " * 20,  # past max_length: truncated like torch's input
]


@pytest.fixture(scope="module")
def variants(tiny_classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("onnx")
    return export(tiny_classifier, out), out


def test_the_export_predicts_what_torch_does(tiny_classifier, variants):
    manifest, out = variants
    clf = load_classifier(tiny_classifier)
    probs, embeddings = predict_with_embedding(clf, TEXTS)
    fp32 = for_serving(clf, "onnx", out)
    assert fp32.backend == "onnx" and fp32.runner is not None
    onnx_probs, onnx_embeddings = predict_with_embedding(fp32, TEXTS, batch_size=3)  # several padded batches
    assert (onnx_probs.argmax(1) == probs.argmax(1)).all()
    assert np.abs(onnx_probs - probs).max() < 1e-4 and np.abs(onnx_embeddings - embeddings).max() < 1e-3
    int8 = for_serving(clf, "onnx-int8", out)
    int8_probs, int8_embeddings = predict_with_embedding(int8, TEXTS)
    assert int8.backend == "onnx-int8" and int8_probs.shape == probs.shape and int8_embeddings.shape == (8, 32)
    assert np.allclose(int8_probs.sum(1), 1) and (int8_probs.argmax(1) == probs.argmax(1)).mean() >= 0.75
    assert manifest["source_weights_sha256"] == weights_digest(tiny_classifier)
    assert manifest["variants"]["onnx-int8"]["sha256"] == file_digest(out / "model.int8.onnx")
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size
    for served in (fp32, int8):  # no memory plan kept per (batch, length) shape: RSS stays level (issue 9)
        options = served.runner.session.get_session_options()
        assert options.enable_mem_pattern is False and options.inter_op_num_threads == 1


def test_short_int8_calls_run_on_one_thread_and_answer_as_every_core_does(tiny_classifier, variants, monkeypatch):
    import os
    from dataclasses import replace

    from tuneloop.compress import onnx

    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # the one-thread session exists only beside more cores
    clf = load_classifier(tiny_classifier)
    int8 = for_serving(clf, "onnx-int8", variants[1])
    runner = int8.runner
    assert runner.small is not None and runner.small.get_session_options().intra_op_num_threads == 1
    assert for_serving(clf, "onnx", variants[1]).runner.small is None  # fp32 is faster on every core at any size
    used = []
    for name in ("small", "session"):
        session = getattr(runner, name)
        monkeypatch.setattr(runner, name, _Spy(session, name, used))
    every_core, chosen = replace(runner, small=None), []
    for texts in [[text] for text in TEXTS] + [TEXTS]:
        batch = clf.tokenizer(texts, truncation=True, max_length=clf.max_length, padding=True, return_tensors="np")
        used.clear()
        logits, pooled = runner(batch)
        chosen += used
        assert used == ["small" if batch["input_ids"].size <= onnx.SMALL_CALL_TOKENS else "session"], texts
        full_logits, full_pooled = every_core(batch)
        assert np.abs(logits - full_logits).max() < 1e-4 and np.abs(pooled - full_pooled).max() < 1e-4
    assert set(chosen) == {"small", "session"}  # single short texts, and all of them in one call


class _Spy:
    """A session that records which of the runner's two sessions ran a call."""

    def __init__(self, session, name, used):
        self.session, self.name, self.used = session, name, used

    def run(self, *args):
        self.used.append(self.name)
        return self.session.run(*args)


def test_int8_recomputes_in_fp32_exactly_the_rows_whose_top_two_are_close(tiny_classifier, variants):
    """serve.int8_recheck_margin: a row int8 is unsure of (top two closer than the margin) gets the fp32 graph's
    logits and pooled state, computed on that row alone; every other row keeps int8's."""
    _, out = variants
    clf = load_classifier(tiny_classifier)
    pure, fp32 = for_serving(clf, "onnx-int8", out), for_serving(clf, "onnx", out)
    batch = clf.tokenizer(TEXTS, truncation=True, max_length=clf.max_length, padding=True, return_tensors="np")
    int8_logits, int8_pooled = pure.runner(batch)
    fp32_logits, fp32_pooled = fp32.runner(batch)
    top_two = np.sort(_softmax(int8_logits), axis=1)[:, -2:]
    gaps = top_two[:, 1] - top_two[:, 0]
    margin = float(np.median(gaps))  # about half the rows under it, half over
    rechecked = for_serving(clf, "onnx-int8", out, recheck_margin=margin)
    assert rechecked.backend == "onnx-int8" and rechecked.runner.exact is not None
    logits, pooled = rechecked.runner(batch)
    close = gaps < margin
    assert 0 < close.sum() < len(TEXTS)
    assert np.allclose(logits[close], fp32_logits[close], atol=1e-4)  # alone, without the batch's padding
    assert np.allclose(pooled[close], fp32_pooled[close], atol=1e-3)
    assert np.array_equal(logits[~close], int8_logits[~close]) and np.array_equal(pooled[~close], int8_pooled[~close])
    everything = for_serving(clf, "onnx-int8", out, recheck_margin=1.0)  # every row: the fp32 graph's answers
    probs, _ = predict_with_embedding(everything, TEXTS, batch_size=3)
    assert np.allclose(probs, predict_with_embedding(fp32, TEXTS, batch_size=3)[0], atol=1e-5)


def test_a_damaged_fp32_graph_is_not_used_for_rechecks(tiny_classifier, variants, tmp_path, caplog):
    """The recheck runs the fp32 file: it is proven as when it is served (digest), else torch-int8 is served."""
    _, out = variants
    bad = Path(shutil.copytree(out, tmp_path / "bad"))
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    clf = load_classifier(tiny_classifier)
    assert load(bad, "onnx-int8", clf).exact is None  # no recheck asked: the int8 file alone is loaded
    with caplog.at_level(logging.WARNING, logger="tuneloop.compress"):
        served = for_serving(clf, "onnx-int8", bad, recheck_margin=0.05)
    assert served.backend == "torch-int8" and "model.onnx" in caplog.text and "SHA-256" in caplog.text


def test_changed_bytes_fail_the_digest_check(tiny_classifier, variants, tmp_path):
    _, out = variants
    bad = Path(shutil.copytree(out, tmp_path / "bad"))
    data = bytearray((bad / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(CompressError, match="SHA-256"):
        load(bad, "onnx-int8", load_classifier(tiny_classifier))


def test_a_variant_with_other_weights_is_never_served(tiny_classifier, variants, tmp_path, caplog):
    """Its digest re-recorded, as a careless rebuild would: the parity check still refuses it, and the
    service's builder serves torch instead, saying why."""
    import onnx
    from onnx import numpy_helper

    _, out = variants
    bad = Path(shutil.copytree(out, tmp_path / "bad"))
    graph = onnx.load(str(bad / "model.onnx"))
    biggest = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    biggest.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(biggest), biggest.name))
    onnx.save(graph, str(bad / "model.onnx"))
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["variants"]["onnx"]["sha256"] = file_digest(bad / "model.onnx")
    (bad / MANIFEST).write_text(json.dumps(manifest))
    clf = load_classifier(tiny_classifier)
    with pytest.raises(CompressError, match="reproduce"):
        load(bad, "onnx", clf)
    with caplog.at_level(logging.WARNING, logger="tuneloop.compress"):
        served = for_serving(clf, "onnx", bad)
    assert served.backend == "torch" and served.runner is None
    assert "instead of onnx" in caplog.text and "reproduce" in caplog.text


def test_a_model_that_does_not_export_is_served_by_torch(tiny_classifier, tmp_path, monkeypatch, caplog):
    import torch

    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported: aten::weird_op has no ONNX symbolic")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with caplog.at_level(logging.WARNING, logger="tuneloop.compress"):
        assert build_variants(tiny_classifier, "onnx-int8", tmp_path / "v") is None
        served = for_serving(load_classifier(tiny_classifier), "onnx-int8", None)  # no onnx/ beside the weights
    assert "aten::weird_op" in caplog.text and served.backend == "torch-int8"
    assert build_variants(tiny_classifier, "torch-int8", tmp_path / "v") is None  # nothing to build


def test_an_export_error_is_told_by_its_cause_in_one_line():
    from tuneloop.compress.onnx import _first_line

    dynamo = RuntimeError(
        "\x1b[1mTorch export failed\x1b[0m\n## Exception summary\n\n\x1b[31mUnsupported: aten::weird_op\x1b[0m\nmore"
    )
    assert _first_line(dynamo) == "Unsupported: aten::weird_op"
    assert _first_line(RuntimeError("one\ntwo")) == "one"
    assert _first_line(ValueError("")) == _first_line(ValueError("## Exception summary\n")) == "ValueError"
    assert len(_first_line(RuntimeError("x" * 1000))) == 300


def test_a_legacy_quantize_key_still_reads():
    from tests.conftest import REPO
    from tuneloop.config import ServeParams, load_params

    serve = load_params(REPO / "params.yaml").serve.model_dump()
    serve.pop("backend")
    assert ServeParams.model_validate({**serve, "quantize": "none"}).backend == "torch"
    assert ServeParams.model_validate({**serve, "quantize": "int8"}).backend == "torch-int8"
