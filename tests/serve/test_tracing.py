"""BentoML's tracing middleware only where traces go somewhere (its own module: the in-process app is re-imported
per module and per configuration, see asgi_client)."""

from typing import Any

from tests.serve.test_service_asgi import asgi_client


def test_tracing_middleware_only_when_traces_are_collected(served, tmp_path, monkeypatch):
    """BentoML's OpenTelemetry middleware cost ~20% of the service's throughput making spans sent nowhere: it is
    left out while no exporter and sample rate are configured, and is there as BentoML builds it once they are
    (BentoML's configuration, here its BENTOML_CONFIG_OPTIONS). The rest of BentoML's stack (metrics, access log,
    timeout) and the guard stay in both."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    def stack(app: Any) -> list[str]:
        return [m.cls.__name__ for m in app.app.user_middleware]

    tag, work = served
    monkeypatch.delenv("BENTOML_CONFIG_OPTIONS", raising=False)
    with asgi_client(tag, work / "params.yaml", f"sqlite:///{tmp_path / 'log0.db'}") as client:
        untraced = stack(client.app)
        assert "OpenTelemetryMiddleware" not in untraced
        assert {"RunnerTrafficMetricsMiddleware", "AccessLogMiddleware", "TimeoutMiddleware", "Guard"} <= set(untraced)
        assert client.post("/classify", json={"texts": ["hello"]}).status_code == 200
    monkeypatch.setenv(
        "BENTOML_CONFIG_OPTIONS", "services.tracing.exporter_type=in_memory services.tracing.sample_rate=1.0"
    )
    with asgi_client(tag, work / "params.yaml", f"sqlite:///{tmp_path / 'log.db'}") as traced:
        assert any(m.cls is OpenTelemetryMiddleware for m in traced.app.app.user_middleware)
        assert stack(traced.app) == [*untraced[:1], "OpenTelemetryMiddleware", *untraced[1:]]
        assert traced.post("/classify", json={"texts": ["hello"]}).status_code == 200
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "services.tracing.exporter_type=in_memory")  # sample rate unset: 0
    with asgi_client(tag, work / "params.yaml", f"sqlite:///{tmp_path / 'log2.db'}") as unsampled:
        assert stack(unsampled.app) == untraced
