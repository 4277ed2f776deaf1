"""BentoML's tracing middleware only where traces go somewhere (its own module: the in-process app is re-imported
per module and per configuration, see asgi_client)."""

from typing import Any

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
