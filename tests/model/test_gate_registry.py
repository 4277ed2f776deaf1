"""Gate and registry with real tiny models: shuffled labels are never promoted, a clearly better
challenger is, rollback restores the previous champion, concurrent promotions leave one champion."""

import json
import multiprocessing
import random
import shutil

import numpy as np
import pytest

from tests.conftest import REPO, TINY_TRAIN, sentiment_rows, write
from tests.model import race
from tuneloop import registry
from tuneloop.config import load_params
from tuneloop.evaluate import evaluate
from tuneloop.gate import comparison_check, floor_checks, mcnemar, run_gate
from tuneloop.reports import REPORT_VERSION, EvalReport
from tuneloop.train import train

GATE = TINY_TRAIN + [
    "gate.min_macro_f1=0.7",
    "gate.min_accuracy=0.7",
    "gate.max_ece=0.9",
    "gate.min_class_recall=0.3",
    "gate.min_slice_rows=5",
    "gate.latency_requests=10",
    "gate.min_baseline_margin=0",  # the toy task: model and TF-IDF baseline both reach 1.0, a tie must pass
    "evaluate.behaviour_file=null",
    "serve.backend=torch",  # the served-variant checks are tested on their own (test_served_variant_*, test_evaluate)
]


def _report(served: dict | None = None) -> EvalReport:
    headline = {"report_version": REPORT_VERSION, "model": "m", "data": "d", "n": 10, "accuracy": 0.9,
                "macro_f1": 0.9, "weighted_f1": 0.9, "roc_auc_ovr": None, "log_loss": 0.3, "ece": 0.05}
    variant = {"backend": "torch-int8", "accuracy": 0.9, "ece": 0.05, "mean_confidence_shift": 0.01, **served} if served else None
    return EvalReport.model_validate({"headline": headline, "behaviour": {}, "served": variant,
                                      "per_class": {"a": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 5}}})


def test_served_variant_must_agree_and_keep_macro_f1():
    gate = load_params(REPO / "params.yaml").gate  # min_served_agreement 0.98, max_served_f1_drop 0.01
    checks = {c.name: c for c in floor_checks(_report({"agreement": 0.99, "macro_f1": 0.895}), gate)}
    assert checks["served_agreement"].passed and checks["served_f1_drop"].passed
    checks = {c.name: c for c in floor_checks(_report({"agreement": 0.95, "macro_f1": 0.85}), gate)}
    assert not checks["served_agreement"].passed and not checks["served_f1_drop"].passed
    assert "served_agreement" not in {c.name for c in floor_checks(_report(), gate)}  # serve.backend: torch


def test_mcnemar_counts_and_direction():
    champion = np.array([True] * 20 + [False] * 5)
    challenger = np.array([False] * 12 + [True] * 8 + [False] * 5)
    result = mcnemar(champion, challenger)
    assert result["challenger_wrong_champion_right"] == 12 and result["challenger_right_champion_wrong"] == 0
    assert result["p_value"] == pytest.approx(2 * 0.5**12)
    assert not comparison_check(result, 0.05).passed
    same = mcnemar(champion, champion.copy())
    assert same["p_value"] == 1.0 and comparison_check(same, 0.05).passed


@pytest.fixture(scope="module")
def trained_pair(tiny_model, tiny_trained, tmp_path_factory):
    """A good model (the session's `tiny_trained`, GATE trains alike) and one trained on shuffled labels, each
    evaluated on the same test file (once per module)."""
    root = tmp_path_factory.mktemp("gate-models")
    params = load_params(REPO / "params.yaml", GATE)
    train_csv = write(root / "d" / "train.csv", sentiment_rows(24, seed=0))
    val_csv = write(root / "d" / "val.csv", sentiment_rows(9, seed=1))
    test_csv = write(root / "d" / "test.csv", sentiment_rows(12, seed=2))
    lines = train_csv.read_text().splitlines()
    labels = [line.rsplit(",", 1)[1] for line in lines[1:]]
    random.Random(7).shuffle(labels)
    shuffled_csv = write(
        root / "d" / "shuffled.csv",
        "\n".join([lines[0]] + [f"{line.rsplit(',', 1)[0]},{label}" for line, label in zip(lines[1:], labels)]) + "\n",
    )
    shutil.copytree(tiny_trained, root / "good")
    train(params, shuffled_csv, val_csv, root / "shuffled", base=str(tiny_model), live_dir=None)
    for name in ("good", "shuffled"):
        evaluate(params, root / name, test_csv, root / f"eval-{name}", behaviour_file="")
    return root, params, test_csv


@pytest.fixture
def models(trained_pair, store):
    """The module's trained pair with an empty registry; `project` in the tests is their folder."""
    root, params, test_csv = trained_pair
    return params, test_csv, {"good": root / "good", "shuffled": root / "shuffled"}


@pytest.fixture
def project(trained_pair):
    return trained_pair[0]


def _gate(params, project, name, test_csv, champion=None):
    return run_gate(
        params,
        project / name,
        project / f"eval-{name}",
        test_csv,
        champion.path if champion else None,
        champion.tag if champion else None,
    )


def test_shuffled_labels_never_promoted_and_better_challenger_is(project, models):
    params, test_csv, paths = models
    # No champion yet: floors alone decide. The shuffled model fails them.
    shuffled = _gate(params, project, "shuffled", test_csv)
    assert not shuffled.passed and {"macro_f1", "beats_baseline"} <= {c.name for c in shuffled.failed}
    good = _gate(params, project, "good", test_csv)
    assert good.passed, [c.why for c in good.failed]
    champion = registry.promote(registry.register(paths["good"]).tag, reason="first")
    # Against the champion, the shuffled model is also significantly worse.
    against = _gate(params, project, "shuffled", test_csv, champion)
    assert "no_regression_vs_champion" in [c.name for c in against.failed]
    assert against.comparison["challenger_accuracy"] < against.comparison["champion_accuracy"]

    # A bad model forced in as champion is replaced by the clearly better one through the gate.
    bad = registry.register(paths["shuffled"])
    registry.promote(bad.tag, reason="test: force a weak champion", forced=True)
    better = _gate(params, project, "good", test_csv, registry.champion())
    assert better.passed
    assert "significantly better" in next(c.why for c in better.checks if c.name == "no_regression_vs_champion")


def test_registry_metadata_promotion_and_rollback(project, models):
    params, test_csv, paths = models
    metrics = json.loads((project / "eval-good" / "metrics.json").read_text())
    first = registry.register(paths["good"], metrics=metrics)
    assert registry.register(paths["good"]).tag == first.tag  # same weights: one entry
    meta = first.metadata
    assert meta["metrics"]["macro_f1"] == metrics["macro_f1"]
    assert meta["data_version"] and meta["params"]["train"]["lr"] == 0.001 and meta["base_model"]
    assert meta["git_revision"] and meta["registered_at"]
    second = registry.register(paths["shuffled"])
    registry.promote(first.tag, reason="first champion")
    registry.promote(second.tag, reason="second", forced=True)
    stages = {e.tag: e.stage for e in registry.entries()}
    assert stages == {first.tag: "archived", second.tag: "champion"}
    restored = registry.rollback(reason="second was worse")
    assert restored.tag == first.tag and registry.champion().tag == first.tag
    stages = {e.tag: e.stage for e in registry.entries()}
    assert stages == {first.tag: "champion", second.tag: "archived"}
    assert [h["action"] for h in registry.history()] == ["promote", "promote", "rollback"]
    assert registry.history()[1]["forced"] is True
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(reason="again")  # first was promoted over nothing: no way back to second


def test_two_concurrent_promotions_leave_exactly_one_champion(project, models):
    params, test_csv, paths = models
    tags = [registry.register(paths[name]).tag for name in ("good", "shuffled")]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=race.promote, args=(tag, barrier)) for tag in tags]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    stages = [e.stage for e in registry.entries()]
    assert stages.count("champion") == 1
    assert registry.champion().tag in tags
    assert len(registry.history()) == 2
