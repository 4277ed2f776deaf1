"""Admission control: a bounded number of requests in flight (running or queued) per worker.

Past saturation BentoML's adaptive batcher lets its queue grow until its latency estimate trips,
then answers 503 with a logged traceback per request: accepted requests waited seconds, goodput
collapsed and the log grew by megabytes (issue 9). This middleware decides before any work is
done, on a counter: a request beyond `limit` gets a JSON 503 with `Retry-After` at once, costing
the worker almost nothing, so the admitted ones keep the model busy at capacity with short queues.
Refusals are counted and logged as one line per `log_interval_s`, never one per request.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from tuneloop.serve.guard import PROBES, App, Receive, Scope, Send

log = logging.getLogger(__name__)

# Default bound per worker: 4 full batches (max_batch_size 32). At the ~330 req/s one int8 worker
# serves here that is ~0.4 s of queue, well inside max_latency_ms (1 s), and enough waiting
# requests that every dispatched batch is full (bench/serve_overload.py measures it).
BATCHES_IN_FLIGHT = 4


@dataclass
class Admission:
    """ASGI middleware: at most `limit` requests at once past it; the rest get 503 + Retry-After."""

    app: App
    limit: int = 128
    retry_after_s: int = 1
    log_interval_s: float = 10.0
    in_flight: int = 0
    refused: int = 0  # since the last log line
    refused_total: int = 0
    _last_log: float | None = None  # None: no refusal yet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.refused += 1
            self.refused_total += 1
            self._report()
            await self._refuse(send)
            return
        if self.refused:
            self._report()  # the last count of a burst, once the interval is up
        self.in_flight += 1  # one event loop per worker: no lock needed between check and increment
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

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
        message = f"the service is overloaded ({self.limit} requests in flight): retry after {self.retry_after_s} s"
        payload = json.dumps({"error": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
