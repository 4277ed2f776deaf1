"""The policy: which signals count, hysteresis (K drifted windows in a row) and the cooldown after
a retrain turn one window's signals into a status. State lives in files under `monitor.state_dir`
(one folder per monitored task): history.jsonl (one line per run) and retrained.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.monitor.verdict import SignalResult, Status

if TYPE_CHECKING:
    from tuneloop.config import MonitorParams

HISTORY_FILE = "history.jsonl"
RETRAINED_FILE = "retrained.json"


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
    """Drifted windows in a row at the end of this model's history ('not enough data' runs skipped)."""
    path = state_dir / HISTORY_FILE
    if not path.is_file():
        return 0
    runs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    count = 0
    for run in reversed([r for r in runs if r["model_tag"] == model_tag and r["status"] != "not-enough-data"]):
        if not run["drift"]:
            break
        count += 1
    return count


def append_history(state_dir: Path, entry: dict[str, object]) -> None:
    """One line per monitoring run (append-only)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / HISTORY_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, default=str) + "\n")


def record_retrain(state_dir: Path, model_tag: str, at: datetime | None = None) -> None:
    """Note that a retrain started (the cooldown counts from here); the retraining path calls it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    moment = (at or datetime.now(UTC)).isoformat()
    (state_dir / RETRAINED_FILE).write_text(json.dumps({"at": moment, "model_tag": model_tag}) + "\n")


def last_retrain(state_dir: Path) -> datetime | None:
    path = state_dir / RETRAINED_FILE
    return datetime.fromisoformat(json.loads(path.read_text())["at"]) if path.is_file() else None
