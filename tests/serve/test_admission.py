"""Admission control and the service's log filter: past the bound a JSON 503 with Retry-After at
once, one log line per interval (never a traceback per refusal), and the bound is freed on errors."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import httpx
import pytest

from tuneloop.serve.admission import Admission
from tuneloop.serve.logs import BENTOML_REQUEST_ERRORS, BentoErrors

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


class Slow:
    """Stands in for the model: holds each request until released; /boom raises."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope, receive, send):
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        if scope["path"] != "/readyz":
            self.entered += 1
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"[]"})


async def test_past_the_bound_requests_get_503_with_retry_after_and_one_log_line(caplog):
    slow = Slow()
    gate = Admission(slow, limit=3, log_interval_s=3600)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://t") as c:
        held = [asyncio.create_task(c.post("/classify", json={"texts": ["a"]})) for _ in range(3)]
        while slow.entered < 3:
            await asyncio.sleep(0.01)
        refused = [await c.post("/classify", json={"texts": ["a"]}) for _ in range(50)]
        assert (await c.get("/readyz")).status_code == 200  # probes bypass the bound
        slow.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200] * 3
        assert (await c.post("/classify", json={"texts": ["a"]})).status_code == 200  # capacity is back
    assert {r.status_code for r in refused} == {503}
    assert all(r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"] for r in refused)
    lines = [r for r in caplog.records if r.name == "tuneloop.serve.admission"]
    assert len(lines) == 1 and lines[0].exc_info is None and gate.refused_total == 50
    assert gate.in_flight == 0


async def test_a_failing_request_frees_its_slot():
    gate = Admission(Slow(), limit=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://t") as c:
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await c.post("/boom")
    assert gate.in_flight == 0


def test_counts_follow_once_per_interval(caplog, monkeypatch):
    gate = Admission(Slow(), limit=0, log_interval_s=10)
    clock = iter([0.0, 1.0, 2.0, 11.0, 12.0])
    monkeypatch.setattr("tuneloop.serve.admission.time", SimpleNamespace(monotonic=lambda: next(clock)))
    for _ in range(5):
        gate.refused += 1
        gate._report()
    lines = [r.getMessage() for r in caplog.records if r.name == "tuneloop.serve.admission"]
    assert len(lines) == 2 and "refused 3 requests in the last 11 s" in lines[1]


def _shed_record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException as raised:
        exc_info = (type(raised), raised, raised.__traceback__)
    return logging.LogRecord(BENTOML_REQUEST_ERRORS, logging.ERROR, __file__, 1, "Exception on %s", ("/x",), exc_info)


def test_bentoml_sheds_are_counted_not_traced_and_private_messages_withheld():
    from bentoml.exceptions import ServiceUnavailable

    quiet = BentoErrors(private=True, interval_s=3600)
    quiet._last -= 7200  # the first shed is past an interval: it becomes the count line
    kept = [quiet.filter(r) for r in (_shed_record(ServiceUnavailable("process is overloaded")) for _ in range(100))]
    assert kept.count(True) == 1
    decode = _shed_record(ValueError("Expecting value: line 1 column 1: 'my secret text'"))
    assert quiet.filter(decode)
    text = logging.Formatter().format(decode)
    assert "Traceback" in text and "ValueError" in text and "secret" not in text
    loud = _shed_record(ValueError("'my secret text'"))
    assert BentoErrors(private=False).filter(loud) and "secret" in logging.Formatter().format(loud)


def test_retry_after_spreads_the_waiting_clients_over_what_the_worker_answers():
    gate = Admission(Slow(), limit=64)
    gate._adapt(answered_per_s=100, refused_per_s=900)  # 1,024 clients retrying every 1 s
    assert gate.retry_after_s == 9
    gate._adapt(answered_per_s=100, refused_per_s=100)  # they now wait 9 s: ~900 waiting, still 9 s
    assert gate.retry_after_s == 9
    gate._adapt(answered_per_s=100, refused_per_s=10_000)
    assert gate.retry_after_s == gate.max_retry_after_s  # bounded
    gate._adapt(answered_per_s=100, refused_per_s=0)
    assert gate.retry_after_s == 1


async def test_refusals_are_held_only_while_clients_outnumber_the_answers():
    gate = Admission(Slow(), limit=0, hold_s=0.2)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://t") as c:
        started = asyncio.get_running_loop().time()
        assert (await c.post("/classify")).status_code == 503
        quick = asyncio.get_running_loop().time() - started
        gate.retry_after_s = 3
        started = asyncio.get_running_loop().time()
        held = await c.post("/classify")
        slow = asyncio.get_running_loop().time() - started
    assert quick < 0.1 and slow >= 0.2 and held.headers["retry-after"] == "3"


async def test_a_request_that_finds_the_worker_idle_calls_on_idle_and_a_busy_one_does_not():
    slow, idle_calls = Slow(), []
    gate = Admission(slow, limit=8, on_idle=lambda: idle_calls.append(slow.entered))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate), base_url="http://t") as c:
        first = asyncio.create_task(c.post("/classify"))
        while slow.entered < 1:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(c.post("/classify"))  # arrives while the first is in flight
        while slow.entered < 2:
            await asyncio.sleep(0.01)
        slow.release.set()
        await asyncio.gather(first, second)
        await c.get("/readyz")  # probes are not requests to the model
    assert idle_calls == [0]


async def test_after_overload_an_idle_request_is_not_held_for_the_wait_learnt_under_load():
    """BentoML's batcher holds a lone request for its learnt average queue wait (0.6 s here, as after
    an 8x overload); forget_learnt_waits makes it dispatch at once (recovery_s, issue 9)."""
    import functools

    from bentoml._internal.marshal.dispatcher import CorkDispatcher
    from bentoml._internal.runner.container import AutoContainer

    from tuneloop.serve.admission import forget_learnt_waits

    async def model(texts):  # the batched API: one merged list in, one answer per text out
        return [len(text) for text in texts]

    dispatcher = CorkDispatcher(  # as BentoML's ServiceAppFactory builds it for a batchable API
        max_latency_in_ms=2000,
        max_batch_size=32,
        fallback=lambda: None,
        get_batch_size=functools.partial(AutoContainer.get_batch_size, batch_dim=0),
        batch_dim=(0, 0),
    )
    dispatcher.optimizer.o_a, dispatcher.optimizer.o_b = 0.001, 0.001
    call = dispatcher(model)

    async def timed() -> float:
        started = asyncio.get_running_loop().time()
        await call(["a"])
        return asyncio.get_running_loop().time() - started

    for _ in range(12):  # BentoML's dispatcher first times 11 batches of its own ("training")
        await call(["a"])
    dispatcher.optimizer.wait = 0.6
    held = await timed()
    dispatcher.optimizer.wait = 0.6
    forget_learnt_waits([dispatcher])
    at_once = await timed()
    dispatcher.shutdown()
    assert held > 0.4 and at_once < 0.1
