"""Admission control: a bounded number of requests in flight (running or queued) per worker.

Past saturation BentoML's adaptive batcher lets its queue grow until its latency estimate trips,
then answers 503 with a logged traceback per request: accepted requests waited seconds, goodput
collapsed and the log grew by megabytes (issue 9). This middleware decides before any work is
done, on a counter: a request beyond `limit` gets a JSON 503 with `Retry-After`, costing the worker
almost nothing, so the admitted ones keep the model busy at capacity with short queues. Retry-After
adapts to how many clients wait; while they outnumber what the worker answers in a second, each
refusal is held `hold_s` before it is sent, so clients that ignore Retry-After pace themselves too.
Refusals are counted and logged as one line per `log_interval_s`, never one per request.

A request that finds its worker idle calls `on_idle` first (the service uses it to make BentoML's
batcher forget the queue wait it learnt under load, see forget_learnt_waits below).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneloop.serve.guard import PROBES, App, Receive, Scope, Send

log = logging.getLogger(__name__)


@dataclass
class Admission:
    """ASGI middleware: at most `limit` requests at once past it; the rest get 503 + Retry-After.

    The service sets `limit` to serve.max_in_flight_batches x serve.max_batch_size: 2 full batches keep
    every dispatched batch full (one running, one filling) with the shortest queue. At the ~330 req/s one
    int8 worker serves on an idle machine that is ~0.2 s of queue; at 4 batches a busy machine (~135 req/s)
    queued ~1 s and BentoML's batcher began shedding with its own 503s (bench/serve_overload.py).
    """

    app: App
    limit: int = 64
    retry_after_s: int = 1  # what the next refusal advises; adapted once a second (`_adapt`)
    max_retry_after_s: int = 10
    # While more clients wait than the worker answers in a second (Retry-After above 1), each refusal
    # is held this long before it is sent: clients that retry at once would otherwise turn the
    # worker into a 503 factory (4,000-5,000 refusals/s from 1,024 such clients, the model starved).
    hold_s: float = 1.0
    log_interval_s: float = 10.0
    on_idle: Callable[[], None] | None = None  # called when a request arrives with nothing else in flight
    in_flight: int = 0
    refused: int = 0  # since the last log line
    refused_total: int = 0
    _last_log: float | None = None  # None: no refusal yet
    _window: tuple[float, int, int] = (0.0, 0, 0)  # (start, answered, refused) of the current second

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.refused += 1
            self.refused_total += 1
            self._count(refused=1)
            self._report()
            await self._refuse(send)
            return
        if self.refused:
            self._report()  # the last count of a burst, once the interval is up
        if self.in_flight == 0 and self.on_idle is not None:
            self.on_idle()
        self.in_flight += 1  # one event loop per worker: no lock needed between check and increment
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self._count(answered=1)

    def _count(self, answered: int = 0, refused: int = 0) -> None:
        start, done, shed = self._window
        now = time.monotonic()
        if now - start < 1.0:
            self._window = (start, done + answered, shed + refused)
            return
        self._adapt(done / (now - start), shed / (now - start))
        self._window = (now, answered, refused)

    def _adapt(self, answered_per_s: float, refused_per_s: float) -> None:
        """Advise a wait that spreads the refused clients' retries over what the worker answers.

        Clients that honour Retry-After r are refused about once every r seconds, so about
        refused_per_s * r of them are waiting; retrying over waiting / answered_per_s seconds they
        arrive about as fast as slots free up. With a fixed 1 s, 1,024 clients came back ~900 times
        a second to ~100 free slots (bench/serve_overload.py, 8x with backoff).
        """
        waiting = refused_per_s * self.retry_after_s
        wanted = math.ceil(waiting / max(answered_per_s, 1.0)) if waiting else 1
        self.retry_after_s = min(self.max_retry_after_s, max(1, wanted))

    def _report(self) -> None:
        """One log line per interval at most: the first refusal, then the count of each interval."""
        now = time.monotonic()
        if self._last_log is None:
            log.warning(
                "overloaded: answering 503 past %d requests in flight per worker; counts follow every %.0f s",
                self.limit,
                self.log_interval_s,
            )
        elif now - self._last_log >= self.log_interval_s:
            log.warning("overloaded: refused %d requests in the last %.0f s", self.refused, now - self._last_log)
        else:
            return
        self.refused, self._last_log = 0, now

    async def _refuse(self, send: Send) -> None:
        if self.retry_after_s > 1:
            await asyncio.sleep(self.hold_s)
        message = f"the service is overloaded ({self.limit} requests in flight): retry after {self.retry_after_s} s"
        payload = json.dumps({"error": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def forget_learnt_waits(dispatchers: list[Any]) -> None:
    """Make BentoML's batchers dispatch at once: called when a request finds the worker idle.

    BentoML's CorkDispatcher holds each batch until its first request has waited about the average
    queue wait of its last 50 batches (`optimizer.wait`). Under overload that average grows to a
    good part of `max_latency_ms`; afterwards every request waits that long, which is recorded as
    the next batches' wait, so the learnt figure decays by a few percent per 5-s refresh: a single
    client needed 48-58 s after an 8x overload to see normal latency again, 0.05 s with this reset
    (bench/serve_overload.py, recovery_s). With nothing else in flight no companion can join the batch, so waiting only
    adds latency: the learnt wait is reset, and relearnt from the batches that follow.
    """
    for dispatcher in dispatchers:
        dispatcher.optimizer.wait = 0
