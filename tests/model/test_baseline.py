"""The TF-IDF baseline every model must beat: features chosen by script, scored by evaluate on the same rows,
and the gate's beats_baseline check failing a model worse than it and passing one that is better."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import LOOSE_GATE, REPO, sentiment_rows, write
from tuneloop.baseline import choose_analyzer, fit_predict, training_file, unspaced_share
from tuneloop.config import load_params
from tuneloop.evaluate import evaluate
from tuneloop.gate import baseline_check, render_markdown, run_gate
from tuneloop.reports import REPORT_VERSION, EvalReport

CHINESE = ["苹果发布新款手机，售价创新高", "国足主场两球击败对手晋级", "央行宣布下调存款准备金率", "电影票房突破十亿大关"]


def test_analyzer_follows_the_script_not_the_language_name():
    assert choose_analyzer(["I lost my card yesterday", "how do I top up"]) == "word"
    assert choose_analyzer(CHINESE) == "char"
    assert choose_analyzer(["iPhone 15 发布会今晚举行，库克亮相"]) == "char"  # mixed, mostly unspaced script
    assert choose_analyzer(["안녕하세요 반갑습니다"]) == "word"  # Korean separates words with spaces
    assert choose_analyzer(CHINESE, "word") == "word"  # an explicit setting wins
    assert unspaced_share(["", " "]) == 0.0


def test_char_ngrams_learn_what_words_cannot_see():
    """Unspaced text is one 'word' per text: the word analyzer cannot generalise, char n-grams can."""
    sport = ["国足主场击败对手", "篮球联赛总决赛开打", "国足客场战平", "篮球明星宣布退役", "足球联赛赛程公布"]
    money = ["央行下调利率", "股市收盘大涨", "央行公布货币数据", "股市成交额创新高", "银行理财收益下降"]
    train, labels = sport + money, ["sport"] * 5 + ["money"] * 5
    test = ["国足今晚出战", "股市早盘下跌", "篮球联赛揭幕", "央行发布报告"]
    truth = np.array(["sport", "money", "sport", "money"])
    assert (fit_predict(train, labels, test, "char", seed=0) == truth).all()
    assert (fit_predict(train, labels, test, "word", seed=0) == truth).mean() < 1.0


def _report(macro_f1: float, baseline_f1: float | None) -> EvalReport:
    headline = {"report_version": REPORT_VERSION, "model": "m", "data": "d", "n": 200, "accuracy": macro_f1,
                "macro_f1": macro_f1, "weighted_f1": macro_f1, "roc_auc_ovr": None, "log_loss": 0.3, "ece": 0.05}
    baseline = None if baseline_f1 is None else {"analyzer": "word", "train_path": "t.csv", "train_rows": 800,
                                                 "fit_seconds": 0.4, "accuracy": baseline_f1, "macro_f1": baseline_f1}
    return EvalReport.model_validate({"headline": headline, "behaviour": {}, "baseline": baseline,
                                      "per_class": {"a": {"precision": 1, "recall": 1, "f1": 1, "support": 100}}})


def _rows(right: np.ndarray) -> np.ndarray:
    truth = np.array(["a", "b"] * 100)
    return np.where(right, truth, np.where(truth == "a", "b", "a")), truth


@pytest.mark.parametrize("paired_test", ["mcnemar", "bootstrap"])
def test_beats_baseline_passes_a_better_model_and_fails_a_worse_one(paired_test):
    params = load_params(REPO / "params.yaml", [f"gate.paired_test={paired_test}", "gate.bootstrap_samples=200"])
    rng = np.random.default_rng(0)
    baseline_pred, truth = _rows(rng.random(200) < 0.80)
    strong, _ = _rows(rng.random(200) < 0.97)
    weak, _ = _rows(rng.random(200) < 0.60)
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(200)], "label": truth})
    for predicted, passes in ((strong, True), (weak, False)):
        predictions = pd.DataFrame({"predicted": predicted, "baseline_predicted": baseline_pred})
        f1 = float((predicted == truth).mean())
        check, details = baseline_check(params, _report(f1, float((baseline_pred == truth).mean())), frame, predictions)
        assert check.passed is passes, check.why
        assert details["test"]["test"] == paired_test and details["analyzer"] == "word"
        if not passes:  # the message names what to do about it
            assert "tuneloop pretrain" in check.why and "vocab.extend" in check.why


def test_a_lead_under_the_margin_is_not_enough():
    params = load_params(REPO / "params.yaml", ["gate.min_baseline_margin=0.05"])
    truth = np.array(["a", "b"] * 100)
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(200)], "label": truth})
    predictions = pd.DataFrame({"predicted": truth, "baseline_predicted": truth})  # equal: lead 0 < 0.05
    check, _ = baseline_check(params, _report(0.9, 0.9), frame, predictions)
    assert not check.passed and check.value == 0.0 and check.threshold == 0.05


def test_no_baseline_scored_is_a_refusal_with_the_fix():
    params = load_params(REPO / "params.yaml")
    frame = pd.DataFrame({"text": ["x"], "label": ["a"]})
    check, _ = baseline_check(params, _report(0.9, None), frame, pd.DataFrame({"predicted": ["a"]}))
    assert not check.passed and "--train" in check.why and "min_baseline_margin: null" in check.why


def test_training_file_prefers_explicit_then_recorded_then_beside_the_test(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    test = write(tmp_path / "d" / "test.csv", "text,label\nx,a\n")
    assert training_file(model, test, None) is None  # nothing recorded, no train.csv beside the test file
    beside = write(tmp_path / "d" / "train.csv", "text,label\nx,a\n")
    assert training_file(model, test, None) == beside
    recorded = write(tmp_path / "elsewhere.csv", "text,label\nx,a\n")
    (model / "tuneloop.json").write_text(json.dumps({"data": {"train": {"path": str(recorded)}}}))
    assert training_file(model, test, None) == recorded
    assert training_file(model, test, tmp_path / "given.csv") == tmp_path / "given.csv"


def test_evaluate_scores_the_baseline_and_the_gate_refuses_a_model_it_beats(project, tiny_classifier):
    """The tiny random classifier is at chance; a baseline fitted on learnable rows is not: refused, both shown."""
    from tuneloop.demo import INTENTS

    labels = list(INTENTS)[:3]
    rows = lambda n, off: "text,label\n" + "".join(  # noqa: E731
        f"{word} please help with my {label.replace('_', ' ')} number {i + off},{label}\n"
        for label in labels
        for i, word in enumerate(["hello", "hi", "hey", "yo"] * n)
    )
    train = write(project / "d" / "train.csv", rows(6, 0))
    test = write(project / "d" / "test.csv", rows(3, 1000))
    params = load_params(REPO / "params.yaml", [*LOOSE_GATE, "gate.min_baseline_margin=0.01"])
    report = evaluate(params, tiny_classifier, test, project / "eval", behaviour_file="", train_path=train)
    assert report.baseline is not None and report.baseline.train_rows == 72 and report.baseline.analyzer == "word"
    assert report.baseline.macro_f1 == pytest.approx(1.0)  # the label's words are in every text
    # all of it round-trips but this run's fit time, which baseline.json (a DVC output) leaves out
    assert report.baseline.fit_seconds > 0
    assert EvalReport.load(project / "eval").baseline == report.baseline.model_copy(update={"fit_seconds": None})
    predictions = pd.read_csv(project / "eval" / "predictions.csv")
    assert list(predictions.columns)[-1] == "baseline_predicted" and len(predictions) == 36
    verdict = run_gate(params, tiny_classifier, project / "eval", test)
    checks = {c.name: c for c in verdict.checks}
    assert not checks["beats_baseline"].passed and checks["beats_baseline"].value < 0
    markdown = render_markdown(verdict)
    assert "baseline (TF-IDF word n-grams + LinearSVC) | 1.0000" in markdown and "| challenger |" in markdown
