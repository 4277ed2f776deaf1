"""Errors a user can cause and fix: the CLI prints them without a traceback and exits non-zero."""

from __future__ import annotations


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
