"""Request guard for the service: API key, headers, body size and input shape, checked before BentoML.

A pure ASGI middleware and the only parser of a request body. `/classify` and `/feedback` take
`application/json` (UTF-8) alone; the guard parses the body, checks it, and hands BentoML the
*re-serialised checked value* (never the client's bytes), so BentoML's own decoding can neither
disagree with the checks nor fail on what passed them. Every other request reaches BentoML with
an empty body.

Every answer that is not a success is JSON `{"error": "..."}`: the guard's own refusals (4xx
naming the problem, never echoing the client's text), and any other error answer from below it
(Starlette's 404/405, FastAPI's 422, BentoML's 503), rewritten on the way out. An exception that
escapes the guard or the app is a genuine bug: a JSON 500 at once (never a hang until BentoML's
timeout) and a logged traceback.

Limits come from params.yaml's `serve:` section (see service.py); the API key from the
`TUNELOOP_API_KEY` environment variable: when set, every route but the probes (`PROBES`) needs
`Authorization: Bearer <key>` (else 401), compared as bytes in constant time. `feedback_pairs`
checks /feedback bodies against the model's labels (the service calls it: it needs the labels).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from tuneloop.predlog import MAX_LABEL_CHARS
from tuneloop.serve.logs import log_bug
from tuneloop.text import label_key

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

# Open without the API key: orchestrators probe these without credentials. /metrics is *not* open:
# it tells anyone the traffic, the model and the error rates; Prometheus sends the key
# (`authorization: {credentials: ...}` in its scrape config).
PROBES = frozenset({"/livez", "/readyz", "/healthz"})
MAX_HEADERS = 64  # browsers send ~20; a client sending hundreds is hostile or broken
MAX_JSON_DEPTH = 16  # the deepest legal body is {"items": [{...}]}: 3 levels
# Characters that render as nothing: a text made only of these (and whitespace) is empty.
INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800")  # Hangul fillers and the blank Braille cell (letters!)
# The request ids /classify hands out (tuneloop.predlog.new_request_id): 32 lowercase hex digits.
REQUEST_ID = re.compile(r"[0-9a-f]{32}")
MAX_FEEDBACK_ITEMS = 1000  # one transaction, one IN (...) query: well under SQLite's and PostgreSQL's limits
FEEDBACK_SHAPE = '{"request_id": "...", "label": "..."} or {"items": [{"request_id": "...", "label": "..."}, ...]}'
# A label the model does not know yet (feedback import --new-labels): a word-like name, no edge spaces.
NEW_LABEL = re.compile(rf"[^\W_](?:[\w.\- ]{{0,{MAX_LABEL_CHARS - 2}}}[\w.])?")


@dataclass(frozen=True)
class Limits:
    """What the guard enforces."""

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_texts: int = 64
    max_chars: int = 2000
    overlong: str = "truncate"
    max_header_bytes: int = 8192  # all header names and values together; uvicorn itself stops at 64 KiB
    private: bool = False  # serve.store_text false: no exception message (it may quote a text) is logged


class Rejected(Exception):
    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def is_blank(text: str) -> bool:
    """True when a text shows nothing: only whitespace, control and format characters (zero-width
    spaces and joiners, BOMs, bidi marks) and the few letters that render as blanks."""
    return all(c.isspace() or c in INVISIBLE or unicodedata.category(c) in ("Cc", "Cf") for c in text)


def check_classify(payload: Any, limits: Limits) -> dict[str, Any]:
    """Validate a /classify body; returns `{"texts": [...]}` with overlong texts truncated (when so configured)."""
    if not isinstance(payload, dict) or "texts" not in payload:
        raise Rejected(400, 'expected a JSON object {"texts": ["...", ...]}')
    if len(payload) > 1:
        raise Rejected(400, 'unexpected keys beside "texts": the body is {"texts": ["...", ...]} and nothing else')
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
        if is_blank(text):
            raise Rejected(400, f"texts[{i}] is empty (nothing but whitespace or invisible characters)")
        if len(text) > limits.max_chars:
            if limits.overlong == "reject":
                raise Rejected(400, f"texts[{i}] has {len(text)} characters; the limit is {limits.max_chars}")
            text = text[: limits.max_chars]
        if _has_surrogate(text):
            raise Rejected(400, f"texts[{i}] is not valid Unicode (a lone surrogate escape such as \\ud800)")
        if "\x00" in text:  # PostgreSQL cannot store it: one such text in a flush refused every row beside it
            raise Rejected(400, f"texts[{i}] contains a NUL character (\\u0000), which no text needs; remove it")
        cleaned.append(text)
    return {"texts": cleaned}


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_feedback(payload: Any) -> list[dict[str, str]]:
    """The items of a /feedback body, checked for shape, size and id format (labels: `feedback_pairs`).

    Raises:
        Rejected: 400 naming the item and the problem; the client's values are never quoted back.
    """
    keys = set(payload) if isinstance(payload, dict) else None
    if keys == {"items"} and isinstance(payload["items"], list) and payload["items"]:
        items, where = payload["items"], "items[{}]: "
    elif keys == {"request_id", "label"}:
        items, where = [payload], ""
    else:
        raise Rejected(400, f"expected {FEEDBACK_SHAPE}")
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise Rejected(
            400, f"'items' has {len(items)} entries; at most {MAX_FEEDBACK_ITEMS} per request (split the batch)"
        )
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if not (
            isinstance(item, dict)
            and set(item) == {"request_id", "label"}
            and all(isinstance(v, str) and v for v in item.values())
        ):
            raise Rejected(
                400, f'{where.format(i)}expected {{"request_id": "...", "label": "..."}} with non-empty strings'
            )
        if not REQUEST_ID.fullmatch(item["request_id"]):
            raise Rejected(400, f"{where.format(i)}request_id is not an id /classify returned (32 hex digits)")
        if len(item["label"]) > MAX_LABEL_CHARS or _has_surrogate(item["label"]):
            raise Rejected(400, f"{where.format(i)}label is not one of this model's labels")
        if item["request_id"] in seen:
            raise Rejected(400, f"{where.format(i)}request_id repeats items[{seen[item['request_id']]}]'s: one each")
        seen[item["request_id"]] = i
    return [{"request_id": item["request_id"], "label": item["label"]} for item in items]


def feedback_pairs(body: Any, labels: list[str], *, new_labels: bool = False) -> list[tuple[str, str]]:
    """(request_id, label) pairs from a /feedback body, checked against the model's labels.

    `new_labels`: a label outside `labels` is accepted when it is a plain name (`NEW_LABEL`): how an
    annotator teaches the next model a class production showed (`tuneloop feedback import
    --new-labels`); the service's /feedback never sets it, so a client cannot invent classes.

    Raises:
        ValueError: the body has another shape, or a label is not acceptable (both named).
    """
    try:
        items = check_feedback(body)
    except Rejected as exc:
        raise ValueError(exc.message) from None
    where = "items[{}]: " if len(items) > 1 or (isinstance(body, dict) and "items" in body) else ""
    spellings = {label_key(label): label for label in labels}  # a new label must not be one of them spelt anew
    for i, item in enumerate(items):
        label = item["label"]
        if label in labels:
            continue
        if not new_labels:
            raise ValueError(f"{where.format(i)}label is not one of this model's labels: {', '.join(labels)}")
        if not NEW_LABEL.fullmatch(label):
            raise ValueError(
                f"{where.format(i)}a new label must be a plain name (letters, digits, '_', '-', '.', ' ' inside; "
                f"at most {MAX_LABEL_CHARS} characters, no control or invisible characters)"
            )
        known = spellings.setdefault(label_key(label), label)
        if known != label:
            raise ValueError(
                f"{where.format(i)}new label '{label}' is '{known}' spelt another way (case, white space, '_', '-' "
                f"or '.'): write '{known}' for one class"
            )
    return [(item["request_id"], item["label"]) for item in items]


def _feedback_body(payload: Any, _: Limits) -> Any:
    """What BentoML's /feedback route receives: the checked items, in the shape they came."""
    items = check_feedback(payload)
    return {"items": items} if "items" in payload else items[0]


# The routes that take a body, and the check whose result BentoML receives instead of the client's bytes.
CHECKS: dict[str, Callable[[Any, Limits], Any]] = {"/classify": check_classify, "/feedback": _feedback_body}


def parse_json(body: bytes) -> Any:
    """The JSON value of a UTF-8 body; `Rejected` (400) for anything else, never another exception."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(400, "body is not UTF-8 text: send JSON encoded as UTF-8") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise Rejected(400, f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and integers past Python's 4300-digit limit
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise Rejected(400, f"body is not valid JSON{where}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise Rejected(400, f"body nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(child, level + 1) for child in children), default=level)


class Guard:
    """ASGI middleware enforcing `Limits` (BentoML: `Service.add_asgi_middleware(Guard)`)."""

    def __init__(self, app: App, limits: Limits | None = None):
        self.app = app
        self.limits = limits or Limits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        reply = JsonErrors(send)
        try:
            scope, body = await self._check(scope, receive)
            await self.app(scope, _replay(body), reply)
        except Rejected as exc:
            await reply.error(exc.status, exc.message, exc.headers)
        except Exception as exc:  # a bug, in the guard or below it: answer now, keep the traceback
            log_bug(log, f"unexpected error on {scope.get('method')} {scope.get('path')!r}", exc, self.limits.private)
            await reply.error(500, "internal error: the server log has the traceback (nothing was recorded)")

    async def _check(self, scope: Scope, receive: Receive) -> tuple[Scope, bytes]:
        """The scope and body BentoML gets: headers checked, and for the body routes a checked JSON
        value re-serialised; other requests get no body at all (nothing below the guard parses one)."""
        headers = scope.get("headers") or []
        if len(headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in headers) > self.limits.max_header_bytes:
            raise Rejected(431, f"request headers over {MAX_HEADERS} or {self.limits.max_header_bytes} bytes in all")
        self._authorise(headers)
        check = CHECKS.get(scope["path"])
        if scope["method"] != "POST" or check is None:
            return _with_body(scope, b""), b""
        _require_json(headers)
        declared = _header(headers, b"content-length")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise Rejected(413, f"request body over {self.limits.max_body_bytes} bytes")
        value = check(parse_json(await self._read(receive)), self.limits)
        body = json.dumps(value).encode()
        return _with_body(scope, body), body

    def _authorise(self, headers: list[tuple[bytes, bytes]]) -> None:
        if not self.limits.api_key:
            return
        expected = b"Bearer " + self.limits.api_key.encode()
        if not hmac.compare_digest(_header(headers, b"authorization", raw=True), expected):
            raise Rejected(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <TUNELOOP_API_KEY>'",
                ((b"www-authenticate", b"Bearer"),),
            )

    async def _read(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Rejected(400, "the client closed the connection before the body ended")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise Rejected(413, f"request body over {self.limits.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


def _header(headers: list[tuple[bytes, bytes]], name: bytes, raw: bool = False) -> Any:
    """The first value of header `name` (lower-case): bytes when `raw`, else ASCII text ('' if absent)."""
    value = next((v for k, v in headers if k.lower() == name), b"")
    return value if raw else value.decode("latin-1").strip()


def _require_json(headers: list[tuple[bytes, bytes]]) -> None:
    """415 unless the body is declared JSON in UTF-8 (no Content-Type at all counts as JSON, as BentoML does)."""
    media, _, params = _header(headers, b"content-type").partition(";")
    charset = re.search(r"charset\s*=\s*\"?([\w-]+)", params, re.IGNORECASE)
    if media.strip().lower() not in ("", "application/json") or (charset and charset[1].lower() != "utf-8"):
        raise Rejected(415, "this route takes 'Content-Type: application/json' (UTF-8) only")


def _with_body(scope: Scope, body: bytes) -> Scope:
    """`scope` describing `body` as JSON: the client's length, type and transfer headers replaced."""
    dropped = (b"content-length", b"content-type", b"transfer-encoding")
    headers = [(k, v) for k, v in scope.get("headers") or [] if k.lower() not in dropped]
    headers.append((b"content-length", str(len(body)).encode()))
    if body:
        headers.append((b"content-type", b"application/json"))
    return {**scope, "headers": headers}


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class JsonErrors:
    """An ASGI `send` that lets successes through and turns every error answer into `{"error": ...}`.

    Starlette's 404/405 are plain text and FastAPI's 422 is `{"detail": [...]}` (quoting the input);
    an error body that is already `{"error": "..."}` passes unchanged. A 503 always carries Retry-After.
    """

    def __init__(self, send: Send):
        self.send = send
        self.started = False
        self._held: Message | None = None
        self._chunks: list[bytes] = []

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] >= 400:
                self._held = message
                return
        elif message["type"] == "http.response.body" and self._held is not None:
            self._chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                held, self._held = self._held, None
                await self._rewrite(held, b"".join(self._chunks))
            return
        await self.send(message)

    async def _rewrite(self, start: Message, body: bytes) -> None:
        status, headers = start["status"], list(start.get("headers") or [])
        keep = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
        message = _error_text(status, body)
        if status == 503 and not any(k.lower() == b"retry-after" for k, _ in keep):
            keep.append((b"retry-after", b"1"))
        await self._send_json(status, message, keep)

    async def error(self, status: int, message: str, headers: Any = ()) -> None:
        """Answer `{"error": message}` unless a response has begun (then the client sees a cut connection)."""
        if self.started:
            return
        self.started = True
        await self._send_json(status, message, list(headers))

    async def _send_json(self, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        payload = json.dumps({"error": message}).encode()
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": payload})


def _error_text(status: int, body: bytes) -> str:
    """The message of an error answer from below the guard, without quoting the request back."""
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("error"), str) and status not in (500, 503):
        return value["error"]
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    return {
        404: "not found: the routes are POST /classify, POST /feedback, GET /metadata (see /docs.json)",
        405: "method not allowed on this route (POST /classify, POST /feedback, GET /metadata)",
        422: "the body does not match this route's schema (see /docs.json)",
        500: "internal error: the server log has the traceback",
        # not the body's text: a 503 from below may quote an exception (BentoML's shedding, /feedback's database)
        503: "the service cannot answer this now (overloaded, or the prediction log's database is not answering): "
        "retry after the number of seconds in Retry-After",
    }.get(status, phrase)
