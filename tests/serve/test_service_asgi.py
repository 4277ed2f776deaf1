"""The real service in-process through BentoML's `to_asgi()` (fast, no server process): the
guard, the batchable classify API, feedback shapes and GET /metadata on one loaded model."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.serve.fuzzing import (
    BODIES,
    CONTENT_TYPES,
    FUZZ,
    HEADER_VALUE,
    assert_sound,
    request_of,
    strategies_from,
)
from tests.serve.test_guard import CASES


def _forget_bentoml_metrics() -> None:
    from prometheus_client import REGISTRY

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(name.startswith("bentoml_") for name in names):
            REGISTRY.unregister(collector)


@contextmanager
def asgi_client(tag: str, params_file: Path, db_url: str) -> Iterator[Any]:
    """A Starlette TestClient on the service's ASGI app for `tag` under `params_file` (its lifespan loads the model)."""
    from starlette.testclient import TestClient

    env = {"TUNELOOP_MODEL_TAG": tag, "TUNELOOP_PARAMS": str(params_file), "TUNELOOP_DB_URL": db_url}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        from bentoml._internal.utils.args import set_arguments

        import tuneloop.serve.service as service

        # An in-process `bentoml build` earlier in the session leaves its Bento arguments set, and the
        # service would take those settings: clear them, then re-import (settings are read at import).
        set_arguments({})
        _forget_bentoml_metrics()  # another module's in-process app registered them: one registry per process
        service = importlib.reload(service)
        with TestClient(service.TextClassifier.to_asgi()) as test_client:
            yield test_client
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    tag, work = served
    with asgi_client(
        tag, work / "params.yaml", f"sqlite:///{tmp_path_factory.mktemp('asgi') / 'log.db'}"
    ) as test_client:
        yield test_client


@pytest.mark.parametrize("case", list(CASES))
def test_bad_classify_input_never_reaches_the_model(client, case):
    body, status, words = CASES[case]
    response = client.post("/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status and words in response.json()["error"]


def test_classify_feedback_and_metadata_in_process(client, served):
    tag, _ = served
    response = client.post("/classify", json={"texts": ["great! the food was great", "awful, awful"]})
    assert response.headers["content-type"] == "application/json"
    answers = response.json()
    assert [a["model"] for a in answers] == [tag, tag] and all(a["request_id"] for a in answers)
    assert abs(sum(k["score"] for k in answers[0]["top_k"]) - 1) < 1e-6  # 3 labels: top-3 is all of them
    ids = [a["request_id"] for a in answers]
    both = client.post("/feedback", json={"items": [{"request_id": i, "label": "neg"} for i in ids]})
    assert both.status_code == 200 and both.json()["recorded"] == 2
    from tuneloop.predlog import read_window

    labeled = read_window(labeled=True)  # the client's log (TUNELOOP_DB_URL)
    assert set(labeled["request_id"]) >= set(ids) and set(labeled["feedback_source"]) == {"api"}
    for body, status, words in (
        ({"request_id": ids[0]}, 400, "expected"),
        ({"items": []}, 400, "expected"),
        ({"items": [{"request_id": ids[0], "label": "pos", "extra": 1}]}, 400, "items[0]: expected"),
        ({"items": [{"request_id": ids[0], "label": ""}]}, 400, "non-empty strings"),
        ({"request_id": ids[0], "label": "maybe"}, 400, "label is not one of this model's labels: neg, neu, pos"),
        ({"request_id": "f" * 32, "label": "pos"}, 404, f"'{'f' * 32}' is not in the prediction log"),
        ({"request_id": "no-such-id", "label": "pos"}, 400, "request_id is not an id /classify returned"),
    ):
        response = client.post("/feedback", json=body)
        assert response.status_code == status and words in response.json()["error"], body
    meta = client.get("/metadata").json()
    assert meta["model"] == tag and meta["labels"] == ["neg", "neu", "pos"]
    assert client.get("/readyz").status_code == 200


def test_the_answer_s_media_type_is_declared_not_derived_per_response(client):
    """BentoML derives an undeclared media type from the output's JSON schema on every response (18% of a
    worker's GIL time at 32 clients, py-spy); the annotation declares it once."""
    import sys

    service = sys.modules["tuneloop.serve.service"]  # as the client fixture loaded it
    assert service.TextClassifier.apis["classify"].output_spec.media_type == "application/json"


# ------------------------------------------------------------ issue 9 through the real BentoML app


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=b", "text/plain"]
)
def test_only_json_reaches_bentoml(client, content_type):
    """Before: a form-encoded JSON body was answered with the example texts (limits bypassed), and
    multipart was a 500."""
    body = b'{"texts": ["' + b"x" * 5000 + b'", "a", "b", "c", "d", "e"]}'
    response = client.post("/classify", content=body, headers={"content-type": content_type})
    assert response.status_code == 415 and "application/json" in response.json()["error"]


def test_every_error_status_is_json_in_one_shape(client):
    answers = {
        404: client.get("/no/such/route"),
        405: client.get("/classify"),
        "feedback without a body": client.post("/feedback", headers={"content-type": "application/json"}),
        "feedback not JSON": client.post("/feedback", content=b"{", headers={"content-type": "application/json"}),
    }
    for case, response in answers.items():
        assert 400 <= response.status_code < 500 and set(response.json()) == {"error"}, case
    assert answers[404].status_code == 404 and answers[405].status_code == 405
    assert answers["feedback without a body"].status_code == 400  # FastAPI's 422 {"detail": ...} before


def test_texts_are_checked_the_same_under_any_spelling(client):
    nested = client.post("/classify", content=b"[" * 1000 + b"]" * 1000, headers={"content-type": "application/json"})
    assert nested.status_code == 400
    blank = client.post("/classify", json={"texts": ["\u200b\ufeff"]})
    assert blank.status_code == 400 and "texts[0] is empty" in blank.json()["error"]
    assert client.post("/classify", content=b'{"texts":["ok"]}').status_code == 200  # no Content-Type: JSON


def test_admission_runs_before_bentoml_s_own_middleware(client):
    """A refusal must not pay for BentoML's metrics, tracing and access log (0.63 ms vs 0.09 ms)."""
    from tuneloop.serve.admission import Admission

    assert isinstance(client.app, Admission) and client.app.limit == 2 * 32


# ------------------------------------------------------------ fuzzing (make fuzz: 2000 examples each)


def test_fuzz_schemathesis_cases_from_docs_json(client):
    operations = strategies_from(client.get("/docs.json").json())

    @FUZZ
    @given(data=st.data())
    def one(data):
        method, path, kwargs = request_of(data.draw(st.one_of(operations)))
        assert_sound(client.request(method, path, **kwargs))

    one()
    assert client.get("/readyz").status_code == 200


@FUZZ
@given(
    method=st.sampled_from(["POST", "POST", "GET", "PUT", "DELETE", "PATCH"]),
    path=st.sampled_from(["/classify", "/feedback", "/metadata", "/nope", "/docs.json"]),
    body=BODIES,
    content_type=CONTENT_TYPES,
    extra=st.lists(
        st.tuples(st.sampled_from(["authorization", "x-forwarded-for", "accept"]), HEADER_VALUE), max_size=3
    ),
)
def test_fuzz_hostile_requests_never_5xx_and_errors_are_json(client, method, path, body, content_type, extra):
    headers = [(b"content-type", content_type.encode("utf-8", "surrogatepass"))] if content_type else []
    headers += [(name.encode(), value) for name, value in extra]
    assert_sound(client.request(method, path, content=body, headers=headers))
    assert client.get("/readyz").status_code == 200
