"""The service while the prediction log's database fails: /feedback is a 503 to retry, never a 500 and a
traceback logged as a bug (its own module: the in-process app is re-imported per module, see asgi_client)."""

from tests.serve.test_service_asgi import asgi_client


def test_feedback_while_the_log_s_database_fails_is_a_503_to_retry_and_then_recorded(served, tmp_path):
    """It was an exception out of the route: a 500 and a traceback logged as a bug, for a database outage."""
    import sqlite3

    tag, work = served
    db = tmp_path / "log.db"
    with asgi_client(tag, work / "params.yaml", f"sqlite:///{db}") as c:
        (answer,) = c.post("/classify", json={"texts": ["great! the room was great"]}).json()
        body = {"request_id": answer["request_id"], "label": "pos"}
        with sqlite3.connect(db) as other:  # the log's tables gone: the database failing, for real
            other.execute("ALTER TABLE feedback RENAME TO feedback_away")
        refused = c.post("/feedback", json=body)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert "the prediction log's database is not answering" in refused.json()["error"]
        assert "feedback_away" not in refused.text and "sqlite" not in refused.text  # no internals to the client
        with sqlite3.connect(db) as other:
            other.execute("ALTER TABLE feedback_away RENAME TO feedback")
        assert c.post("/feedback", json=body).json()["recorded"] == 1
