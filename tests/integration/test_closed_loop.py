"""The closed loop end to end with the tiny model and a real `bentoml serve`: drifted traffic with feedback
-> monitoring verdict -> retrain on the feedback (a new DVC data version) -> gate -> promotion -> the running
service switches to the new champion; nothing is lost from the prediction log."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

from tests.integration.test_training_flow import _configure, _load_flow
from tests.serve.test_service_http import serving
from tuneloop import registry
from tuneloop.predlog import read_window

LOOP = ["monitor.hysteresis=1", "monitor.min_rows=100", "serve.follow_champion_s=1"]


def _answers_with(base: str, tag: str, seconds: float) -> list[dict]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        answers = httpx.post(f"{base}/classify", json={"texts": ["my card was charged twice"]}, timeout=30).json()
        if answers[0]["model"] == tag:
            return answers
        time.sleep(0.5)
    raise AssertionError(f"the service did not switch to {tag} within {seconds:.0f} s")


@pytest.mark.timeout(2400)  # three trainings, DVC, a served model and monitoring: minutes on 2 busy cores
def test_drift_with_feedback_retrains_and_the_running_service_switches(
    project,
    cli,
    tiny_model,
    store,
    prefect_harness,
    monkeypatch,
    tmp_path,
):
    import pandas as pd

    from tuneloop import orchestration
    from tuneloop.monitor.label_mix import CORPUS_LABELS
    from tuneloop.monitor.reference import reference_for
    from tuneloop.monitor.simulate import drifted_rows, replay

    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "300").exit_code == 0
    assert cli("data", "import", "build/demo.csv").exit_code == 0
    _configure(project, tiny_model, LOOP)
    first = _load_flow()()
    old = registry.champion()
    assert old is not None and old.tag == first["champion"] and old.metadata.get("reference_sha256")
    corpus = reference_for(old.tag).attrs["tuneloop_reference"][CORPUS_LABELS]  # the raw corpus' label mix
    assert sum(corpus.values()) == 300 and set(corpus) == set(pd.read_csv("build/demo.csv")["label"])
    data_before = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]

    db = f"sqlite:///{tmp_path / 'loop.db'}"
    monkeypatch.setenv("TUNELOOP_DB_URL", db)  # monitoring and the retrain read the log the service writes
    monkeypatch.setattr(orchestration, "server_configured", lambda: False)  # the embedded default: retrain in-process
    with serving(project, db) as base:
        sent = replay(base, drifted_rows("vocabulary", 240, 0.5, seed=3), feedback=0.5)
        verdict = _load_flow_named("flows/monitoring.py", "monitoring")()
        assert verdict["drift"] and verdict["retrain"], verdict["reason"]
        retrained = verdict["retrained"]
        assert retrained["outcome"] == "promoted", retrained
        new = registry.champion()
        assert new is not None and new.tag != old.tag and new.metadata["production_train_rows"] > 0
        answers = _answers_with(base, new.tag, 60)  # the running service now answers with the new champion
        assert answers[0]["model"] == new.tag

        # Cooldown: more drifted traffic right after the retrain is reported, and retrains nothing.
        sent_more = replay(base, drifted_rows("length", 120, 0.5, seed=4), feedback=0.5)  # not in the new reference
        monitoring = _load_flow_named("flows/monitoring.py", "monitoring")
        cooled = monitoring(window=120)
        assert cooled["status"] == "cooldown" and not cooled["retrain"] and "cooldown" in cooled["reason"]
        assert "retrained" not in cooled and registry.champion().tag == new.tag

        # A retrain whose challenger fails the gate: the champion and the service stay, and the run says so.
        refused = monitoring(overrides=["monitor.cooldown_hours=0", "gate.min_accuracy=1.0"], window=120)
        assert refused["retrain"] and refused["retrained"]["outcome"] == "refused", refused
        assert refused["retrained"]["champion"] == new.tag and "accuracy" in refused["retrained"]["reason"]
        assert registry.champion().tag == new.tag
        assert _answers_with(base, new.tag, 5)[0]["model"] == new.tag
    logged = read_window(db)
    # every prediction, before and after the switch, is in the log
    assert len(logged) >= sent["predictions"] + sent_more["predictions"] + 1
    assert set(logged["model_tag"]) == {old.tag, new.tag}  # each row names the model that made it
    assert yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"] != data_before  # a new data version


def _load_flow_named(path: str, name: str):
    from tuneloop.pipeline import load_flow as load

    return load(path, name)
