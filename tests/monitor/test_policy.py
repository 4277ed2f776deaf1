"""Hysteresis and cooldown: the policy's two guards against retraining on noise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tuneloop.monitor import policy
from tuneloop.monitor.verdict import SignalResult

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def signal(drifted: bool, counts: bool = True) -> SignalResult:
    return SignalResult(
        name="novelty", method="z", value=0.0, threshold=0.001, rule="value < threshold", drifted=drifted, counts=counts
    )


def test_hysteresis_needs_k_drifted_windows_in_a_row(monitor_params, tmp_path):
    params = monitor_params.model_copy(update={"hysteresis": 2, "cooldown_hours": 24})
    first = policy.decide([signal(True)], params, policy.previous_drifted(tmp_path, "m:1"), None, NOW)
    assert (first.status, first.retrain, first.consecutive) == ("drift", False, 1)
    policy.append_history(tmp_path, {"model_tag": "m:1", "status": first.status, "drift": True})
    policy.append_history(tmp_path, {"model_tag": "m:1", "status": "not-enough-data", "drift": False})  # skipped
    second = policy.decide([signal(True)], params, policy.previous_drifted(tmp_path, "m:1"), None, NOW)
    assert (second.status, second.retrain, second.consecutive) == ("retrain", True, 2)
    assert policy.previous_drifted(tmp_path, "m:2") == 0  # another model's history does not count


def test_a_clean_window_resets_the_run(monitor_params, tmp_path):
    params = monitor_params.model_copy(update={"hysteresis": 2})
    policy.append_history(tmp_path, {"model_tag": "m:1", "status": "drift", "drift": True})
    policy.append_history(tmp_path, {"model_tag": "m:1", "status": "ok", "drift": False})
    assert policy.decide([signal(True)], params, policy.previous_drifted(tmp_path, "m:1"), None, NOW).status == "drift"


def test_cooldown_after_a_retrain_reports_drift_without_retraining(monitor_params, tmp_path):
    params = monitor_params.model_copy(update={"hysteresis": 1, "cooldown_hours": 24})
    policy.record_retrain(tmp_path, "m:1", at=NOW - timedelta(hours=2))
    inside = policy.decide([signal(True)], params, 0, policy.last_retrain(tmp_path), NOW)
    assert (inside.status, inside.drift, inside.retrain) == ("cooldown", True, False)
    later = policy.decide([signal(True)], params, 0, policy.last_retrain(tmp_path), NOW + timedelta(hours=23))
    assert later.retrain


def test_signals_outside_the_policy_do_not_make_drift(monitor_params):
    decision = policy.decide([signal(True, counts=False), signal(False)], monitor_params, 3, None, NOW)
    assert (decision.status, decision.drift, decision.consecutive) == ("ok", False, 0)
    marked = policy.with_counts([signal(True, counts=False)], monitor_params)
    assert marked[0].counts  # novelty is listed in params.yaml's monitor.signals


def test_a_torn_or_edited_history_line_ends_the_streak_and_spoils_only_itself(tmp_path, caplog):
    """A run killed mid-append leaves a line without its end; the next run must neither crash on it (every run
    after it would) nor glue its own line to it."""
    drifted = {"model_tag": "m:1", "status": "drift", "drift": True}
    for _ in range(2):
        policy.append_history(tmp_path, drifted)
    with open(tmp_path / policy.HISTORY_FILE, "a") as handle:
        handle.write('{"model_tag": "m:1", "sta')  # the kill
    assert policy.previous_drifted(tmp_path, "m:1") == 0
    assert "line 3 is not a monitoring run record" in caplog.text
    policy.append_history(tmp_path, drifted)
    policy.append_history(tmp_path, drifted)
    lines = (tmp_path / policy.HISTORY_FILE).read_text().splitlines()
    assert len(lines) == 5 and lines[3] == lines[4] == lines[0]  # the torn line stayed one line
    assert policy.previous_drifted(tmp_path, "m:1") == 2
    with open(tmp_path / policy.HISTORY_FILE, "a") as handle:
        handle.write('{"model_tag": "m:1", "drift": "yes", "status": "drift"}\n[1, 2]\n')  # edited by hand
    assert policy.previous_drifted(tmp_path, "m:1") == 0


def test_a_damaged_retrain_record_is_named_and_a_naive_time_is_utc(tmp_path):
    import pytest

    from tuneloop.monitor import MonitorError

    path = tmp_path / policy.RETRAINED_FILE
    for content in ("", '{"at": "yesterday"}', '{"when": "2026-11-29T10:00:00+00:00"}', "[1]"):
        path.write_text(content)
        with pytest.raises(MonitorError, match=f"{path}: not a retrain record.*delete the file"):
            policy.last_retrain(tmp_path)
    path.write_text('{"at": "2026-11-29T10:00:00"}')  # written by hand, without a zone
    assert policy.last_retrain(tmp_path) == NOW - timedelta(hours=2)
    policy.record_retrain(tmp_path / "new", "m:1", at=NOW)  # the folder is created, the file replaced whole
    assert policy.last_retrain(tmp_path / "new") == NOW
