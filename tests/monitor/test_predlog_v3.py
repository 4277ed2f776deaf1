"""Prediction log schema v3: the nullable embedding column, added in place to a v2 database."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import fresh_postgres_db
from tuneloop.predlog import SCHEMA_VERSION, Prediction, PredictionLog, read_window


def _v2_database(url: str) -> None:
    """A log as schema v2 wrote it: no embedding column, version row 2."""
    from sqlalchemy import create_engine, text

    PredictionLog(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE predictions DROP COLUMN embedding"))
        conn.execute(text("UPDATE tuneloop_schema SET version = 2"))
        conn.execute(
            text(
                "INSERT INTO predictions (request_id, created_at, text, text_sha256, text_chars, predicted, "
                "confidence, top_k, model_tag, latency_ms) VALUES ('old', '2026-11-01 00:00:00+00:00', 'hi', "
                "'x', 2, 'a', 0.9, '[]', 'm:1', 1.0)"
            )
        )
    engine.dispose()


def _migrates_and_keeps_rows(url: str) -> None:
    _v2_database(url)
    vector = np.arange(32, dtype="<f4")
    for _ in range(2):  # idempotent: a second open finds version 3 and changes nothing
        plog = PredictionLog(url)
        plog.close()
    plog = PredictionLog(url)
    plog.log(Prediction("new", "hello", "a", 0.8, [], "m:1", 1.0, embedding=vector.tobytes()))
    plog.close()
    frame = read_window(url, model_tag="m:1").set_index("request_id")
    assert frame.loc["old", "embedding"] is None  # rows from before v3 simply have none
    assert np.array_equal(np.frombuffer(frame.loc["new", "embedding"], dtype="<f4"), vector)
    assert SCHEMA_VERSION == 3


def test_v2_sqlite_log_gains_the_embedding_column_in_place(tmp_path):
    _migrates_and_keeps_rows(f"sqlite:///{tmp_path}/log.db")


@pytest.mark.postgres
def test_v2_postgresql_log_gains_the_embedding_column_in_place():
    _migrates_and_keeps_rows(fresh_postgres_db("tuneloop_predlog_v3_test"))
