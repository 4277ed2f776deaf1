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


def install(private: bool) -> BentoErrors:
    """Attach a `BentoErrors` filter to BentoML's request-error logger (once per worker)."""
    logger = logging.getLogger(BENTOML_REQUEST_ERRORS)
    for old in [f for f in logger.filters if isinstance(f, BentoErrors)]:
        logger.removeFilter(old)
    bento_filter = BentoErrors(private)
    logger.addFilter(bento_filter)
    return bento_filter
