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


def test_the_service_starts_and_serves_while_the_log_s_database_is_not_answering(served, tmp_path, monkeypatch):
    """A restart during a database outage: it refused to start (no worker ready, no answers) for a log it only
    writes behind the answers. Now it serves, and the rows reach the database once it answers."""
    tag, work = served
    monkeypatch.chdir(tmp_path)  # serve.log_spool_dir is relative to the service's folder
    folder = tmp_path / "db-not-yet"
    with asgi_client(tag, work / "params.yaml", f"sqlite:///{folder / 'log.db'}") as c:
        assert c.get("/readyz").status_code == 200
        answers = [c.post("/classify", json={"texts": [f"the room was great {i}"]}).json()[0] for i in range(3)]
        body = {"request_id": answers[0]["request_id"], "label": "pos"}
        assert c.post("/feedback", json=body).status_code == 503
        folder.mkdir()
        assert c.post("/feedback", json=body).json()["recorded"] == 1
    from tuneloop.predlog import read_window

    logged = read_window(f"sqlite:///{folder / 'log.db'}")
    assert sorted(logged["request_id"]) == sorted(a["request_id"] for a in answers)
    assert logged.set_index("request_id").loc[answers[0]["request_id"], "true_label"] == "pos"
