"""The policy: which signals count, hysteresis (K drifted windows in a row) and the cooldown after
a retrain turn one window's signals into a status. State lives in files under `monitor.state_dir`
(one folder per monitored task): history.jsonl (one line per run) and retrained.json.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.monitor.verdict import SignalResult, Status

if TYPE_CHECKING:
    from tuneloop.config import MonitorParams

HISTORY_FILE = "history.jsonl"
RETRAINED_FILE = "retrained.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    status: Status
    drift: bool
    retrain: bool
    consecutive: int
    reason: str


def with_counts(signals: list[SignalResult], params: MonitorParams) -> list[SignalResult]:
    """Mark the signals the policy counts (`monitor.signals`)."""
    return [s.model_copy(update={"counts": s.name in params.signals}) for s in signals]


def decide(
    signals: list[SignalResult],
    params: MonitorParams,
    previous_drifted: int,
    last_retrain: datetime | None,
    now: datetime,
) -> Decision:
    """Status of a window with enough rows, given the drifted windows just before it."""
    drifted = [s.name for s in signals if s.drifted and s.counts]
    if not drifted:
        return Decision("ok", False, False, 0, "no counting signal drifted")
    consecutive = previous_drifted + 1
    what = f"drifted: {', '.join(drifted)} ({consecutive} window(s) in a row, {params.hysteresis} needed)"
    if consecutive < params.hysteresis:
        return Decision("drift", True, False, consecutive, what + "; waiting for the next window before a retrain")
    if last_retrain is not None and now - last_retrain < timedelta(hours=params.cooldown_hours):
        until = last_retrain + timedelta(hours=params.cooldown_hours)
        return Decision("cooldown", True, False, consecutive, what + f"; in cooldown after a retrain until {until}")
    return Decision("retrain", True, True, consecutive, what + "; retrain recommended")


def state_dir_for(root: str | Path, model_tag: str) -> Path:
    """The monitored task's state folder: one per registry model name (tuneloop-<task>)."""
    return Path(root) / model_tag.split(":")[0]


def previous_drifted(state_dir: Path, model_tag: str) -> int:
    """Drifted windows in a row at the end of this model's history ('not enough data' runs skipped). A line
    that cannot be read (torn by a run killed mid-write, edited by hand) ends the streak, with a warning naming
    it: it is no evidence of drift, and a damaged line must not stop every run after it."""
    path = state_dir / HISTORY_FILE
    if not path.is_file():
        return 0
    lines = enumerate(path.read_text("utf-8").splitlines(), 1)
    runs = [_history_entry(path, number, line) for number, line in lines if line.strip()]
    count = 0
    for run in reversed([r for r in runs if r is None or (r["model_tag"] == model_tag and not r["skipped"])]):
        if run is None or not run["drift"]:
            break
        count += 1
    return count


def _history_entry(path: Path, number: int, line: str) -> dict[str, Any] | None:
    """The line's model_tag, drift and skipped ('not enough data'); None, with a warning, if unreadable."""
    try:
        run = json.loads(line)
        entry = {"model_tag": run["model_tag"], "drift": run["drift"], "skipped": run["status"] == "not-enough-data"}
        if isinstance(entry["model_tag"], str) and isinstance(entry["drift"], bool):
            return entry
    except (ValueError, TypeError, KeyError):
        pass
    log.warning("%s line %d is not a monitoring run record (%r): it ends the drifted streak", path, number, line[:80])
    return None


def append_history(state_dir: Path, entry: dict[str, object]) -> None:
    """One line per monitoring run (append-only), written by one call so runs appending at once do not
    interleave; a last line left torn by a killed run is ended first, so it spoils only itself."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / HISTORY_FILE
    line = (json.dumps(entry, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


def record_retrain(state_dir: Path, model_tag: str, at: datetime | None = None) -> None:
    """Note that a retrain started (the cooldown counts from here); the retraining path calls it."""
    from tuneloop.tabular import write_text_atomic

    moment = (at or datetime.now(UTC)).isoformat()
    write_text_atomic(json.dumps({"at": moment, "model_tag": model_tag}) + "\n", state_dir / RETRAINED_FILE)


def last_retrain(state_dir: Path) -> datetime | None:
    """When the last retrain started (naive times are UTC), None if none did.

    Raises:
        MonitorError: retrained.json cannot be read (named, with the fix).
    """
    from tuneloop.monitor import MonitorError

    path = state_dir / RETRAINED_FILE
    if not path.is_file():
        return None
    try:
        moment = datetime.fromisoformat(json.loads(path.read_text("utf-8"))["at"])
    except (ValueError, TypeError, KeyError):
        raise MonitorError(
            f'{path}: not a retrain record (expected {{"at": "<ISO 8601 time>", ...}}). Write the time the last '
            "retrain started there, or delete the file to end the cooldown."
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
