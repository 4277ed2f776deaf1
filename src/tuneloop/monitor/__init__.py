"""Monitoring: the reference a model is watched against, the signals (Evidently reports) over a
window of the prediction log, the label-free performance estimate, the policy and its verdict."""

from tuneloop.errors import TuneloopError


class MonitorError(TuneloopError):
    """Monitoring cannot run as asked (no reference for the model, unusable window, ...)."""
