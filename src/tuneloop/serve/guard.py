"""Request guard for the service: API key, body size and input shape, checked before BentoML.

A pure ASGI middleware. Bad input gets a 4xx JSON `{"error": ...}` naming the problem, never a
5xx, and never reaches BentoML's own validation (which answers 400 too, but logs a traceback per
request). Health and readiness probes and the docs stay open without a key.

Limits come from params.yaml's `serve:` section (see service.py); the API key from the
`TUNELOOP_API_KEY` environment variable: when set, every route but the probes needs
`Authorization: Bearer <key>` (else 401). `feedback_pairs` checks /feedback bodies the same way
(the service calls it: it needs the model's labels).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics", "/docs", "/docs.json", "/schema.json", "/")


@dataclass(frozen=True)
class Limits:
    """What the guard enforces."""

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_texts: int = 64
    max_chars: int = 2000
    overlong: str = "truncate"


class Rejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def check_classify(payload: Any, limits: Limits) -> dict[str, Any]:
    """Validate a /classify body; returns it with overlong texts truncated (when so configured)."""
    if not isinstance(payload, dict) or "texts" not in payload:
        raise Rejected(400, 'expected a JSON object {"texts": ["...", ...]}')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise Rejected(400, f"'texts' must be a list of strings, got {type(texts).__name__}")
    if not texts:
        raise Rejected(400, "'texts' is empty: send at least one text")
    if len(texts) > limits.max_texts:
        raise Rejected(400, f"'texts' has {len(texts)} items; at most {limits.max_texts} per request (split the batch)")
    cleaned = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise Rejected(400, f"texts[{i}] is a {type(text).__name__}, not a string")
        if not text.strip():
            raise Rejected(400, f"texts[{i}] is empty")
        if len(text) > limits.max_chars:
            if limits.overlong == "reject":
                raise Rejected(400, f"texts[{i}] has {len(text)} characters; the limit is {limits.max_chars}")
            text = text[: limits.max_chars]
        cleaned.append(text)
    return {**payload, "texts": cleaned}


MAX_FEEDBACK_ITEMS = 1000  # one transaction, one IN (...) query: well under SQLite's and PostgreSQL's limits
FEEDBACK_SHAPE = '{"request_id": "...", "label": "..."} or {"items": [{"request_id": "...", "label": "..."}, ...]}'


def feedback_pairs(body: Any, labels: list[str]) -> list[tuple[str, str]]:
    """(request_id, label) pairs from a /feedback body, checked against the model's labels.

    Raises:
        ValueError: the body has another shape, or a label is not one of `labels` (both named).
    """
    keys = set(body) if isinstance(body, dict) else None
    if keys == {"items"} and isinstance(body["items"], list) and len(body["items"]) > MAX_FEEDBACK_ITEMS:
        raise ValueError(
            f"'items' has {len(body['items'])} entries; at most {MAX_FEEDBACK_ITEMS} per request (split the batch)"
        )
    if keys == {"items"} and isinstance(body["items"], list) and body["items"]:
        items, where = body["items"], "items[{}]: "
    elif keys == {"request_id", "label"}:
        items, where = [body], ""
    else:
        raise ValueError(f"expected {FEEDBACK_SHAPE}")
    pairs = []
    for i, item in enumerate(items):
        if not (
            isinstance(item, dict)
            and set(item) == {"request_id", "label"}
            and all(isinstance(v, str) and v for v in item.values())
        ):
            raise ValueError(
                f'{where.format(i)}expected {{"request_id": "...", "label": "..."}} with non-empty strings'
            )
        if item["label"] not in labels:
            raise ValueError(
                f"{where.format(i)}label {item['label']!r} is not one of this model's labels: {', '.join(labels)}"
            )
        pairs.append((item["request_id"], item["label"]))
    return pairs


class Guard:
    """ASGI middleware enforcing `Limits` (BentoML: `Service.add_asgi_middleware(Guard)`)."""

    def __init__(self, app: Callable[..., Awaitable[None]], limits: Limits | None = None):
        self.app = app
        self.limits = limits or Limits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            self._authorise(scope)
            if scope["method"] != "POST":
                await self.app(scope, receive, send)
                return
            body = await self._read(receive)
            if scope["path"] == "/classify":
                body = json.dumps(check_classify(self._parse(body), self.limits)).encode()
            elif body:
                self._parse(body)  # every API takes JSON: refuse garbage before BentoML does
        except Rejected as exc:
            await _respond(send, exc.status, exc.message)
            return
        await self.app(_with_length(scope, len(body)), _replay(body), send)

    def _authorise(self, scope: Scope) -> None:
        if not self.limits.api_key:
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        if not hmac.compare_digest(given, f"Bearer {self.limits.api_key}"):
            raise Rejected(401, "missing or wrong API key: send 'Authorization: Bearer <TUNELOOP_API_KEY>'")

    async def _read(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise Rejected(413, f"request body over {self.limits.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    def _parse(body: bytes) -> Any:
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Rejected(400, f"body is not valid JSON ({exc})") from None


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode())]}


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _respond(send: Send, status: int, message: str) -> None:
    payload = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
