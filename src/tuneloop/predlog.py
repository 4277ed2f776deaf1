"""Prediction log: every prediction, and the feedback that later labels it, in a SQL database.

A platform module: the service writes it; monitoring and retraining read it (`read_window`).
SQLAlchemy over SQLite by default, PostgreSQL when `TUNELOOP_DB_URL` says so. Writes are buffered
off the request path: `log()` only appends to an in-memory buffer; a background thread flushes it
every `flush_interval_s` (or sooner when `max_buffer` rows wait), and `close()` flushes whatever is
left, so a graceful stop loses nothing. While the database fails, rows stay buffered; past `max_backlog` they
move to files in `spool_dir` (JSON lines, written whole), which the next flush that succeeds writes first, in
any process sharing the folder (each file by one process, under a lock), so an outage neither loses rows
nor grows memory without bound. The schema is created on first use and carries a version
row; older versions are migrated forward in place (each step idempotent), a database written by a
newer version is refused with a message instead of being guessed at. With `store_text=False` only
a digest of each text is kept (privacy); see `text_digest`.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError, first_line

log = logging.getLogger(__name__)

# 1: predictions + feedback. 2: composite index (model_tag, created_at) for windowed reads.
# 3: nullable `embedding` (float32 bytes: the projected text embedding monitoring compares).
# 4: nullable feedback `source`: where a label came from (FEEDBACK_SOURCES; None for labels recorded before).
SCHEMA_VERSION = 4
# "api": POST /feedback (whoever calls it decides which answers get a label); "import": `tuneloop feedback import`
# (an annotated file, usually the queue, whose rows were picked by confidence). Monitoring checks the first kind
# for being a random sample of the traffic (tuneloop.monitor.run.Feedback).
FEEDBACK_SOURCES = ("api", "import")
DEFAULT_URL = "sqlite:///predictions.db"
TEXT_HASH_KEY_ENV = "TUNELOOP_TEXT_HASH_KEY"
MAX_LABEL_CHARS = 200  # the label columns (predicted, feedback) are VARCHAR(200): validation and /feedback hold to it


def text_digest(text: str, key: bytes | None) -> str:
    """The `text_sha256` column: HMAC-SHA256 of the UTF-8 text under `key`, or plain SHA-256 without one.

    A plain hash of a short text ("yes", a card number's last digits) is recovered by hashing guesses;
    keyed, the digest still matches equal texts (duplicates, joins across tables) but cannot be
    checked against a guess without the key. Changing the key changes every digest from then on.
    """
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate must not fail the whole flush
    return hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()


class PredictionLogError(TuneloopError):
    """The log database is unusable (unreachable, or written by an incompatible schema version)."""


class UnknownRequest(TuneloopError):
    """Feedback names a request id the log has never seen."""


def database_url() -> str:
    """`TUNELOOP_DB_URL`, else a SQLite file in the working directory."""
    return os.environ.get("TUNELOOP_DB_URL", DEFAULT_URL)


def _tables(metadata: Any) -> dict[str, Any]:
    from sqlalchemy import JSON, Column, DateTime, Float, Index, Integer, LargeBinary, String, Table, Text

    return {
        "schema": Table("tuneloop_schema", metadata, Column("version", Integer, primary_key=True)),
        "predictions": Table(
            "predictions",
            metadata,
            Column("request_id", String(64), primary_key=True),
            Column("created_at", DateTime(timezone=True), nullable=False, index=True),
            Column("text", Text, nullable=True),  # None when store_text is off
            Column("text_sha256", String(64), nullable=False),
            Column("text_chars", Integer, nullable=False),
            Column("predicted", String(MAX_LABEL_CHARS), nullable=False, index=True),
            Column("confidence", Float, nullable=False),
            Column("top_k", JSON, nullable=False),
            Column("model_tag", String(200), nullable=False, index=True),
            Column("latency_ms", Float, nullable=False),
            Column("embedding", LargeBinary, nullable=True),  # v3; None when the service did not log one
            # A monitoring window is "one model, a time range or the last N rows": one index walk.
            Index("ix_predictions_model_created", "model_tag", "created_at"),
        ),
        "feedback": Table(
            "feedback",
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("request_id", String(64), nullable=False, index=True),
            Column("label", String(MAX_LABEL_CHARS), nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
            Column("source", String(16), nullable=True),  # v4: FEEDBACK_SOURCES; None before
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
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    embedding: bytes | None = None  # float32 little-endian (tuneloop.model.predict_with_embedding)


class PredictionLog:
    """Buffered, thread-safe writer of predictions and feedback."""

    def __init__(
        self,
        url: str | None = None,
        *,
        store_text: bool = True,
        flush_interval_s: float = 1.0,
        max_buffer: int = 500,
        spool_dir: str | Path | None = None,
        max_backlog: int = 20_000,
    ):
        from sqlalchemy import MetaData, create_engine, insert, select
        from sqlalchemy.exc import SQLAlchemyError

        self.url = url or database_url()
        self.store_text = store_text
        self._hash_key = os.environ.get(TEXT_HASH_KEY_ENV, "").encode() or None
        if not store_text and self._hash_key is None:
            log.warning(
                "store_text is off but %s is not set: text_sha256 is an unkeyed SHA-256, and short texts can "
                "be recovered from it by hashing guesses; set %s to a long random secret to key it (HMAC)",
                TEXT_HASH_KEY_ENV,
                TEXT_HASH_KEY_ENV,
            )
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self._insert, self._select = insert, select
        self._metadata = MetaData()
        self.tables = _tables(self._metadata)
        # While the database fails, rows past max_backlog wait on disk in spool_dir instead of in memory.
        self.max_backlog = max_backlog
        self.spool = Path(spool_dir) if spool_dir is not None else None
        if self.spool is not None:
            self.spool.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        except SQLAlchemyError as exc:  # not a URL SQLAlchemy can use: nothing to wait for
            raise _unusable(self.url, exc) from None
        self._schema_ready = self._start_schema()
        self._buffer: deque[dict[str, Any]] = deque()  # rows as they go to the database
        self.refused = 0  # rows the database refused for their own content (see _store)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log-flusher", daemon=True)
        self._thread.start()

    def _safe_url(self) -> str:
        return _shown(self.url)

    def _migrate(self) -> None:
        """Create the tables on first use; refuse a database from an incompatible schema version."""
        migrate(self.engine, self._metadata, self.tables, self._safe_url())

    def _start_schema(self) -> bool:
        """Migrate at start; False when the database does not answer yet and rows can wait in the spool (the
        service then starts and serves, and the first flush that reaches the database migrates it). A
        database that answers but is refused (a newer schema, no permission) is an error at once."""
        from sqlalchemy.exc import OperationalError, SQLAlchemyError

        try:
            self._migrate()
            return True
        except OperationalError as exc:  # connection refused, host unknown, login refused, file not there
            if self.spool is None:
                raise _unusable(self.url, exc) from None
            log.warning(
                "prediction log database %s is not answering (%s): going on, the rows wait in memory and past "
                "%d in %s, and are written when it answers",
                self._safe_url(),
                first_line(exc),
                self.max_backlog,
                self.spool,
            )
            return False
        except SQLAlchemyError as exc:
            raise _unusable(self.url, exc) from None

    # ------------------------------------------------------------ writing

    def log(self, prediction: Prediction) -> None:
        """Queue one prediction; never touches the database on the caller's thread."""
        row = self._row(prediction)
        with self._lock:
            self._buffer.append(row)
            full = len(self._buffer) >= self.max_buffer
        if full:
            self._wake.set()

    def _row(self, p: Prediction) -> dict[str, Any]:
        return {
            "request_id": p.request_id,
            "created_at": p.created_at,
            "text": p.text if self.store_text else None,
            "text_sha256": text_digest(p.text, self._hash_key),
            "text_chars": len(p.text),
            "predicted": p.predicted,
            "confidence": float(p.confidence),
            "top_k": p.top_k,
            "model_tag": p.model_tag,
            "latency_ms": float(p.latency_ms),
            "embedding": p.embedding,
        }

    def flush(self) -> int:
        """Write what the spool holds (earlier outages), then everything buffered now; returns the rows written.

        Raises:
            the database's error when it fails: the rows stay buffered for the next flush, and past
            `max_backlog` buffered rows they move to the spool (when there is one), so memory stays bounded.
        """
        try:
            if not self._schema_ready:  # the database did not answer at start
                if not self._buffer:
                    return 0  # nothing to write yet: no attempt (and no warning) every interval
                self._migrate()
                self._schema_ready = True
            written = self._replay() if self.spool is not None else 0
        except Exception:
            self._spill_if_over()  # the spool could not be written: the database is failing still
            raise
        with self._lock:
            batch = list(self._buffer)
            self._buffer.clear()
        if not batch:
            return written
        done, left, error = self._store(batch)
        if error is not None:
            with self._lock:  # keep them for the next attempt: losing rows is worse than retrying
                self._buffer.extendleft(reversed(left))
            self._spill_if_over()
            raise error
        return written + done

    def _spill_if_over(self) -> None:
        if self.spool is None:
            return
        with self._lock:
            over = len(self._buffer) > self.max_backlog
        if over:
            self._spill()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._insert(self.tables["predictions"]), rows)

    def _store(self, rows: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]], Exception | None]:
        """Write `rows`: (rows written, rows left unwritten because the database failed, that failure or None).

        A batch the database refuses for what a row holds (not for being down) is written row by row, so that
        one bad row cannot hold back every row beside it, retried forever while the buffer grows; a row
        refused on its own is reported (ERROR, its request id) and counted in `refused`.
        """
        try:
            self._write(rows)
            return len(rows), [], None
        except Exception as exc:
            if not _refused_rows(exc):
                return 0, rows, exc
        written = 0
        for i, row in enumerate(rows):
            try:
                self._write([row])
            except Exception as exc:
                if not _refused_rows(exc):
                    return written, rows[i:], exc
                self.refused += 1
                log.error("prediction log: the database refused request %s (%s)", row["request_id"], first_line(exc))
            else:
                written += 1
        return written, [], None

    def _spill(self) -> None:
        """Move the buffered rows to a spool file (written whole, then renamed: never half a file)."""
        assert self.spool is not None
        with self._lock:
            rows = list(self._buffer)
        path = _spool_write(self.spool, rows)
        with self._lock:  # only the rows written: log() may have appended more meanwhile
            for _ in rows:
                self._buffer.popleft()
        log.warning(
            "prediction log %s is failing with %d rows waiting: moved them to %s, written when it answers again",
            self._safe_url(),
            len(rows),
            path,
        )

    def _replay(self) -> int:
        """Write the spool's files, oldest first, each by one process (a worker beside this one skips it)."""
        assert self.spool is not None
        written = 0
        for path in sorted(self.spool.glob(f"*{SPOOL_SUFFIX}")):
            with _claimed(path) as rows:
                if rows is None:
                    continue
                done, left, error = self._store(rows)
                written += done
                if error is not None:
                    if len(left) < len(rows):  # left is what follows the rows written
                        _spool_write(self.spool, left, path)
                    raise error
                path.unlink()
        return written

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # a database hiccup must not kill the flusher
                log.warning("prediction log flush failed, will retry: %s", first_line(exc))

    def close(self) -> None:
        """Stop the flusher and write what is left (call on shutdown); with the database failing, what is left
        goes to the spool (when there is one) for the next start."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        try:
            self.flush()
        except Exception as exc:
            if not self._buffer:  # nothing left to lose (a spool file waits for the next start)
                log.warning("prediction log %s still failing at shutdown: %s", self._safe_url(), first_line(exc))
            elif self.spool is None:
                raise
            else:
                self._spill()
        finally:
            self.engine.dispose()

    # ------------------------------------------------------------ feedback and reads

    def record_feedback(self, request_id: str, label: str, source: str = "api") -> None:
        """Attach a true label to a logged request (see `record_feedback_many`)."""
        self.record_feedback_many([(request_id, label)], source)

    def record_feedback_many(self, items: list[tuple[str, str]], source: str = "api") -> None:
        """Attach true labels to logged requests, all or none, in one transaction; `source` (FEEDBACK_SOURCES)
        says where they came from.

        Raises:
            UnknownRequest: some ids were never logged (named in the message); nothing is recorded.
        """
        if source not in FEEDBACK_SOURCES:
            raise ValueError(f"feedback source {source!r}: one of {', '.join(FEEDBACK_SOURCES)}")
        self.flush()  # the requests may still sit in the buffer
        predictions, feedback = self.tables["predictions"], self.tables["feedback"]
        wanted = list(dict.fromkeys(request_id for request_id, _ in items))
        with self.engine.begin() as conn:
            found = {
                row[0]
                for row in conn.execute(
                    self._select(predictions.c.request_id).where(predictions.c.request_id.in_(wanted))
                )
            }
            missing = [request_id for request_id in wanted if request_id not in found]
            if missing:
                shown = ", ".join(repr(m) for m in missing[:5])
                shown += f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                verb = "is" if len(missing) == 1 else "are"
                raise UnknownRequest(f"request_id {shown} {verb} not in the prediction log")
            now = datetime.now(UTC)
            conn.execute(
                self._insert(feedback),
                [{"request_id": r, "label": label, "created_at": now, "source": source} for r, label in items],
            )

    def count(self) -> int:
        """Rows written so far (after a flush)."""
        from sqlalchemy import func

        self.flush()
        with self.engine.connect() as conn:
            return int(conn.execute(self._select(func.count()).select_from(self.tables["predictions"])).scalar_one())

    def joined(self) -> list[dict[str, Any]]:
        """Predictions with their latest feedback label (None when unlabelled), oldest first."""
        self.flush()
        frame = read_window(self.url)
        return frame.astype(object).where(frame.notna(), None).to_dict("records")


SPOOL_SUFFIX = ".jsonl"
DAMAGED_SUFFIX = ".damaged"  # a spool file's unreadable lines, set aside beside it (not replayed)
WINDOW_COLUMNS = [
    "request_id",
    "created_at",
    "text",
    "text_sha256",
    "text_chars",
    "predicted",
    "confidence",
    "top_k",
    "model_tag",
    "latency_ms",
    "embedding",
    "true_label",
]
# a spooled row holds PredictionLog._row's keys, the predictions table's columns (embedding only since v3)
SPOOL_KEYS = frozenset(WINDOW_COLUMNS) - {"true_label"}


def _spool_write(folder: Path, rows: list[dict[str, Any]], path: Path | None = None) -> Path:
    """Rows as JSON lines in `path` (default: a new file in `folder`), written to a temp file, synced and renamed
    over it, so a crash leaves the old file or the new one. Names sort oldest first."""
    path = path or folder / f"{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}{SPOOL_SUFFIX}"
    tmp = folder / f".{path.name}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(_spooled(row), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def _spooled(row: dict[str, Any]) -> dict[str, Any]:
    embedding = row["embedding"]
    return row | {
        "created_at": row["created_at"].isoformat(),
        "embedding": None if embedding is None else base64.b64encode(embedding).decode("ascii"),
    }


def _unspooled(line: str) -> dict[str, Any]:
    """A spooled row back as `_row` made it. Raises ValueError for a line that is not one (binascii.Error is one)."""
    row = json.loads(line)
    if not isinstance(row, dict) or not SPOOL_KEYS - {"embedding"} <= set(row) <= SPOOL_KEYS:
        raise ValueError(f"expected a JSON object with the keys {sorted(SPOOL_KEYS)}")
    embedding = row.get("embedding")  # spooled before schema v3: none
    return row | {
        "created_at": datetime.fromisoformat(row["created_at"]),
        "embedding": None if embedding is None else base64.b64decode(embedding, validate=True),
    }


def _readable_rows(path: Path, lines: Iterator[str]) -> list[dict[str, Any]]:
    """The rows of a spool file's lines; lines that are not rows (edited by hand, damaged outside tuneloop) are
    appended to `<file>.damaged` beside it, which is never replayed, and named in an ERROR: kept, not lost, and
    unable to hold back every row after them, as a flush that raised on them would (every flush, for good)."""
    rows, damaged, first = [], [], ""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(_unspooled(line))
        except (ValueError, TypeError) as exc:
            damaged.append(line.rstrip("\n") + "\n")
            first = first or f"line {number}: {first_line(exc)}"
    if damaged:
        aside = path.with_name(path.name + DAMAGED_SUFFIX)
        with open(aside, "a", encoding="utf-8") as handle:
            handle.writelines(damaged)
            handle.flush()
            os.fsync(handle.fileno())
        log.error(
            "prediction log spool %s: %d line(s) are not prediction rows (%s); set aside in %s (mend them and "
            "rename the file to end in %s for the next flush to write them), the file's %d other rows are written",
            path,
            len(damaged),
            first,
            aside,
            SPOOL_SUFFIX,
            len(rows),
        )
    return rows


@contextmanager
def _claimed(path: Path) -> Iterator[list[dict[str, Any]] | None]:
    """The rows of a spool file while this process holds it (an exclusive lock on the file); None when another
    process holds it or has already written it (the file is gone, or was replaced by what was left of it)."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        yield None
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except (BlockingIOError, FileNotFoundError):
            current = False
        yield _readable_rows(path, handle) if current else None


def _refused_rows(exc: Exception) -> bool:
    """The database refused what a row holds (a value it cannot store, a repeated key), not the connection."""
    from sqlalchemy.exc import DataError, IntegrityError

    return isinstance(exc, DataError | IntegrityError)


def migrate(engine: Any, metadata: Any, tables: dict[str, Any], shown_url: str) -> None:
    """Bring a log database to SCHEMA_VERSION: create what is missing (tables, indexes), record the
    version. Every step is idempotent (`checkfirst`), so a crash half-way is repaired next time."""
    from sqlalchemy import LargeBinary, String, delete, insert, select

    schema = tables["schema"]
    metadata.create_all(engine)  # tables, and the indexes of newly created tables
    with engine.begin() as conn:
        versions = [row[0] for row in conn.execute(select(schema.c.version))]
        found = max(versions) if versions else None
        if found is not None and found > SCHEMA_VERSION:
            raise PredictionLogError(
                f"prediction log {shown_url} has schema version {found}, this tuneloop writes version "
                f"{SCHEMA_VERSION}. Upgrade tuneloop or point TUNELOOP_DB_URL at another database."
            )
        if found == SCHEMA_VERSION:
            return
        for index in tables["predictions"].indexes:  # version 1 -> 2: the window index
            index.create(conn, checkfirst=True)
        _add_column(conn, "predictions", "embedding", LargeBinary())  # version 2 -> 3
        _add_column(conn, "feedback", "source", String(16))  # version 3 -> 4
        conn.execute(delete(schema))
        conn.execute(insert(schema).values(version=SCHEMA_VERSION))


def _add_column(conn: Any, table: str, column: str, kind: Any) -> None:
    """Add a nullable column to an older table (skipped when present)."""
    from sqlalchemy import inspect, text

    if column in {c["name"] for c in inspect(conn).get_columns(table)}:
        return
    compiled = kind.compile(dialect=conn.dialect)  # e.g. BLOB on SQLite, BYTEA on PostgreSQL
    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {compiled}"))


def window_query(
    model_tag: str | None,
    since: datetime | None,
    until: datetime | None,
    last: int | None,
    labeled: bool = False,
    has_source: bool = True,
) -> Any:
    """SELECT of the window's predictions (newest N first, when `last`), each with its latest feedback label
    (with `labeled`, only predictions that have feedback, so `last` counts labeled rows, and that label's
    `feedback_source` too: a second lookup, paid only by the reads that want it; NULL where the feedback table
    predates it, `has_source` False: a v3 log its service has not migrated yet).

    The label is a correlated subquery on the feedback table's request_id index: one index lookup per
    window row. A join to "latest feedback per request" grouped over the whole feedback table made
    SQLite compare every window row with every label (100k rows, 24k labels: 209 s; bench/monitor_cost.py).
    """
    from sqlalchemy import MetaData, null, select

    tables = _tables(MetaData())
    predictions, feedback = tables["predictions"], tables["feedback"]
    query = select(predictions)
    if labeled:
        query = query.where(select(feedback.c.id).where(feedback.c.request_id == predictions.c.request_id).exists())
    if model_tag is not None:
        query = query.where(predictions.c.model_tag == model_tag)
    if since is not None:
        query = query.where(predictions.c.created_at >= _utc(since))
    if until is not None:
        query = query.where(predictions.c.created_at < _utc(until))
    window = query.order_by(predictions.c.created_at.desc(), predictions.c.request_id.desc()).limit(last).subquery()

    def latest(column: Any) -> Any:
        newest = feedback.c.request_id == window.c.request_id
        return select(column).where(newest).order_by(feedback.c.id.desc()).limit(1).scalar_subquery()

    columns = [latest(feedback.c.label).label("true_label")]
    if labeled:
        columns.append((latest(feedback.c.source) if has_source else null()).label("feedback_source"))
    return select(window, *columns).order_by(window.c.created_at, window.c.request_id)


def read_window(
    url: str | None = None,
    *,
    model_tag: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    last: int | None = None,
    labeled: bool = False,
) -> Any:
    """Logged predictions as a DataFrame (oldest first), each with its latest feedback label (`true_label`).

    `model_tag` keeps one model's rows, `since <= created_at < until` a time range (naive means UTC),
    `labeled` only the rows that have a feedback label, `last` the newest N of that selection; `url`
    defaults to `database_url()`.

    Raises:
        PredictionLogError: the database is unreachable or has no prediction log in it.
    """
    import pandas as pd
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import SQLAlchemyError

    url = require_existing(url or database_url())
    try:
        engine = create_engine(url)
    except SQLAlchemyError as exc:  # no such dialect or driver
        raise _unusable(url, exc) from None
    try:
        if not inspect(engine).has_table("predictions"):
            raise PredictionLogError(
                f"prediction log {_shown(url)}: no predictions table. Point TUNELOOP_DB_URL "
                "at the database the service writes (its log starts with the first request)."
            )
        has_source = not labeled or "source" in {c["name"] for c in inspect(engine).get_columns("feedback")}
        with engine.connect() as conn:
            rows = conn.execute(window_query(model_tag, since, until, last, labeled, has_source)).mappings().all()
    except SQLAlchemyError as exc:
        raise _unusable(url, exc) from None
    finally:
        engine.dispose()
    frame = pd.DataFrame(rows, columns=WINDOW_COLUMNS + (["feedback_source"] if labeled else []))
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame


def require_existing(url: str) -> str:
    """`url`, once it is known not to name a SQLite file that does not exist: connecting would create an empty
    one there (a reader, or a typo in TUNELOOP_DB_URL, would leave a stray database behind and report "no
    predictions table" instead of the path). Server databases are checked by connecting.

    Raises:
        PredictionLogError: the SQLite file is missing (its absolute path named).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise PredictionLogError(f"prediction log {_shown(url)}. Check TUNELOOP_DB_URL.") from None
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
        path = Path(database).absolute()
        if not path.exists():
            raise PredictionLogError(
                f"prediction log {_shown(url)}: no such file ({path}). Point TUNELOOP_DB_URL at the database the "
                "service writes (the service creates it when it starts)."
            )
    return url


def _unusable(url: str, exc: Exception) -> PredictionLogError:
    """The log's database failed in a way waiting will not fix here: the cause and where to look."""
    return PredictionLogError(
        f"prediction log database {_shown(url)}: {first_line(exc)}. Check TUNELOOP_DB_URL and that the "
        "database server is running."
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _shown(url: str) -> str:
    """`url` without its password; a string SQLAlchemy cannot parse is not echoed (it may hold one)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL: e.g. sqlite:///predictions.db or postgresql+psycopg://user@host/db)"


def new_request_id() -> str:
    """A time-ordered unique id (sortable, so logs read in order)."""
    import uuid

    return f"{int(time.time() * 1000):013x}{uuid.uuid4().hex[:19]}"
