"""What the service writes to its log: tracebacks for bugs, counts for overload, no client text.

BentoML logs a full traceback for every request its batcher sheds (`ServiceUnavailable`) and,
for any exception in an API, the exception's message, which for a body that fails to decode
quotes the body. `BentoErrors` is a filter on BentoML's request-error logger that turns the first
into one count line per interval and, in private mode (`serve.store_text: false`), withholds the
second's message while keeping the frames.
"""

from __future__ import annotations

import logging
import time
import traceback

# BentoML's logger for exceptions raised while answering a request (`log_exception`).
BENTOML_REQUEST_ERRORS = "bentoml._internal.server.http_app"
BENTOML_ACCESS = "bentoml.access"  # one INFO line per request: "%s (%s) (status=...,...) %.3fms"


def log_bug(logger: logging.Logger, what: str, exc: BaseException, private: bool) -> None:
    """Log an unexpected exception with its traceback; when `private`, without its message."""
    if not private:
        logger.error(what, exc_info=exc)
        return
    logger.error("%s\n%s", what, withheld(exc))


def withheld(exc: BaseException) -> str:
    """A traceback with the frames and the exception's type, but not its message."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    return (
        f"Traceback (most recent call last):\n{frames}"
        f"{type(exc).__qualname__}: (message withheld: serve.store_text is false)"
    )


class BentoErrors(logging.Filter):
    """Filter for BentoML's request-error logger: sheds counted, not traced; messages withheld when private."""

    def __init__(self, private: bool, interval_s: float = 10.0):
        super().__init__()
        self.private, self.interval_s = private, interval_s
        self.shed, self._last = 0, time.monotonic()

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import ServiceUnavailable

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ServiceUnavailable):
            self.shed += 1
            now = time.monotonic()
            if now - self._last < self.interval_s:
                return False
            record.msg, record.args = (
                "overloaded: BentoML's batcher shed %d requests in the last %.0f s",
                (
                    self.shed,
                    now - self._last,
                ),
            )
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.WARNING, "WARNING"
            self.shed, self._last = 0, now
        elif exc is not None and self.private:
            record.exc_text = withheld(exc)  # formatters print exc_text when set, instead of formatting exc_info
        return True


class NoRefusalAccessLines(logging.Filter):
    """Filter for BentoML's access log: no line per 503 (admission control counts them, one line per interval).

    Past saturation the refusals outnumber the answers tenfold: 177-737 lines/s of access log
    measured at 1x-3x before (bench/serve_overload.py).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) > 2 and isinstance(args[2], str) and args[2].startswith("status=503"))


def install(private: bool) -> BentoErrors:
    """Attach the filters to BentoML's request-error and access loggers (once per worker)."""
    errors, access = logging.getLogger(BENTOML_REQUEST_ERRORS), logging.getLogger(BENTOML_ACCESS)
    for logger in (errors, access):
        for old in [f for f in logger.filters if isinstance(f, BentoErrors | NoRefusalAccessLines)]:
            logger.removeFilter(old)
    bento_filter = BentoErrors(private)
    errors.addFilter(bento_filter)
    access.addFilter(NoRefusalAccessLines())
    return bento_filter
