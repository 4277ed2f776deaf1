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
    # issue 9: each of these raised inside the guard (a 30 s hang, then a bare 500) or slipped past it
    "nested 1000 deep": (b"[" * 1000 + b"]" * 1000, 400, "nests deeper than 16 levels"),
    "nested 20 deep": (b'{"texts": ' + b"[" * 20 + b"]" * 20 + b"}", 400, "nests deeper than 16 levels"),
    "not UTF-8": (b'{"texts": ["caf\xe9"]}', 400, "not UTF-8"),
    "only invisible characters": ('{"texts": ["ok", "\u200b\ufeff \u2060"]}'.encode(), 400, "texts[1] is empty"),
    "lone surrogate": (b'{"texts": ["\\ud800"]}', 400, "texts[0] is not valid Unicode"),
    "NUL character": (b'{"texts": ["ok", "a\\u0000b"]}', 400, "texts[1] contains a NUL character"),
    "extra key": (b'{"texts": ["ok"], "smuggled": ["x"]}', 400, "unexpected keys"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_classify_input_is_a_4xx_with_a_message(case):
    body, status, words = CASES[case]
    async with client(max_texts=4, max_body_bytes=2048) as c:
        response = await c.post("/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert words in response.json()["error"]


async def test_deep_nesting_and_huge_integers_under_a_large_body_limit():
    async with client(max_body_bytes=1 << 20) as c:
        for body in (b"[" * 100_000 + b"]" * 100_000, b'{"texts": [' + b"1" * 5000 + b"]}"):
            response = await c.post("/classify", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400 and response.json()["error"].startswith("body ")


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


A, B = "0" * 31 + "a", "0" * 31 + "b"  # ids in /classify's format (tuneloop.predlog.new_request_id)


def test_feedback_bodies_single_batch_and_refusals():
    labels = ["neg", "pos"]
    assert feedback_pairs({"request_id": A, "label": "pos"}, labels) == [(A, "pos")]
    assert feedback_pairs(
        {"items": [{"request_id": A, "label": "pos"}, {"request_id": B, "label": "neg"}]}, labels
    ) == [(A, "pos"), (B, "neg")]
    for body, words in (
        ([], "expected"),
        ({"items": []}, "expected"),
        ({"request_id": A}, "expected"),
        ({"request_id": A, "label": "pos", "items": []}, "expected"),
        ({"items": [{"request_id": A, "label": "pos"}, "b"]}, "items[1]: expected"),
        ({"request_id": A, "label": "maybe"}, "label is not one of this model's labels: neg, pos"),
        ({"items": [{"request_id": f"{i:032x}", "label": "pos"} for i in range(1001)]}, "at most 1000 per request"),
        # issue 9: bounded like /classify, and nothing the client sent is quoted back
        (
            {"items": [{"request_id": A, "label": "pos"}, {"request_id": A, "label": "neg"}]},
            "items[1]: request_id repeats items[0]'s",
        ),
        ({"request_id": "<script>" * 100, "label": "pos"}, "request_id is not an id /classify returned"),
        ({"request_id": A, "label": "x" * 10_000}, "label is not one of this model's labels"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)) as refused:
            feedback_pairs(body, labels)
        assert "maybe" not in str(refused.value) and "<script>" not in str(refused.value)
        assert len(str(refused.value)) < 300


def test_request_ids_from_classify_pass_the_feedback_check():
    from tuneloop.predlog import new_request_id

    ids = [new_request_id() for _ in range(3)]
    items = [{"request_id": i, "label": "pos"} for i in ids]
    assert feedback_pairs({"items": items}, ["pos"]) == [(i, "pos") for i in ids]


# ------------------------------------------------------------ issue 9: the guard is the only parser


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",  # curl -d's default: BentoML parsed it as a form
        "multipart/form-data; boundary=x",  # a 500 in BentoML's form parser
        "text/plain",
        "application/json; charset=latin-1",
        "application/vnd.bentoml+pickle",
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(content_type):
    SEEN.clear()
    async with client() as c:
        response = await c.post("/classify", content=b'{"texts": ["ok"]}', headers={"content-type": content_type})
    assert response.status_code == 415 and "application/json" in response.json()["error"]
    assert SEEN == []  # never reached BentoML


async def test_what_bentoml_receives_is_the_reserialised_checked_body():
    SEEN.clear()
    async with client(max_chars=3) as c:
        for content_type in ("application/json; charset=UTF-8", None):  # no Content-Type counts as JSON
            headers = {"content-type": content_type} if content_type else {}
            response = await c.post("/classify", content=b' {"texts" :\n["abcdef"]} ', headers=headers)
            assert response.status_code == 200
    assert SEEN == [json.dumps({"texts": ["abc"]}).encode()] * 2
    SEEN.clear()
    async with client() as c:  # any other route or method gets no body at all
        assert (await c.request("GET", "/metadata", content=b"garbage")).status_code == 200
    assert SEEN == [b""]


async def test_hostile_headers_are_an_immediate_json_4xx():
    async with client(api_key="s3cret") as c:
        for value in (b"Bearer s3cr\xe9t", b"\xff\xfe", b"Bearer s3cret" + b"\x00"):
            response = await c.post("/classify", json={"texts": ["hi"]}, headers={"authorization": value})
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        many = [(f"x-h{i}", "v") for i in range(100)]
        assert (await c.get("/readyz", headers=many)).status_code == 200  # probes are not checked
        response = await c.post("/classify", json={"texts": ["hi"]}, headers=many)
        assert response.status_code == 431 and "headers" in response.json()["error"]
        response = await c.post("/classify", json={"texts": ["hi"]}, headers={"x-big": "a" * 9000})
        assert response.status_code == 431


async def test_with_a_key_only_the_probes_are_open():
    async with client(api_key="s3cret") as c:
        for path in ("/livez", "/readyz", "/healthz"):
            assert (await c.get(path)).status_code == 200
        for path in ("/metrics", "/docs.json", "/schema.json", "/", "/metadata", "/nope"):
            response = await c.get(path)
            assert response.status_code == 401 and "TUNELOOP_API_KEY" in response.json()["error"], path


async def broken(scope, receive, send):
    """Stands in for BentoML with answers that are not `{"error": ...}`, or a bug."""
    plain = {"/404": (404, b"Not Found", b"text/plain"), "/405": (405, b"Method Not Allowed", b"text/plain")}
    plain["/422"] = (422, b'{"detail": [{"input": "secret text"}]}', b"application/json")
    plain["/503"] = (503, b'{"error": "An unexpected error has occurred"}', b"application/json")
    if scope["path"] == "/bug":
        raise RuntimeError(f"a bug quoting the client's {scope['query_string'].decode()}")
    status, body, kind = plain[scope["path"]]
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind)]})
    await send({"type": "http.response.body", "body": body})


async def test_every_error_answer_from_below_is_json_in_one_shape(caplog):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=Guard(broken)), base_url="http://t") as c:
        for status in (404, 405, 422, 503):
            response = await c.get(f"/{status}")
            assert response.status_code == status and set(response.json()) == {"error"}, status
            assert "secret" not in response.text
        assert (await c.get("/503")).headers["retry-after"] == "1"
        bug = await c.get("/bug?hush")
    assert bug.status_code == 500 and "server log" in bug.json()["error"] and "hush" not in bug.text
    assert "Traceback" in caplog.text and "a bug quoting the client's hush" in caplog.text


async def test_in_private_mode_a_bug_is_logged_without_its_message(caplog):
    app = Guard(broken, Limits(private=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.get("/bug?hush")).status_code == 500
    assert "Traceback" in caplog.text and "in broken" in caplog.text and "RuntimeError" in caplog.text
    assert "hush" not in caplog.text
