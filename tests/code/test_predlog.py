"""The prediction log: buffered writes lose nothing, feedback joins, privacy mode, restart, PostgreSQL."""

import threading

import pytest

from tests.conftest import fresh_postgres_db
from tuneloop.predlog import Prediction, PredictionLog, PredictionLogError, UnknownRequest, new_request_id


def _prediction(i: int, text: str | None = None) -> Prediction:
    return Prediction(
        request_id=new_request_id(),
        text=text or f"message {i}",
        predicted="card_lost",
        confidence=0.9,
        top_k=[{"label": "card_lost", "score": 0.9}],
        model_tag="m:1",
        latency_ms=3.0,
    )


def _sqlite(tmp_path, **kw) -> PredictionLog:
    return PredictionLog(f"sqlite:///{tmp_path / 'log.db'}", **kw)


def test_concurrent_logging_then_close_loses_nothing(tmp_path):
    plog = _sqlite(tmp_path, flush_interval_s=60)  # the timer never fires: close() must flush
    threads = [
        threading.Thread(target=lambda k=k: [plog.log(_prediction(k * 100 + i)) for i in range(50)]) for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    plog.close()
    reopened = _sqlite(tmp_path)  # a restart keeps the log
    assert reopened.count() == 200
    reopened.close()


def test_timer_flushes_without_being_asked(tmp_path):
    plog = _sqlite(tmp_path, flush_interval_s=0.05)
    plog.log(_prediction(1))
    other = _sqlite(tmp_path)
    for _ in range(100):
        if other.count() == 1:
            break
        threading.Event().wait(0.05)
    assert other.count() == 1
    plog.close()
    other.close()


def test_feedback_joins_on_request_id_and_unknown_ids_are_refused(tmp_path):
    plog = _sqlite(tmp_path)
    first, second = _prediction(1), _prediction(2)
    plog.log(first)
    plog.log(second)
    plog.record_feedback(first.request_id, "card_not_arrived")
    with pytest.raises(UnknownRequest, match="'nope' is not in the prediction log"):
        plog.record_feedback("nope", "card_lost")
    rows = {r["request_id"]: r for r in plog.joined()}
    assert rows[first.request_id]["true_label"] == "card_not_arrived"
    assert rows[second.request_id]["true_label"] is None
    plog.record_feedback(first.request_id, "card_lost")  # a correction: the latest label wins, one row each
    joined = plog.joined()
    assert len(joined) == 2 and {r["request_id"]: r["true_label"] for r in joined}[first.request_id] == "card_lost"
    plog.close()


def test_privacy_mode_keeps_only_a_hash(tmp_path):
    plog = _sqlite(tmp_path, store_text=False)
    plog.log(_prediction(1, text="my card number is 4111"))
    (row,) = plog.joined()
    assert row["text"] is None and len(row["text_sha256"]) == 64 and row["text_chars"] == 22
    plog.close()


def test_incompatible_schema_version_is_refused(tmp_path):
    from sqlalchemy import text

    plog = _sqlite(tmp_path)
    with plog.engine.begin() as conn:
        conn.execute(text("UPDATE tuneloop_schema SET version = 99"))
    plog.close()
    with pytest.raises(PredictionLogError, match="schema version 99"):
        _sqlite(tmp_path)
    with pytest.raises(PredictionLogError, match="schema version 99"):  # answering and refused: no waiting
        _sqlite(tmp_path, spool_dir=tmp_path / "spool")


@pytest.mark.postgres
def test_postgresql_backend(tmp_path):
    url = fresh_postgres_db("tuneloop_predlog_test")
    plog = PredictionLog(url)
    item = _prediction(1)
    plog.log(item)
    plog.record_feedback(item.request_id, "card_lost")
    plog.close()
    again = PredictionLog(url)
    assert again.count() == 1 and again.joined()[0]["true_label"] == "card_lost"
    again.close()


def test_a_row_the_database_refuses_holds_back_no_other_row(tmp_path, caplog):
    """A repeated request id is refused by the primary key: the rows beside it are written, the refused one is
    reported by id, and nothing stays in the buffer to be retried forever."""
    plog = _sqlite(tmp_path, flush_interval_s=3600)
    first, again = _prediction(1), _prediction(2)
    again.request_id = first.request_id
    for item in (_prediction(0), first, again, _prediction(3)):
        plog.log(item)
    assert plog.flush() == 3
    assert plog.refused == 1 and not plog._buffer
    assert f"refused request {first.request_id}" in caplog.text
    plog.log(_prediction(4))
    plog.close()
    assert _sqlite(tmp_path).count() == 4


def test_a_database_that_fails_keeps_every_row_for_the_next_flush(tmp_path):
    import sqlite3

    plog = _sqlite(tmp_path, flush_interval_s=3600)
    plog.log(_prediction(0))
    plog.log(_prediction(1))
    with sqlite3.connect(tmp_path / "log.db") as other:  # the table is gone: the database's fault, not the rows'
        other.execute("ALTER TABLE predictions RENAME TO predictions_away")
    with pytest.raises(Exception, match="no such table"):
        plog.flush()
    assert len(plog._buffer) == 2 and plog.refused == 0
    with sqlite3.connect(tmp_path / "log.db") as other:
        other.execute("ALTER TABLE predictions_away RENAME TO predictions")
    assert plog.flush() == 2
    plog.close()


@pytest.mark.postgres
def test_a_nul_character_postgresql_cannot_store_refuses_only_its_row(tmp_path):
    """The guard refuses NUL in /classify texts; should one reach the log by another path, PostgreSQL refuses
    that row alone (it used to refuse the whole flush, every retry, while every later prediction queued up)."""
    url = fresh_postgres_db("tuneloop_predlog_nul_test")
    plog = PredictionLog(url, flush_interval_s=3600)
    for item in (_prediction(0), _prediction(1, "hel\x00lo"), _prediction(2)):
        plog.log(item)
    assert plog.flush() == 2 and plog.refused == 1
    plog.log(_prediction(3))
    assert plog.count() == 3
    plog.close()


def _table_away(db, away: bool) -> None:
    """The predictions table renamed away and back: the database failing (not the rows), for real."""
    import sqlite3

    names = ("predictions", "predictions_away")
    with sqlite3.connect(db) as other:
        other.execute("ALTER TABLE {} RENAME TO {}".format(*(names if away else names[::-1])))


def test_an_outage_past_the_backlog_moves_rows_to_the_spool_and_the_next_flush_writes_them(tmp_path, caplog):
    spool = tmp_path / "spool"
    plog = _sqlite(tmp_path, flush_interval_s=3600, spool_dir=spool, max_backlog=3)
    for i in range(2):
        plog.log(_prediction(i))
    _table_away(tmp_path / "log.db", True)
    with pytest.raises(Exception, match="no such table"):
        plog.flush()
    assert len(plog._buffer) == 2 and not list(spool.iterdir())  # within the backlog: kept in memory
    for i in range(2, 5):
        plog.log(_prediction(i, text=f"message {i} \u4e2d\U0001f600"))
    with pytest.raises(Exception, match="no such table"):
        plog.flush()
    (spooled,) = spool.iterdir()
    assert not plog._buffer and len(spooled.read_text().splitlines()) == 5
    assert "moved them to" in caplog.text
    plog.log(_prediction(5))
    _table_away(tmp_path / "log.db", False)
    assert plog.flush() == 6 and not list(spool.iterdir())
    rows = plog.joined()
    assert [r["text"] for r in rows][:5] == ["message 0", "message 1", *(f"message {i} \u4e2d\U0001f600" for i in (2, 3, 4))]
    plog.close()


def test_a_long_outage_keeps_spilling_so_memory_stays_bounded(tmp_path):
    """Once a spool file exists, each flush tries it first and fails while the database does: the buffer must
    still spill past the backlog (it grew without bound when the failed replay ended the flush first)."""
    spool = tmp_path / "spool"
    plog = _sqlite(tmp_path, flush_interval_s=3600, spool_dir=spool, max_backlog=3)
    _table_away(tmp_path / "log.db", True)
    for round_ in range(4):
        for i in range(5):
            plog.log(_prediction(round_ * 5 + i))
        with pytest.raises(Exception, match="no such table"):
            plog.flush()
        assert len(plog._buffer) <= 3
    assert len(list(spool.iterdir())) == 4
    _table_away(tmp_path / "log.db", False)
    assert plog.flush() == 20 and plog.count() == 20 and not list(spool.iterdir())
    plog.close()


def test_rows_spooled_at_shutdown_are_written_by_the_next_start(tmp_path):
    """The database still down when the service stops: close() spools what is left; a new process writes it."""
    spool = tmp_path / "spool"
    plog = _sqlite(tmp_path, flush_interval_s=3600, spool_dir=spool, max_backlog=100, store_text=False)
    item = _prediction(0, text="private words")
    item.embedding = b"\x00\x01\xfe\xff" * 4
    plog.log(item)
    _table_away(tmp_path / "log.db", True)
    plog.close()
    (spooled,) = spool.iterdir()
    assert "private words" not in spooled.read_text()  # store_text off: the spool holds the digest only
    _table_away(tmp_path / "log.db", False)
    again = _sqlite(tmp_path, flush_interval_s=3600, spool_dir=spool)
    assert again.count() == 1 and not list(spool.iterdir())
    row = again.joined()[0]
    assert row["request_id"] == item.request_id and row["text"] is None and row["embedding"] == item.embedding
    again.close()


def test_a_spool_file_another_worker_holds_is_left_to_it(tmp_path):
    import fcntl

    from tuneloop.predlog import _spool_write

    spool = tmp_path / "spool"
    plog = _sqlite(tmp_path, flush_interval_s=3600, spool_dir=spool)
    path = _spool_write(spool, [plog._row(_prediction(i)) for i in range(3)])
    with open(path) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a second worker replaying it right now
        assert plog.flush() == 0 and path.exists()
    assert plog.flush() == 3 and not path.exists()
    assert plog.flush() == 0 and plog.count() == 3  # written once
    plog.close()


def test_a_database_not_answering_at_start_is_waited_for_with_a_spool_and_refused_without(tmp_path, caplog):
    """A service restarted during a database outage starts and serves: its rows wait (memory, then spool) and
    the first flush that reaches the database creates the tables and writes them. Without a spool there is
    nowhere bounded to wait, and a refused database (newer schema) is an error at once either way."""
    folder = tmp_path / "not-yet"  # SQLite cannot open a file in a folder that does not exist: not answering
    url = f"sqlite:///{folder / 'log.db'}"
    with pytest.raises(PredictionLogError, match="unable to open database file.*TUNELOOP_DB_URL"):
        PredictionLog(url, flush_interval_s=3600)
    spool = tmp_path / "spool"
    plog = PredictionLog(url, flush_interval_s=3600, spool_dir=spool, max_backlog=2)
    assert "is not answering (" in caplog.text and "going on" in caplog.text
    for i in range(5):
        plog.log(_prediction(i))
    with pytest.raises(Exception, match="unable to open database file"):
        plog.flush()
    assert len(list(spool.iterdir())) == 1 and not plog._buffer  # past the backlog: on disk, not in memory
    plog.log(_prediction(5))
    folder.mkdir()
    assert plog.flush() == 6 and plog.count() == 6 and not list(spool.iterdir())
    assert [r["text"] for r in plog.joined()] == [f"message {i}" for i in range(6)]
    plog.close()



@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_labeled_window_is_the_newest_rows_with_feedback_before_its_end(tmp_path, backend):
    from datetime import UTC, datetime, timedelta

    from tuneloop.predlog import read_window

    url = f"sqlite:///{tmp_path / 'log.db'}" if backend == "sqlite" else fresh_postgres_db("tuneloop_labeled_test")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    plog = PredictionLog(url)
    items = [_prediction(i) for i in range(10)]
    for i, item in enumerate(items):
        item.request_id, item.created_at = f"r{i:03d}", start + timedelta(minutes=i)
        plog.log(item)
    plog.flush()
    plog.record_feedback_many([(items[i].request_id, "card_lost") for i in (1, 3, 4, 8)])
    plog.record_feedback(items[3].request_id, "app_bug")  # a later label for the same request wins
    plog.close()
    frame = read_window(url, model_tag="m:1", until=start + timedelta(minutes=8), last=2, labeled=True)
    assert frame["request_id"].tolist() == ["r003", "r004"]  # r008 is not before the end; r001 not among the 2
    assert frame["true_label"].tolist() == ["app_bug", "card_lost"]
    assert len(read_window(url, labeled=True)) == 4 and len(read_window(url)) == 10


@pytest.mark.parametrize("labeled", [False, True])
def test_a_window_looks_each_label_up_by_index_instead_of_scanning_the_feedback(tmp_path, labeled):
    # Joined to a "latest label per request" table, SQLite compared every window row with every label:
    # a 100k-row window with 24k labels took 209 s to read. The plan must search feedback by request id.
    from sqlalchemy import create_engine, text

    from tuneloop.predlog import window_query

    _sqlite(tmp_path).close()
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    sql = str(window_query("m:1", None, None, 1000, labeled).compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        plan = [row[-1] for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql))]
    engine.dispose()
    feedback_steps = [step for step in plan if "feedback" in step]
    assert feedback_steps and all(step.startswith("SEARCH feedback USING") for step in feedback_steps), plan
    assert not any("SCAN" in step and "JOIN" in step for step in plan), plan


def test_a_damaged_spool_line_is_set_aside_and_holds_back_no_row(tmp_path, caplog):
    """A spool file edited by hand, cut short by a full disk outside tuneloop or written by another version: its
    readable rows are written, its unreadable lines go to a `.damaged` file beside it (kept, named in an ERROR),
    and the log goes on. It used to raise on every flush, so no row reached the database again."""
    import json

    from tuneloop.predlog import _spool_write

    spool = tmp_path / "spool"
    plog = _sqlite(tmp_path, flush_interval_s=3600, spool_dir=spool)
    path = _spool_write(spool, [plog._row(_prediction(i)) for i in range(3)])
    good = path.read_text().splitlines()
    missing_key = json.dumps({k: v for k, v in json.loads(good[0]).items() if k != "request_id"})
    bad = ['{"request_id": "x", "created', "not json", missing_key, '{"embedding": "***", "created_at": "now"}']
    path.write_text("\n".join([good[0], *bad, good[1], "", good[2]]) + "\n")
    plog.log(_prediction(9))
    assert plog.flush() == 4 and plog.count() == 4 and not path.exists()
    aside = path.with_name(path.name + ".damaged")
    assert aside.read_text().splitlines() == bad
    assert f"{path}: 4 line(s) are not prediction rows (line 2:" in caplog.text and str(aside) in caplog.text
    assert plog.flush() == 0 and aside.exists()  # set aside once, never replayed
    older = _prediction(10)  # spooled by a tuneloop before schema v3: no embedding key, still written
    line = json.dumps({k: v for k, v in json.loads(good[0]).items() if k != "embedding"} | {"request_id": older.request_id})
    path.write_text(line + "\n")
    assert plog.flush() == 1 and plog.count() == 5
    plog.close()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("not a url :secret", r"not a database URL: e\.g\. sqlite:///predictions\.db"),  # not echoed: it may hold one
        ("foo://user:secret@host/db", r"foo://user:\*\*\*@host/db: Can't load plugin"),
    ],
)
def test_a_log_url_sqlalchemy_cannot_use_is_one_error_for_readers_and_the_writer(url, said):
    from tuneloop.predlog import read_window

    for use in (lambda: read_window(url), lambda: PredictionLog(url)):
        with pytest.raises(PredictionLogError, match=said) as caught:
            use()
        assert "secret" not in str(caught.value) and "TUNELOOP_DB_URL" in str(caught.value)
