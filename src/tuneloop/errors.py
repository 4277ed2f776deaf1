"""Errors a user can cause and fix: the CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations


def first_line(exc: BaseException, message: str | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors and logs.

    `message`: the text to use instead of `str(exc)`, for a caller that cleaned the message first."""
    text = (str(exc) if message is None else message).strip() or type(exc).__name__
    return text.splitlines()[0]


class TuneloopError(Exception):
    """A problem with the user's input (data, params, model) whose message names what and how to fix.

    Attributes:
        exit_code: the process exit status the CLI uses for it.
    """

    exit_code = 1


class ConfigError(TuneloopError):
    """params.yaml or a --set override is invalid."""


class DataError(TuneloopError):
    """An input data file cannot be read or does not have the required shape."""


class ValidationFailed(TuneloopError):
    """A validation check whose policy is `fail` did not hold."""
