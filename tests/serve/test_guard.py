"""The request guard in front of the service: every bad input is a 4xx naming the problem."""

import json
import re

import httpx
import pytest

from tuneloop.serve.guard import Guard, Limits, feedback_pairs

pytestmark = pytest.mark.anyio  # anyio's pytest plugin runs the async tests

SEEN: list[bytes] = []


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def downstream(scope, receive, send):
    """Stands in for BentoML's app: echoes the body it received."""
    body = (await receive())["body"]
    SEEN.append(body)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body or b"{}"})


def client(**limits) -> httpx.AsyncClient:
    app = Guard(downstream, Limits(**limits))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


CASES = {
    "bad JSON": (b"{nope", 400, "not valid JSON"),
    "not an object": (b"[1, 2]", 400, 'expected a JSON object {"texts"'),
    "texts not a list": (b'{"texts": "hi"}', 400, "must be a list of strings, got str"),
    "empty list": (b'{"texts": []}', 400, "'texts' is empty"),
    "empty string": (b'{"texts": ["ok", "  "]}', 400, "texts[1] is empty"),
    "non-string item": (b'{"texts": ["ok", 3]}', 400, "texts[1] is a int"),
    "too many texts": (json.dumps({"texts": ["a"] * 5}).encode(), 400, "at most 4 per request"),
    "body too large": (json.dumps({"texts": ["a" * 3000]}).encode(), 413, "over 2048 bytes"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_classify_input_is_a_4xx_with_a_message(case):
    body, status, words = CASES[case]
    async with client(max_texts=4, max_body_bytes=2048) as c:
        response = await c.post("/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert words in response.json()["error"]


async def test_overlong_texts_are_truncated_or_rejected_by_config():
    async with client(max_chars=5) as c:
        ok = await c.post("/classify", json={"texts": ["abcdefgh"]})
    assert ok.status_code == 200 and ok.json() == {"texts": ["abcde"]}
    async with client(max_chars=5, overlong="reject") as c:
        refused = await c.post("/classify", json={"texts": ["abcdefgh"]})
    assert refused.status_code == 400 and "8 characters; the limit is 5" in refused.json()["error"]


async def test_api_key_is_required_when_set_but_probes_stay_open():
    async with client(api_key="s3cret") as c:
        assert (await c.post("/classify", json={"texts": ["hi"]})).status_code == 401
        wrong = await c.post("/classify", json={"texts": ["hi"]}, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "TUNELOOP_API_KEY" in wrong.json()["error"]
        right = await c.post("/classify", json={"texts": ["hi"]}, headers={"authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert (await c.get("/readyz")).status_code == 200
    async with client() as c:  # no key configured: open
        assert (await c.post("/classify", json={"texts": ["hi"]})).status_code == 200


def test_feedback_bodies_single_batch_and_refusals():
    labels = ["neg", "pos"]
    assert feedback_pairs({"request_id": "a", "label": "pos"}, labels) == [("a", "pos")]
    assert feedback_pairs(
        {"items": [{"request_id": "a", "label": "pos"}, {"request_id": "b", "label": "neg"}]}, labels
    ) == [("a", "pos"), ("b", "neg")]
    for body, words in (
        ([], "expected"),
        ({"items": []}, "expected"),
        ({"request_id": "a"}, "expected"),
        ({"request_id": "a", "label": "pos", "items": []}, "expected"),
        ({"items": [{"request_id": "a", "label": "pos"}, "b"]}, "items[1]: expected"),
        ({"request_id": "a", "label": "maybe"}, "label 'maybe' is not one of this model's labels"),
        ({"items": [{"request_id": "a", "label": "pos"}] * 1001}, "at most 1000 per request"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            feedback_pairs(body, labels)
