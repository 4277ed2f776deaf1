"""The shared object store against a real S3-compatible server (Moto's standalone server, as DVC's own
tests use): models push/pull into an empty BentoML home that then serves the champion, the store's champion
pointer, the content check, every bad input as one message, and DVC data through the same server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO, free_port
from tests.integration.conftest import pull_elsewhere, serving
from tuneloop import registry


def _variant_of(model: Path, out: Path, nudge: float) -> Path:
    """A copy of `model` whose classifier bias is shifted: other weights, so another registry entry."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, out)
    weights = load_file(out / "model.safetensors")
    weights["classifier.bias"] = weights["classifier.bias"] + nudge
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def onnx_variants(tiny_classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny classifier's ONNX variants, as registration stores them (serve.backend onnx serves them)."""
    from tuneloop.compress.onnx import export

    out = tmp_path_factory.mktemp("onnx")
    export(tiny_classifier, out)
    return out


def test_a_machine_with_an_empty_store_pulls_the_champion_and_serves_it(
    s3, store, cli, tiny_classifier, onnx_variants, tmp_path, monkeypatch
):
    reference = tmp_path / "reference.parquet"
    reference.write_bytes(b"stand-in for the monitoring reference: carried byte for byte")
    tag = registry.register(tiny_classifier, reference=reference, variants=onnx_variants).tag
    registry.promote(tag, reason="test champion")
    work = tmp_path / "serving-machine"
    work.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["store"] = {"url": s3.url, "endpoint_url": s3.endpoint}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(work)

    pushed = cli("models", "push")  # default: the task's champion, published as the store's champion
    assert pushed.exit_code == 0, pushed.output
    assert f"pushed {tag}" in pushed.stdout and "the store's champion" in pushed.stdout
    again = cli("models", "push", tag)
    assert again.exit_code == 0 and f"already in the store: {tag}" in again.stdout  # idempotent

    home = tmp_path / "empty-bentoml-home"
    pulled = pull_elsewhere(home, work)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert f"pulled {tag}" in pulled.stdout and "(champion)" in pulled.stdout
    assert json.loads((home / "tuneloop" / "classifier" / "champion.json").read_text())["champion"] == tag
    entry = home / "models" / "tuneloop-classifier" / tag.split(":")[1]
    mine = registry.get(tag)
    for name in ("model.safetensors", "reference.parquet", "onnx/model.onnx", "onnx/model.int8.onnx"):
        assert (entry / name).read_bytes() == (mine.path / name).read_bytes(), name
    assert "already here" in pull_elsewhere(home, work).stdout  # idempotent, and checked again

    env = {**os.environ, "BENTOML_HOME": str(home), "TUNELOOP_DB_URL": f"sqlite:///{tmp_path / 'log.db'}"}
    with serving(work, env) as url:
        answer = httpx.post(f"{url}/classify", json={"texts": ["my card is lost"]}, timeout=30)
        assert answer.status_code == 200 and answer.json()[0]["model"] == tag
        metadata = httpx.get(f"{url}/metadata", timeout=30).json()
        assert metadata["backend"] == "onnx-int8"  # the pulled ONNX variants passed their SHA-256 and parity checks


def test_pull_follows_the_stores_champion_and_checks_every_file(s3, store, tiny_classifier, tmp_path):
    import bentoml
    import fsspec
    from bentoml.exceptions import NotFound

    from tuneloop import store as shared

    where = shared.Store(s3.url, s3.endpoint)
    first = registry.register(tiny_classifier).tag
    second = registry.register(_variant_of(tiny_classifier, tmp_path / "second", 0.5)).tag
    registry.promote(first, reason="first champion")
    assert shared.push(None, "classifier", where) == shared.Moved(first, copied=True, champion=True)
    assert shared.push(second, "classifier", where).champion is False  # not the champion: the pointer stays
    registry.promote(second, reason="a better one")
    assert shared.push(None, "classifier", where) == shared.Moved(second, copied=False, champion=True)

    # This machine loses both and its pointer; pulling brings the store's champion back as the champion.
    for tag in (first, second):
        bentoml.models.delete(tag)
    shutil.rmtree(registry.bentoml_home() / "tuneloop")
    assert shared.pull(None, "classifier", where) == shared.Moved(second, copied=True, champion=True)
    assert registry.champion_tag() == second and registry.get(second).stage == "champion"
    pulled = shared.pull(first, "classifier", where)  # a TAG is imported, not promoted
    assert pulled == shared.Moved(first, copied=True, champion=False) and registry.get(first).stage == "challenger"

    # The store's copy of `first` no longer matches its manifest: refused, and nothing is left behind.
    bentoml.models.delete(first)
    manifest_url = where.key("classifier", "models", f"{first.split(':')[1]}.json")
    fs = fsspec.filesystem("s3", endpoint_url=s3.endpoint, skip_instance_cache=True)
    manifest = json.loads(fs.cat_file(manifest_url))
    manifest["files"]["model.safetensors"] = "0" * 64
    fs.pipe_file(manifest_url, json.dumps(manifest).encode())
    with pytest.raises(shared.StoreError, match=r"does not match its manifest .*model\.safetensors.*removed again"):
        shared.pull(first, "classifier", where)
    with pytest.raises(NotFound):
        bentoml.models.get(first)


def test_bad_store_settings_and_tags_are_one_line_each(s3, store, cli, tiny_classifier, monkeypatch, tmp_path):
    tag = registry.register(tiny_classifier).tag
    store_at = s3.settings()

    def refused(*args: str, expect: str) -> str:
        result = cli("models", *args)
        assert result.exit_code == 1, result.output
        assert expect in result.stderr and "Traceback" not in result.output, result.output
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr  # the message, not a stack
        return result.stderr

    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    refused("push", tag, expect="no shared store configured: set store.url")
    refused("push", tag, "--set", "store.url=gs://bucket/models", expect="store.url = 'gs://bucket/models'")
    refused("push", "nope", *store_at, expect="tuneloop-classifier:nope is not in the store")
    refused("push", *store_at, expect="task 'classifier' has no champion to push")
    refused("pull", "nope", *store_at, expect="tuneloop-classifier:nope is not in the shared store")
    refused("pull", "a:b:c", *store_at, expect="invalid model tag 'a:b:c'")
    refused("pull", "../../etc", *store_at, expect="invalid model tag '../../etc'")  # no key outside the prefix
    refused("pull", *store_at, expect="has no champion for task 'classifier'")
    elsewhere = ["--set", f"store.endpoint_url={s3.endpoint}", "--set", "store.url=s3://no-such-bucket/x"]
    missing = refused("push", tag, *elsewhere, expect="bucket 'no-such-bucket' of store.url")
    assert "does not exist" in missing and "aws s3 mb" in missing
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    unreachable = [*store_at, "--set", f"store.endpoint_url={closed}"]
    refused("push", tag, *unreachable, expect=f"cannot reach the shared store {s3.url} at store.endpoint_url {closed}")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    refused("push", tag, *store_at, expect="no credentials for the shared store")


def test_dvc_pushes_and_pulls_the_projects_data_through_the_s3_remote(s3, project, cli):
    import boto3

    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "200").exit_code == 0
    assert cli("data", "import", "build/demo.csv").exit_code == 0
    raw = project / "data" / "raw" / "corpus.csv"
    before = raw.read_bytes()

    def dvc(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    dvc("remote", "add", "-d", "team", f"s3://{s3.bucket}/dvc")  # as the README says
    dvc("remote", "modify", "team", "endpointurl", s3.endpoint)
    dvc("push", "data.dvc")
    stored = boto3.client("s3", endpoint_url=s3.endpoint).list_objects_v2(Bucket=s3.bucket, Prefix="dvc/")
    assert stored["KeyCount"] >= 1  # the bytes went to the S3 server, not to the fixture's local remote
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data" / "raw")
    dvc("pull", "data.dvc")
    assert raw.read_bytes() == before
