"""Prediction log: every prediction, and the feedback that later labels it, in a SQL database.

SQLAlchemy over SQLite by default, PostgreSQL when `TUNELOOP_DB_URL` says so. Writes are buffered
off the request path: `log()` only appends to an in-memory buffer; a background thread flushes it
every `flush_interval_s` (or sooner when `max_buffer` rows wait), and `close()` flushes whatever is
left, so a graceful stop loses nothing. The schema is created on first use and carries a version
row; a database written by an incompatible version is refused with a message instead of being
guessed at. With `store_text=False` only a SHA-256 of each text is kept (privacy).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tuneloop.errors import TuneloopError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_URL = "sqlite:///predictions.db"


class PredictionLogError(TuneloopError):
    """The log database is unusable (unreachable, or written by an incompatible schema version)."""


class UnknownRequest(TuneloopError):
    """Feedback names a request id the log has never seen."""


def database_url() -> str:
    """`TUNELOOP_DB_URL`, else a SQLite file in the working directory."""
    return os.environ.get("TUNELOOP_DB_URL", DEFAULT_URL)


def _tables(metadata: Any) -> dict[str, Any]:
    from sqlalchemy import JSON, Column, DateTime, Float, Integer, String, Table, Text

    return {
        "schema": Table("tuneloop_schema", metadata, Column("version", Integer, primary_key=True)),
        "predictions": Table(
            "predictions", metadata,
            Column("request_id", String(64), primary_key=True),
            Column("created_at", DateTime(timezone=True), nullable=False, index=True),
            Column("text", Text, nullable=True),  # None when store_text is off
            Column("text_sha256", String(64), nullable=False),
            Column("text_chars", Integer, nullable=False),
            Column("predicted", String(200), nullable=False, index=True),
            Column("confidence", Float, nullable=False),
            Column("top_k", JSON, nullable=False),
            Column("model_tag", String(200), nullable=False, index=True),
            Column("latency_ms", Float, nullable=False),
        ),
        "feedback": Table(
            "feedback", metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("request_id", String(64), nullable=False, index=True),
            Column("label", String(200), nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
        ),
    }


@dataclass
class Prediction:
    """One logged prediction."""

    request_id: str
    text: str
    predicted: str
    confidence: float
    top_k: list[dict[str, Any]]
    model_tag: str
    latency_ms: float
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class PredictionLog:
    """Buffered, thread-safe writer of predictions and feedback."""

    def __init__(self, url: str | None = None, *, store_text: bool = True, flush_interval_s: float = 1.0,
                 max_buffer: int = 500):
        from sqlalchemy import MetaData, create_engine, insert, select
        from sqlalchemy.exc import SQLAlchemyError

        self.url = url or database_url()
        self.store_text = store_text
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self._insert, self._select = insert, select
        self._metadata = MetaData()
        self.tables = _tables(self._metadata)
        try:
            self.engine = create_engine(self.url, pool_pre_ping=True)
            self._migrate()
        except SQLAlchemyError as exc:
            raise PredictionLogError(f"prediction log database {self._safe_url()}: {str(exc).splitlines()[0]}. "
                                     "Check TUNELOOP_DB_URL and that the server is running.") from None
        self._buffer: deque[Prediction] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log-flusher", daemon=True)
        self._thread.start()

    def _safe_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    def _migrate(self) -> None:
        """Create the tables on first use; refuse a database from an incompatible schema version."""
        schema = self.tables["schema"]
        self._metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            versions = [row[0] for row in conn.execute(self._select(schema.c.version))]
            if not versions:
                conn.execute(self._insert(schema).values(version=SCHEMA_VERSION))
            elif max(versions) != SCHEMA_VERSION:
                raise PredictionLogError(
                    f"prediction log {self._safe_url()} has schema version {max(versions)}, this tuneloop "
                    f"writes version {SCHEMA_VERSION}. Point TUNELOOP_DB_URL at a new database or migrate it.")

    # ------------------------------------------------------------ writing

    def log(self, prediction: Prediction) -> None:
        """Queue one prediction; never touches the database on the caller's thread."""
        with self._lock:
            self._buffer.append(prediction)
            full = len(self._buffer) >= self.max_buffer
        if full:
            self._wake.set()

    def flush(self) -> int:
        """Write everything buffered now; returns the number of rows written."""
        with self._lock:
            batch = list(self._buffer)
            self._buffer.clear()
        if not batch:
            return 0
        rows = [{
            "request_id": p.request_id, "created_at": p.created_at,
            "text": p.text if self.store_text else None,
            "text_sha256": hashlib.sha256(p.text.encode("utf-8")).hexdigest(), "text_chars": len(p.text),
            "predicted": p.predicted, "confidence": float(p.confidence),
            "top_k": p.top_k, "model_tag": p.model_tag, "latency_ms": float(p.latency_ms),
        } for p in batch]
        try:
            with self.engine.begin() as conn:
                conn.execute(self._insert(self.tables["predictions"]), rows)
        except Exception:
            with self._lock:  # keep them for the next attempt: losing rows is worse than retrying
                self._buffer.extendleft(reversed(batch))
            raise
        return len(rows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # a database hiccup must not kill the flusher
                log.warning("prediction log flush failed, will retry: %s", exc)

    def close(self) -> None:
        """Stop the flusher and write what is left (call on shutdown)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()
        self.engine.dispose()

    # ------------------------------------------------------------ feedback and reads

    def record_feedback(self, request_id: str, label: str) -> None:
        """Attach a true label to a logged request (see `record_feedback_many`)."""
        self.record_feedback_many([(request_id, label)])

    def record_feedback_many(self, items: list[tuple[str, str]]) -> None:
        """Attach true labels to logged requests, all or none, in one transaction.

        Raises:
            UnknownRequest: some ids were never logged (named in the message); nothing is recorded.
        """
        self.flush()  # the requests may still sit in the buffer
        predictions, feedback = self.tables["predictions"], self.tables["feedback"]
        wanted = list(dict.fromkeys(request_id for request_id, _ in items))
        with self.engine.begin() as conn:
            found = {row[0] for row in conn.execute(self._select(predictions.c.request_id)
                                                     .where(predictions.c.request_id.in_(wanted)))}
            missing = [request_id for request_id in wanted if request_id not in found]
            if missing:
                shown = ", ".join(repr(m) for m in missing[:5])
                shown += f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                verb = "is" if len(missing) == 1 else "are"
                raise UnknownRequest(f"request_id {shown} {verb} not in the prediction log")
            now = datetime.now(timezone.utc)
            conn.execute(self._insert(feedback), [{"request_id": request_id, "label": label, "created_at": now}
                                                  for request_id, label in items])

    def count(self) -> int:
        """Rows written so far (after a flush)."""
        from sqlalchemy import func

        self.flush()
        with self.engine.connect() as conn:
            return int(conn.execute(self._select(func.count()).select_from(self.tables["predictions"])).scalar_one())

    def joined(self) -> list[dict[str, Any]]:
        """Predictions with their latest feedback label (None when unlabelled), oldest first."""
        from sqlalchemy import func

        predictions, feedback = self.tables["predictions"], self.tables["feedback"]
        self.flush()
        latest = (self._select(func.max(feedback.c.id).label("id")).group_by(feedback.c.request_id).subquery())
        labels = (self._select(feedback.c.request_id, feedback.c.label)
                  .join(latest, latest.c.id == feedback.c.id).subquery())
        query = (self._select(predictions, labels.c.label.label("true_label"))
                 .join(labels, labels.c.request_id == predictions.c.request_id, isouter=True)
                 .order_by(predictions.c.created_at))
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def new_request_id() -> str:
    """A time-ordered unique id (sortable, so logs read in order)."""
    import uuid

    return f"{int(time.time() * 1000):013x}{uuid.uuid4().hex[:19]}"
