"""Fixtures of the service tests: one tiny trained champion per module."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_TRAIN, sentiment_rows, write
from tuneloop import registry
from tuneloop.config import load_params


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(champion tag, working folder): a tiny trained model promoted in an empty store, and a
    params.yaml whose serve limits match the guard's unit tests (4 texts, 2048 bytes)."""
    from tuneloop.train import train

    home = Path(os.environ["BENTOML_HOME"])
    for sub in ("models/tuneloop-classifier", "tuneloop"):
        shutil.rmtree(home / sub, ignore_errors=True)
    work = tmp_path_factory.mktemp("served")
    train_csv = write(work / "train.csv", sentiment_rows(24, seed=0))
    val_csv = write(work / "val.csv", sentiment_rows(6, seed=1))
    train(
        load_params(REPO / "params.yaml", TINY_TRAIN),
        train_csv,
        val_csv,
        work / "m",
        base=str(tiny_model),
        live_dir=None,
    )
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
