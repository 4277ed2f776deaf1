"""Evaluation metrics agree with scikit-learn, reports are complete, behavioural tests run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from tests.conftest import REPO, write
from tuneloop.config import load_params
from tuneloop.evaluate import classification_metrics, expected_calibration_error, length_bucket, run_behaviour

LABELS = ["a", "b", "c"]
Y = np.array([0, 0, 1, 1, 2, 2, 0, 2])
P = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.4, 0.5, 0.1],
        [0.1, 0.8, 0.1],
        [0.3, 0.3, 0.4],
        [0.1, 0.1, 0.8],
        [0.2, 0.2, 0.6],
        [0.9, 0.05, 0.05],
        [0.5, 0.1, 0.4],
    ]
)


def test_metrics_equal_scikit_learn_on_a_hand_made_example():
    m = classification_metrics(Y, P, LABELS, ece_bins=10)
    pred = P.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(accuracy_score(Y, pred)) == pytest.approx(5 / 8)
    assert m["macro_f1"] == pytest.approx(f1_score(Y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(Y, pred, average="weighted"))
    assert m["roc_auc_ovr"] == pytest.approx(roc_auc_score(Y, P, multi_class="ovr", average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(Y, P))
    # predictions 0,1,1,2,2,2,0,0: "b" predicted twice (one right), true twice (one found)
    assert m["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}


def test_expected_calibration_error_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.4, 0.6], [0.7, 0.3]])
    # bins of 0.5: (0.5, 1.0] holds all four: confidence mean 0.8, accuracy 3/4 -> |0.75 - 0.8| = 0.05
    ece, table = expected_calibration_error(y, p, bins=2)
    assert ece == pytest.approx(0.05)
    assert table == [{"bin_low": 0.5, "bin_high": 1.0, "count": 4, "accuracy": 0.75, "confidence": pytest.approx(0.8)}]


def test_roc_auc_still_defined_when_a_class_is_absent():
    keep = Y != 1
    m = classification_metrics(Y[keep], P[keep], LABELS)
    assert m["roc_auc_ovr"] is not None and 0 <= m["roc_auc_ovr"] <= 1
    assert m["per_class"]["b"]["support"] == 0


def test_length_buckets():
    assert [length_bucket(t, [2, 4]) for t in ["one", "one two three", "a b c d e f"]] == [
        "1-2 words",
        "3-4 words",
        "5+ words",
    ]


def test_behaviour_runner_counts_failures_and_skips_unknown_labels():
    spec = {
        "invariance": {"sample": 3, "perturbations": ["uppercase", "neutral_suffix"], "neutral_suffixes": [" ok"]},
        "minimum_functionality": [{"text": "x", "label": "a"}, {"text": "y", "label": "zzz"}],
    }

    def predict(texts):  # "model": label 1 for shouting, else 0
        return np.array([1 if t.isupper() else 0 for t in texts])

    results = run_behaviour(predict, ["hi there", "hello", "hey"], LABELS, spec, seed=0)
    assert results["invariance_uppercase"]["pass_rate"] == 0.0
    assert results["invariance_neutral_suffix"]["pass_rate"] == 1.0
    assert results["minimum_functionality"] == {
        "type": "minimum_functionality",
        "cases": 1,
        "skipped_unknown_label": 1,
        "pass_rate": 1.0,
        "failures": [],
    }


@pytest.fixture
def trained(project, tiny_trained):
    return Path(shutil.copytree(tiny_trained, project / "model"))


def test_evaluate_writes_every_report(project, cli, trained):
    test_csv = write(
        project / "test.csv",
        "text,label,channel\nthe film was great,pos,chat\n"
        "the food was awful and the service was bad too,neg,email\nit was okay,neu,chat\n",
    )
    behaviour = write(
        project / "b.yaml",
        "invariance:\n  sample: 3\n  perturbations: [lowercase, typo]\n"
        "minimum_functionality:\n  - {text: 'the room was lovely', label: pos}\n",
    )
    result = cli("evaluate", "--model", trained, "--data", test_csv, "--out", "eval", "--behaviour", behaviour)
    assert result.exit_code == 0, result.output
    out = project / "eval"
    for name in (
        "metrics.json",
        "slices.json",
        "behaviour.json",
        "confusion.json",
        "confusion.png",
        "calibration.json",
        "reliability.png",
        "predictions.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    assert metrics["accuracy"] == pytest.approx((predictions["label"] == predictions["predicted"]).mean())
    behaviour = json.loads((out / "behaviour.json").read_text())  # details beside the headline numbers
    assert set(behaviour) == {"invariance_lowercase", "invariance_typo", "minimum_functionality"}
    slices = json.loads((out / "slices.json").read_text())
    assert set(slices) == {"length", "channel"} and slices["channel"]["chat"]["n"] == 2
    confusion = json.loads((out / "confusion.json").read_text())
    assert confusion[0]["actual"] == "pos" and len(confusion) == 3
    served = json.loads((out / "served.json").read_text())  # params.yaml serves ONNX int8: evaluate scores it too
    assert served["backend"] == "onnx-int8" and len(served["variant_sha256"]) == 64  # the exported file it judged
    assert served["int8_recheck_margin"] == 0.05 and 0 <= served["agreement"] <= 1


def test_served_variant_is_scored_only_when_it_differs(project, trained):
    from tuneloop.evaluate import evaluate

    test_csv = write(project / "test.csv", "text,label\nthe film was great,pos\nawful awful,neg\nit was okay,neu\n")
    fp32 = evaluate(
        load_params(REPO / "params.yaml", ["serve.backend=torch"]), trained, test_csv, project / "e1", behaviour_file=""
    )
    assert fp32.served is None
    int8_params = load_params(REPO / "params.yaml", ["serve.backend=onnx-int8"])
    int8 = evaluate(int8_params, trained, test_csv, project / "e2", behaviour_file="")
    probs = pd.read_csv(project / "e2" / "predictions.csv")
    assert int8.served.agreement in (0.0, 1 / 3, 2 / 3, 1.0) and len(probs) == 3 and int8.served.backend == "onnx-int8"
    assert int8.served.int8_recheck_margin == int8_params.serve.int8_recheck_margin  # what was judged is recorded
    every_row = load_params(REPO / "params.yaml", ["serve.backend=onnx-int8", "serve.int8_recheck_margin=1"])
    rechecked = evaluate(every_row, trained, test_csv, project / "e3", behaviour_file="")
    assert rechecked.served.agreement == 1.0 and rechecked.served.int8_recheck_margin == 1.0  # fp32's answers


def test_evaluate_refuses_foreign_model_dirs_and_unknown_labels(project, cli, trained, tiny_model):
    test_csv = write(project / "test.csv", "text,label\nsomething,pos\n")
    foreign = cli("evaluate", "--model", tiny_model, "--data", test_csv, "--out", "eval")
    assert foreign.exit_code == 1 and "not a tuneloop model dir (no tuneloop.json)" in foreign.stderr
    odd = write(project / "odd.csv", "text,label\nsomething,surprise\n")
    unknown = cli("evaluate", "--model", trained, "--data", odd, "--out", "eval")
    assert unknown.exit_code == 1 and "labels ['surprise'] are unknown to the model" in unknown.stderr
    assert "Traceback" not in foreign.output + unknown.output
