"""Fixtures of the service tests: one tiny trained champion per module."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tuneloop import registry


@pytest.fixture(scope="module")
def served(tiny_trained: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(champion tag, working folder): the session's tiny trained model promoted in an empty store, and a
    params.yaml whose serve limits match the guard's unit tests (4 texts, 2048 bytes)."""
    home = Path(os.environ["BENTOML_HOME"])
    for sub in ("models/tuneloop-classifier", "tuneloop"):
        shutil.rmtree(home / sub, ignore_errors=True)
    work = tmp_path_factory.mktemp("served")
    shutil.copytree(tiny_trained, work / "m")
    tag = registry.register(work / "m").tag
    registry.promote(tag, reason="test champion")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["serve"].update(
        log_flush_s=3600,  # no timer flush: only the shutdown hook writes rows
        max_texts_per_request=4,
        max_body_bytes=2048,
    )
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    return tag, work
