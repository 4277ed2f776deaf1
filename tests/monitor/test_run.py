"""A monitoring run end to end: registry, prediction log, verdict files; and its failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.monitor.conftest import log_predictions
from tuneloop.demo import generate
from tuneloop.monitor import MonitorError
from tuneloop.monitor.reference import write_reference
from tuneloop.monitor.run import run_monitoring
from tuneloop.monitor.verdict import read_verdict
from tuneloop.monitor.workspace import check_readable
from tuneloop.predlog import PredictionLogError


@pytest.fixture
def champion(tiny_classifier, reference, tmp_path, store):
    from tuneloop import registry

    entry = registry.register(tiny_classifier, reference=write_reference(reference, tmp_path / "ref.parquet"))
    registry.promote(entry.tag, reason="test")
    return entry.tag


@pytest.fixture
def params(monitor_params, tmp_path):
    return monitor_params.model_copy(
        update={
            "min_estimated_accuracy": 0.0,  # a random tiny model: its accuracy says nothing
            "min_rows": 50,
            "workspace": str(tmp_path / "workspace"),
            "state_dir": str(tmp_path / "state"),
        }
    )


def test_a_run_writes_verdict_history_report_and_workspace_snapshot(champion, params, tiny_classifier, tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    log_predictions(url, tiny_classifier, champion, generate(120, seed=3), feedback_share=0.5)
    verdict = run_monitoring(params, db_url=url)
    assert verdict.status == "ok" and verdict.window.rows == 120 and verdict.window.labeled_rows == 60
    state = Path(params.state_dir) / champion.split(":")[0]
    assert read_verdict(state / "verdict.json") == verdict
    assert "Monitoring verdict: OK" in (state / "summary.md").read_text()
    assert json.loads((state / "history.jsonl").read_text().splitlines()[-1])["status"] == "ok"
    assert verdict.report and Path(verdict.report).stat().st_size > 10_000
    assert any(Path(params.workspace).rglob("*.json"))  # the snapshot is in the Evidently workspace
    assert verdict.workspace_error is None
    # The workspace damaged (a project file cut short): the run still judges, writes and remembers its window.
    (project,) = Path(params.workspace).glob("*/metadata.json")
    project.write_text(project.read_text()[:40])
    again = run_monitoring(params, db_url=url)
    assert again.status == "ok" and again.report and Path(again.report).is_file()
    assert again.workspace_error and f"{params.workspace} did not take this run's snapshot" in again.workspace_error
    assert read_verdict(state / "verdict.json") == again and len((state / "history.jsonl").read_text().splitlines()) == 2
    assert "Not in the monitoring UI: the Evidently workspace" in (state / "summary.md").read_text()
    with pytest.raises(MonitorError, match=f"workspace {params.workspace} cannot be read.*Move the workspace"):
        check_readable(Path(params.workspace))  # what `tuneloop monitor ui` says instead of starting


def test_the_estimate_also_calibrates_on_feedback_logged_before_the_window(
    champion, params, tiny_classifier, reference, tmp_path
):
    from datetime import UTC, datetime, timedelta

    url, now = f"sqlite:///{tmp_path}/log.db", datetime.now(UTC)
    log_predictions(url, tiny_classifier, champion, generate(80, seed=5), 0.5, start=now - timedelta(hours=3))
    log_predictions(url, tiny_classifier, champion, generate(120, seed=6), 0.25, start=now - timedelta(hours=1))
    # the window is the newest 100 rows; before it: 40 labeled rows of the first batch, 20 of the second's 30
    verdict = run_monitoring(params.model_copy(update={"window": 100}), db_url=url, render=False)
    assert verdict.window.labeled_rows == 10 and verdict.estimate is not None
    assert (verdict.estimate.calibration_rows, verdict.estimate.calibration_feedback_rows) == (len(reference) + 60, 60)
    summary = (Path(params.state_dir) / champion.split(":")[0] / "summary.md").read_text()
    assert f"calibrated on {len(reference) + 60} labeled rows, 60 of them feedback" in summary
    off = run_monitoring(params.model_copy(update={"window": 100, "calibration_feedback_rows": 0}), db_url=url)
    assert off.estimate is not None and off.estimate.calibration_feedback_rows == 0


def test_feedback_sent_only_on_doubtful_answers_is_left_out_and_imported_labels_are_kept(
    champion, params, tiny_classifier, tmp_path
):
    from datetime import UTC, datetime, timedelta

    import numpy as np

    from tuneloop.predlog import Prediction, PredictionLog, new_request_id

    url, now = f"sqlite:///{tmp_path}/log.db", datetime.now(UTC)
    first, other = json.loads((tiny_classifier / "tuneloop.json").read_text())["labels"][:2]
    confidences = np.random.default_rng(3).uniform(0.3, 1.0, 400)
    plog, ids = PredictionLog(url, flush_interval_s=60), []
    for i, c in enumerate(confidences):  # earlier traffic, before the window
        ids.append(new_request_id())
        plog.log(Prediction(request_id=ids[-1], text=f"earlier text {i}", predicted=first, confidence=float(c),
                            top_k=[{"label": first, "score": float(c)}], model_tag=champion, latency_ms=1.0,
                            created_at=now - timedelta(hours=5, seconds=-i)))  # fmt: skip
    doubtful = [rid for rid, c in zip(ids, confidences) if c < 0.6]  # users reported only the answers they doubted
    plog.record_feedback_many([(rid, other) for rid in doubtful])  # POST /feedback's source
    queued = [rid for rid, c in zip(ids, confidences) if 0.6 <= c < 0.65]  # an annotated queue: least confident
    plog.record_feedback_many([(rid, first) for rid in queued], source="import")
    plog.close()
    log_predictions(url, tiny_classifier, champion, generate(100, seed=6), start=now - timedelta(hours=1))
    summary = Path(params.state_dir) / champion.split(":")[0] / "summary.md"

    verdict = run_monitoring(params.model_copy(update={"window": 100}), db_url=url, render=False)  # default: exclude
    assert verdict.estimate is not None
    sampling = verdict.estimate.feedback_sampling
    assert sampling is not None and not sampling.random and sampling.excluded
    assert (sampling.labeled_rows, sampling.imported_rows) == (len(doubtful), len(queued))
    assert sampling.unlabeled_rows == len(ids) - len(doubtful) - len(queued)
    assert verdict.estimate.calibration_feedback_rows == len(queued)  # the imported labels stay
    said = summary.read_text()
    assert f"the {len(doubtful)} labels sent to POST /feedback before the window are not a random sample" in said
    assert "left out of the estimate's calibration" in said and f"{len(queued)} imported labels" in said

    update = {"window": 100, "feedback_sampling_check": "warn"}
    warned = run_monitoring(params.model_copy(update=update), db_url=url, render=False)
    assert warned.estimate is not None and warned.estimate.feedback_sampling is not None
    assert not warned.estimate.feedback_sampling.excluded
    assert warned.estimate.calibration_feedback_rows == len(doubtful) + len(queued)
    update = {"window": 100, "feedback_sampling_check": "off"}
    unchecked = run_monitoring(params.model_copy(update=update), db_url=url, render=False)
    assert unchecked.estimate is not None and unchecked.estimate.feedback_sampling is None


def test_the_newest_rows_labels_have_not_reached_yet_are_not_held_against_the_feedback():
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import pandas as pd

    from tuneloop.monitor.run import Feedback

    rng, start = np.random.default_rng(4), datetime(2026, 12, 1, tzinfo=UTC)
    # 2,000 predictions; a random tenth of the older 1,500 labeled; the newest 500 (other traffic, far less
    # confident) wait for their labels
    confidence = np.concatenate([rng.uniform(0.8, 1.0, 1500), rng.uniform(0.3, 0.6, 500)])
    labeled = np.zeros(2000, dtype=bool)
    labeled[rng.choice(1500, 150, replace=False)] = True
    traffic = pd.DataFrame({
        "created_at": [start + timedelta(seconds=i) for i in range(2000)],
        "confidence": confidence,
        "true_label": np.where(labeled, "a", None),
        "feedback_source": np.where(labeled, "api", None),
    })  # fmt: skip
    check = Feedback(labeled=traffic[labeled], traffic=traffic).sampling()
    assert check is not None and check.random and check.unlabeled_rows < 1500


def test_an_empty_or_small_window_is_not_enough_data(champion, params, tiny_classifier, tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    log_predictions(url, tiny_classifier, "another:model", generate(60, seed=3))  # a log, but not of this model
    empty = run_monitoring(params, db_url=url)
    assert empty.status == "not-enough-data" and empty.window.rows == 0 and "min_rows is 50" in empty.reason
    log_predictions(url, tiny_classifier, champion, generate(20, seed=4))
    small = run_monitoring(params, db_url=url)
    assert (small.status, small.window.rows, small.retrain) == ("not-enough-data", 20, False)



def test_a_window_over_max_window_rows_is_refused_before_it_is_read(champion, params, tiny_classifier, tmp_path):
    """A --since range over months of traffic was read whole (memory grows with the window): it is refused, and
    so is --window N over the cap; a window at the cap is read."""
    from datetime import UTC, datetime, timedelta

    url = f"sqlite:///{tmp_path}/log.db"
    log_predictions(url, tiny_classifier, champion, generate(30, seed=3))
    capped = params.model_copy(update={"max_window_rows": 29})
    since = datetime.now(UTC) - timedelta(days=1)
    with pytest.raises(MonitorError, match=r"since .* holds over monitor.max_window_rows \(29\) predictions"):
        run_monitoring(capped, db_url=url, since=since)
    with pytest.raises(MonitorError, match=r"a window of 30 rows is over monitor.max_window_rows \(29\)"):
        run_monitoring(capped, db_url=url, last=30)
    at_cap = run_monitoring(params.model_copy(update={"max_window_rows": 30}), db_url=url, since=since)
    assert at_cap.window.rows == 30


def test_an_unreachable_database_is_named(champion, params):
    with pytest.raises(PredictionLogError, match=r"127\.0\.0\.1:1"):
        run_monitoring(params, db_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing")


def test_a_model_without_reference_is_an_error_naming_it(tiny_classifier, params, tmp_path, store):
    from tuneloop import registry

    entry = registry.register(tiny_classifier)
    with pytest.raises(MonitorError, match=f"model {entry.tag} has no monitoring reference"):
        run_monitoring(params, model_tag=entry.tag, db_url=f"sqlite:///{tmp_path}/log.db")


def test_cli_prints_the_verdict_or_the_cause(cli, champion, tiny_classifier, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((Path(__file__).parents[2] / "params.yaml").read_text())
    url = f"sqlite:///{tmp_path}/log.db"
    log_predictions(url, tiny_classifier, champion, generate(30, seed=3))
    result = cli("monitor", "run", "--db", url, "--window", "500")
    assert result.exit_code == 0 and "NOT-ENOUGH-DATA" in result.stdout
    assert (tmp_path / "monitoring" / "state" / "tuneloop-classifier" / "verdict.json").is_file()
    failed = cli("monitor", "run", "--db", "postgresql+psycopg://postgres@127.0.0.1:1/x")
    assert failed.exit_code == 1 and "127.0.0.1:1" in failed.stderr


def test_a_two_class_model_with_feedback_gets_a_verdict_report_and_snapshot(tiny_model, params, tmp_path, store):
    """A sentiment or spam model: every window with feedback holds two labels, which Evidently runs as a binary
    task (the labeled metrics failed with a KeyError there). The whole run: verdict, HTML report, workspace."""
    from tests.conftest import classifier_dir
    from tuneloop import registry
    from tuneloop.monitor.reference import build_reference

    labels = ["ham", "spam"]
    model_dir = classifier_dir(tiny_model, tmp_path / "two-class", labels)
    rows = generate(200, seed=7).assign(label=lambda f: ["spam" if i % 3 == 0 else "ham" for i in range(len(f))])
    reference = build_reference(model_dir, rows.iloc[:120], backend="torch")
    entry = registry.register(model_dir, reference=write_reference(reference, tmp_path / "ref.parquet"))
    registry.promote(entry.tag, reason="test")
    url = f"sqlite:///{tmp_path}/log.db"
    log_predictions(url, model_dir, entry.tag, rows.iloc[120:].reset_index(drop=True), feedback_share=0.5)

    verdict = run_monitoring(params, db_url=url)

    assert verdict.window.rows == 80 and verdict.window.labeled_rows == 40
    assert verdict.labeled is not None and verdict.labeled.rows == 40
    assert set(verdict.labeled.per_class_recall) <= set(labels)
    assert verdict.report and Path(verdict.report).stat().st_size > 10_000
    assert verdict.workspace_error is None and any(Path(params.workspace).rglob("*.json"))
