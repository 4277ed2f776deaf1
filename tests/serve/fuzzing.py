"""What the service's fuzz tests draw from (issue 9): Schemathesis cases from the service's own
OpenAPI schema (`/docs.json`), positive and negative, and Hypothesis strategies of hostile bodies,
headers and content types; `assert_sound`: no 5xx, every error body `{"error": ...}`.

The tests: tests/serve/test_service_asgi.py (in-process, seeded, `FUZZ` examples: 60 in CI, under
a minute) and tests/serve/test_service_hardened.py (a running `bentoml serve`). `make fuzz` sets
`TUNELOOP_FUZZ_EXAMPLES=2000` and drops the seed."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("TUNELOOP_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize="TUNELOOP_FUZZ_EXAMPLES" not in os.environ,  # CI: the same cases every run; make fuzz: new ones
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_sound(response) -> None:
    """No 5xx; an error is JSON {"error": "<text>"}."""
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(f"{response.status_code} is not JSON: {response.text[:200]!r}") from None
        assert set(body) == {"error"} and isinstance(body["error"], str), body


def strategies_from(spec: dict) -> list:
    """Schemathesis case strategies (positive and negative) for every operation in an OpenAPI spec."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(spec)
    found = []
    for path, methods in spec["paths"].items():
        if path == "/metrics":  # in-process only: no PROMETHEUS_MULTIPROC_DIR outside `bentoml serve`
            continue
        for method in methods:
            operation = schema[path][method.upper()]
            found.extend(operation.as_strategy(generation_mode=mode) for mode in GenerationMode)
    return found


def request_of(case) -> tuple[str, str, dict]:
    """(method, path, keyword arguments for httpx/TestClient `request`) of a Schemathesis case."""
    headers = {k: str(v) for k, v in (case.headers or {}).items()}
    kwargs = {"params": case.query, "headers": headers}
    if case.body is not None:
        try:
            kwargs["content"] = json.dumps(case.body).encode()
            headers.setdefault("content-type", case.media_type or "application/json")
        except (TypeError, ValueError):
            kwargs["content"] = str(case.body).encode("utf-8", "surrogatepass")
    return case.method, case.formatted_path, kwargs


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
BODIES = st.one_of(
    st.binary(max_size=300),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.lists(st.text(max_size=40), max_size=6).map(lambda t: json.dumps({"texts": t}).encode()),
    st.lists(JSONISH, max_size=6).map(lambda t: json.dumps({"texts": t}).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.builds(
        lambda ids, labels: json.dumps(
            {"items": [{"request_id": i, "label": x} for i, x in zip(ids, labels)]}
        ).encode(),
        st.lists(st.text(max_size=40), max_size=4),
        st.lists(st.text(max_size=10), max_size=4),
    ),
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain",
            "application/vnd.bentoml+pickle",
            "",
        ]
    ),
    st.text(max_size=40).map(str.strip),
)
HEADER_VALUE = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in (10, 13, 0)))
