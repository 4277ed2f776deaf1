"""Prediction log schema v3 and v4: the nullable embedding column (v3) and feedback source (v4), added in place to
older databases."""

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
    assert _version(url) == SCHEMA_VERSION


def _version(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT max(version) FROM tuneloop_schema")).scalar_one()
    engine.dispose()
    return int(found)


def _v3_database_with_a_label(url: str) -> None:
    """A log as schema v3 wrote it: feedback without a source column, one label on one prediction."""
    from sqlalchemy import create_engine, text

    plog = PredictionLog(url)
    plog.log(Prediction("old", "hi", "a", 0.9, [], "m:1", 1.0))
    plog.close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE feedback DROP COLUMN source"))
        conn.execute(text("UPDATE tuneloop_schema SET version = 3"))
        conn.execute(text("INSERT INTO feedback (request_id, label, created_at) VALUES ('old', 'b', '2026-11-02')"))
    engine.dispose()


def _v3_migrates_and_keeps_labels(url: str) -> None:
    _v3_database_with_a_label(url)
    assert read_window(url, labeled=True)["feedback_source"].isna().all()  # read before its service migrated it
    plog = PredictionLog(url)
    plog.log(Prediction("new", "hello", "a", 0.8, [], "m:1", 1.0))
    plog.record_feedback("new", "a")  # through POST /feedback by default
    plog.close()
    frame = read_window(url, labeled=True).set_index("request_id")
    assert frame.loc["old", "true_label"] == "b" and frame.loc["old", "feedback_source"] is None
    assert frame.loc["new", "feedback_source"] == "api"
    assert _version(url) == SCHEMA_VERSION == 4
    plog = PredictionLog(url)
    with pytest.raises(ValueError, match="feedback source 'mail'"):
        plog.record_feedback("new", "a", source="mail")
    plog.close()


def test_v2_sqlite_log_gains_the_embedding_column_in_place(tmp_path):
    _migrates_and_keeps_rows(f"sqlite:///{tmp_path}/log.db")


@pytest.mark.postgres
def test_v2_postgresql_log_gains_the_embedding_column_in_place():
    _migrates_and_keeps_rows(fresh_postgres_db("tuneloop_predlog_v3_test"))


def test_v3_sqlite_log_gains_the_feedback_source_in_place(tmp_path):
    _v3_migrates_and_keeps_labels(f"sqlite:///{tmp_path}/log.db")


@pytest.mark.postgres
def test_v3_postgresql_log_gains_the_feedback_source_in_place():
    _v3_migrates_and_keeps_labels(fresh_postgres_db("tuneloop_predlog_v4_test"))
