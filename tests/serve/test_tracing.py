"""BentoML's tracing middleware only where traces go somewhere (its own module: the in-process app is re-imported
per module and per configuration, see asgi_client)."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.serve.test_service_asgi import asgi_client


def test_tracing_middleware_only_when_traces_are_collected(served, tmp_path, monkeypatch):
    """BentoML's OpenTelemetry middleware cost ~20% of the service's throughput making spans sent nowhere: while no
    exporter and sample rate are configured, `RequestIds` stands in its place (an id per request, in the
    X-BentoML-Request-ID header as before); once they are, the middleware is there as BentoML builds it (BentoML's
    configuration, here its BENTOML_CONFIG_OPTIONS). The rest of BentoML's stack and the guard stay in both."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    def stack(app: Any) -> list[str]:
        return [m.cls.__name__ for m in app.app.user_middleware]

    def request_ids(client: Any) -> set[str]:
        answers = [client.post("/classify", json={"texts": ["hello"]}) for _ in range(3)]
        assert all(a.status_code == 200 for a in answers)
        return {a.headers["x-bentoml-request-id"] for a in answers}

    tag, work = served
    monkeypatch.delenv("BENTOML_CONFIG_OPTIONS", raising=False)
    with asgi_client(tag, work / "params.yaml", f"sqlite:///{tmp_path / 'log0.db'}") as client:
        untraced = stack(client.app)
        assert "OpenTelemetryMiddleware" not in untraced and untraced.count("RequestIds") == 1
        assert {"RunnerTrafficMetricsMiddleware", "AccessLogMiddleware", "TimeoutMiddleware", "Guard"} <= set(untraced)
        assert len(request_ids(client)) == 3  # one per request, as BentoML's tracing middleware gave
    monkeypatch.setenv(
        "BENTOML_CONFIG_OPTIONS", "services.tracing.exporter_type=in_memory services.tracing.sample_rate=1.0"
    )
    with asgi_client(tag, work / "params.yaml", f"sqlite:///{tmp_path / 'log.db'}") as traced:
        assert any(m.cls is OpenTelemetryMiddleware for m in traced.app.app.user_middleware)
        assert stack(traced.app) == [name.replace("RequestIds", "OpenTelemetryMiddleware") for name in untraced]
        assert len(request_ids(traced)) == 3
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "services.tracing.exporter_type=in_memory")  # sample rate unset: 0
    with asgi_client(tag, work / "params.yaml", f"sqlite:///{tmp_path / 'log2.db'}") as unsampled:
        assert stack(unsampled.app) == untraced


UPSTREAM = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENTS = [
    f"00-{UPSTREAM}-00f067aa0ba902b7-01",  # the W3C example
    f"  00-{UPSTREAM}-00f067aa0ba902b7-00 ",
    f"01-{UPSTREAM}-00f067aa0ba902b7-01-future-field",
    f"00-{UPSTREAM}-00f067aa0ba902b7-01-more",  # version 00 has exactly four fields
    f"ff-{UPSTREAM}-00f067aa0ba902b7-01",
    f"00-{'0' * 32}-00f067aa0ba902b7-01",
    f"00-{UPSTREAM}-{'0' * 16}-01",
    f"00-{UPSTREAM.upper()}-00f067aa0ba902b7-01",
    f"00-{UPSTREAM}-00f067aa0ba902b7",
    f"00-{UPSTREAM}0-00f067aa0ba902b7-01",
    "",
    "\u00e9t\u00e9",
]


def _otel_trace_id(value: str) -> int:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": value})
    return trace.get_current_span(context).get_span_context().trace_id


@pytest.mark.parametrize("value", TRACEPARENTS)
def test_the_callers_trace_id_is_read_as_opentelemetry_reads_it(value):
    """Without the OpenTelemetry middleware, a caller's `traceparent` still names the trace on the log lines: the
    same id OpenTelemetry's own propagator takes from the header, 0 (a random id) where it refuses the header."""
    from tuneloop.serve.tracing import upstream_trace_id

    raw = value.encode("utf-8")
    assert upstream_trace_id([(b"host", b"x"), (b"traceparent", raw)]) == _otel_trace_id(value)
    assert upstream_trace_id([(b"traceparent", raw), (b"traceparent", f"00-{'1' * 32}-{'1' * 16}-01".encode())]) == (
        _otel_trace_id(value)
    )  # the first header counts
    assert upstream_trace_id([(b"host", b"x")]) == 0


def _hex(size: int) -> st.SearchStrategy[str]:
    """Mostly a valid field (lowercase hex of its size; all zeros and ff included), sometimes one a character off."""
    valid = st.text(alphabet="0123456789abcdef", min_size=size, max_size=size) | st.sampled_from(
        ["0" * size, "f" * size]
    )
    return valid | st.text(alphabet="0fA", min_size=size - 1, max_size=size + 1)


NEAR_VALID = st.builds(
    lambda *parts: "".join(parts),
    st.sampled_from(["", " ", "\t"]),
    _hex(2),
    st.just("-"),
    _hex(32),
    st.sampled_from(["-", "_"]),
    _hex(16),
    st.just("-"),
    _hex(2),
    st.sampled_from(["", "-", "-x", " ", "\u00e9"]),
)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEF- \t\u00e9", max_size=70) | NEAR_VALID)
def test_any_traceparent_is_read_as_opentelemetry_reads_it(value):
    from tuneloop.serve.tracing import upstream_trace_id

    assert upstream_trace_id([(b"traceparent", value.encode("utf-8"))]) == _otel_trace_id(value)


def test_the_callers_trace_id_names_the_answer(served, tmp_path, monkeypatch):
    tag, work = served
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "services.http.response.trace_id=true")
    with asgi_client(tag, work / "params.yaml", f"sqlite:///{tmp_path / 'log.db'}") as client:
        body = {"texts": ["hello"]}
        traced = client.post("/classify", json=body, headers={"traceparent": f"00-{UPSTREAM}-00f067aa0ba902b7-01"})
        assert traced.status_code == 200 and traced.headers["x-bentoml-trace-id"] == UPSTREAM
        fresh = {client.post("/classify", json=body).headers["x-bentoml-trace-id"] for _ in range(3)}
        assert len(fresh) == 3 and UPSTREAM not in fresh
