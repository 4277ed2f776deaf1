"""The Prefect training flow end to end, under prefect_test_harness, with a tiny random BERT."""

import json

import pytest
import yaml

from tests.conftest import TINY_TRAIN, write
from tuneloop import registry


def _configure(project, tiny_model, extra=()):
    params = yaml.safe_load((project / "params.yaml").read_text())
    for item in [
        *TINY_TRAIN,
        "train.epochs=3",
        "gate.min_macro_f1=0.0",
        "gate.min_accuracy=0.0",
        "gate.min_class_recall=0.0",
        "gate.min_behaviour_pass_rate=0.0",
        "gate.max_ece=1.0",
        "gate.latency_requests=10",
        "gate.min_baseline_margin=null",  # tests/model/test_baseline.py judges the baseline check
        *extra,
    ]:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        params[section][name] = yaml.safe_load(value)
    params["train"]["base_model"] = str(tiny_model)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def _load_flow():
    from tuneloop.pipeline import load_flow

    return load_flow("flows/training.py", "training_pipeline")


def test_flow_trains_gates_registers_promotes_and_packages(project, cli, tiny_model, store, prefect_harness):
    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "300").exit_code == 0
    assert cli("data", "import", "build/demo.csv").exit_code == 0
    _configure(project, tiny_model)
    flow = _load_flow()

    first = flow()
    ran = {s["stage"]: s["ran"] for s in first["stages"] if "ran" in s}
    assert ran["validate"] and ran["train"] and ran["evaluate"]
    assert registry.champion().tag == first["champion"]
    assert first["bento"].startswith("tuneloop_classifier:")
    gate = json.loads((project / "reports/gate/gate.json").read_text())
    assert gate["passed"] and gate["champion"] is None

    second = flow()  # nothing changed
    assert all(not s.get("ran") for s in second["stages"] if "ran" in s)  # every DVC stage a cache hit
    assert second["champion"] == first["champion"] and second["bento"] == first["bento"]
    assert len(registry.history()) == 1  # not promoted twice
    gate = json.loads((project / "reports/gate/gate.json").read_text())
    assert gate["champion"] == first["champion"] and second["outcome"] == "no-new-model"
    assert "no new model" in gate["comparison"]["note"]  # the champion's own weights: nothing judged

    from prefect.artifacts import Artifact

    for key in ("validation-report", "evaluation-metrics", "gate-verdict", "champion-model"):
        assert Artifact.get(key) is not None, key


def test_flow_fails_with_a_clear_message_when_validation_fails(project, cli, tiny_model, store, prefect_harness):
    write(project / "in.csv", "text,label\n" + "".join(f"text {i},a\n" for i in range(20)) + "lonely,b\n")
    assert cli("data", "import", "in.csv").exit_code == 0
    _configure(project, tiny_model)
    state = _load_flow()(return_state=True)
    assert state.is_failed() and not state.is_crashed()
    with pytest.raises(Exception, match="DVC stage 'validate' failed"):
        state.result()
    assert registry.champion() is None


def test_flow_fails_when_the_gate_fails(project, cli, tiny_model, store, prefect_harness):
    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "300").exit_code == 0
    assert cli("data", "import", "build/demo.csv").exit_code == 0
    _configure(project, tiny_model, ["gate.min_macro_f1=0.99"])
    state = _load_flow()(return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=r"(?s)gate failed.*macro_f1"):
        state.result()
    assert registry.champion() is None and not registry.entries()
