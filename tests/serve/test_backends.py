"""serve.backend: the same API, logging and shapes from every backend; the registry keeps the ONNX variants
with their digests, and the service serves what was registered."""

from __future__ import annotations

import yaml

from tests.serve.conftest import served  # noqa: F401  (fixture)
from tests.serve.test_service_asgi import asgi_client
from tuneloop import registry
from tuneloop.compress.onnx import export


def _shape(value):
    """Keys and types of an answer, not its numbers."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k != "model"}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def test_every_backend_answers_alike(served, tmp_path):  # noqa: F811
    tag, work = served
    entry = registry.get(tag)
    export(entry.path, entry.path / "onnx")  # as registration does when serve.backend is onnx*
    texts = ["the food was great", "awful service, never again", "ok"]
    answers, backends = {}, {}
    for backend in ("torch", "torch-int8", "onnx", "onnx-int8"):
        params = yaml.safe_load((work / "params.yaml").read_text())
        params["serve"]["backend"] = backend
        (tmp_path / f"{backend}.yaml").write_text(yaml.safe_dump(params))
        with asgi_client(tag, tmp_path / f"{backend}.yaml", f"sqlite:///{tmp_path / backend}.db") as client:
            response = client.post("/classify", json={"texts": texts})
            assert response.status_code == 200, response.text
            answers[backend] = response.json()
            metadata = client.get("/metadata").json()
            backends[backend] = metadata["backend"]
            assert metadata["int8_recheck_margin"] == (
                params["serve"]["int8_recheck_margin"] if backend == "onnx-int8" else None
            )
            ids = [a["request_id"] for a in answers[backend]]
            recorded = client.post("/feedback", json={"items": [{"request_id": i, "label": "pos"} for i in ids]})
            assert recorded.json()["recorded"] == 3  # every answer was logged
    assert backends == {b: b for b in backends}  # each served what it was asked, no silent fallback
    assert all(_shape(a) == _shape(answers["torch"]) for a in answers.values())
    labels = {b: [a["label"] for a in answer] for b, answer in answers.items()}
    assert labels["onnx"] == labels["torch"]


def test_registration_stores_the_variants_with_their_digests(tiny_classifier, tmp_path, store):
    import shutil

    from tuneloop.provenance import file_digest

    model = shutil.copytree(tiny_classifier, tmp_path / "m")
    export(model, tmp_path / "v")
    entry = registry.register(model, task="onnx-test", variants=tmp_path / "v")
    stored = entry.path / "onnx" / "model.int8.onnx"
    assert entry.metadata["variants"]["onnx-int8"]["sha256"] == file_digest(stored)
    assert (entry.path / "onnx" / "manifest.json").is_file()


def test_a_backend_other_than_the_judged_one_is_said_in_the_log_and_metadata(tiny_classifier, tmp_path, store):
    import shutil
    from types import SimpleNamespace

    from tuneloop.serve.service import unjudged

    judged = {"backend": "onnx", "agreement": 1.0, "macro_f1": 0.9, "int8_recheck_margin": None, "ece": 0.1}
    model = shutil.copytree(tiny_classifier, tmp_path / "m")
    entry = registry.register(model, task="judged-test", served=judged)
    assert entry.metadata["served"] == {"backend": "onnx", "agreement": 1.0, "macro_f1": 0.9}  # the keys kept
    int8 = SimpleNamespace(backend="onnx-int8", runner=SimpleNamespace(margin=0.05))
    why = unjudged(entry.tag, entry.metadata["served"], int8)
    assert why and "judged backend onnx (agreement 1.0)" in why and "runs onnx-int8 (int8 recheck margin 0.05)" in why
    assert "serve.backend back to 'onnx'" in why
    assert unjudged(entry.tag, entry.metadata["served"], SimpleNamespace(backend="onnx", runner=None)) is None
    assert unjudged(entry.tag, None, int8) is None  # registered before the record: nothing to compare


def test_metadata_says_whether_the_service_runs_what_the_gate_judged(tiny_classifier, tmp_path, store):
    import shutil

    from tests.conftest import REPO

    model = shutil.copytree(tiny_classifier, tmp_path / "m")
    entry = registry.register(model, served={"backend": "torch-int8", "agreement": 1.0})
    for backend, as_judged in (("torch-int8", True), ("torch", False)):
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["serve"]["backend"] = backend
        (tmp_path / f"{backend}.yaml").write_text(yaml.safe_dump(params))
        with asgi_client(entry.tag, tmp_path / f"{backend}.yaml", f"sqlite:///{tmp_path / backend}.db") as client:
            metadata = client.get("/metadata").json()
        assert metadata["judged"]["backend"] == "torch-int8" and metadata["served_as_judged"] is as_judged
