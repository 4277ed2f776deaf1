"""Cross-validation: folds are stratified, disjoint and cover every row; `tuneloop cv` fine-tunes K times on
one tokenisation and writes a typed report; too few rows of a class is one clear message."""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_TRAIN, sentiment_rows, write
from tuneloop.config import load_params
from tuneloop.cv import CvReport, check_folds, load_rows, publish_artifact, stratified_folds
from tuneloop.errors import DataError

# Imbalanced on purpose: 23 / 11 / 7 rows do not divide by 5, so proportions can only hold within a row.
LABELS = ["a"] * 23 + ["b"] * 11 + ["c"] * 7


def _counted(func, calls: Counter, name: str):
    def wrapper(*args, **kwargs):
        calls[name] += 1
        return func(*args, **kwargs)

    return wrapper


def test_folds_are_stratified_disjoint_and_cover_every_row():
    folds = stratified_folds(LABELS, 5, seed=42)
    assert len(folds) == 5
    held = [i for fold in folds for i in fold]
    assert sorted(held) == list(range(len(LABELS)))  # every row held out exactly once
    whole = Counter(LABELS)
    for fold in folds:
        counts = Counter(LABELS[i] for i in fold)
        for label, n in whole.items():
            expected = n * len(fold) / len(LABELS)
            assert abs(counts[label] - expected) <= 1, (label, counts, expected)


def test_folds_follow_the_seed():
    assert stratified_folds(LABELS, 5, seed=42) == stratified_folds(LABELS, 5, seed=42)
    assert stratified_folds(LABELS, 5, seed=42) != stratified_folds(LABELS, 5, seed=7)


@pytest.mark.parametrize(
    ("labels", "words", "absent"),
    [
        (["a"] * 9 + ["b"] * 3, ["'b' (3 rows)", "fewer rows than the 5 folds", "lower --folds to 3"], "'a'"),
        (["a"] * 9 + ["b"] * 1, ["'b' (1 rows)", "add rows of that class"], "lower --folds"),  # no K fixes it
    ],
)
def test_too_few_rows_of_a_class_names_class_count_and_fix(labels, words, absent):
    with pytest.raises(DataError) as caught:
        check_folds(labels, 5, "train.csv + val.csv")
    message = str(caught.value)
    assert message.startswith("train.csv + val.csv: ")
    assert all(w in message for w in words), message
    assert absent not in message


def test_a_sample_leaves_out_classes_too_rare_for_k_folds(tmp_path):
    rows = "text,label\n" + "".join(f"common {i},a\nother {i},b\n" for i in range(20)) + "rare one,c\nrare two,c\n"
    train, val = write(tmp_path / "train.csv", rows), write(tmp_path / "val.csv", "text,label\nagain,a\n")
    params = load_params(REPO / "params.yaml")
    with pytest.raises(DataError, match="'c' \\(2 rows\\)"):  # all rows: refused
        load_rows(params, train, val, 3)
    frame, labels = load_rows(params, train, val, 3, max_samples=30)  # a sample: its 2 rows of 'c' sit out
    assert len(frame) < 30 and set(frame["label"]) == {"a", "b"} and labels == ["a", "b"]  # sampled, then c removed


def test_cli_cross_validates_on_one_tokenisation(project, cli, tiny_model, monkeypatch):
    import tuneloop.train

    calls = Counter()
    for name in ("encode", "load_base_model"):
        real = getattr(tuneloop.train, name)
        monkeypatch.setattr(tuneloop.train, name, _counted(real, calls, name))
    train = write(project / "splits" / "train.csv", sentiment_rows(8, seed=0))
    val = write(project / "splits" / "val.csv", sentiment_rows(2, seed=1))
    overrides = [*TINY_TRAIN, f"train.base_model={tiny_model}", "train.eval_steps=2"]
    args = ["cv", "--folds", "3", "--train", train, "--val", val, "--out", "cvout", "--max-steps", "4"]
    result = cli(*args, *[a for o in overrides for a in ("--set", o)])
    assert result.exit_code == 0, result.output
    assert "cross-validated 3 folds of 30 rows" in result.stdout
    assert calls == {"encode": 1, "load_base_model": 1}  # tokenised once, loaded once, for all three folds

    report = CvReport.model_validate_json((project / "cvout" / "cv.json").read_text())
    assert report.folds == 3 and report.rows == 30 and report.labels == ["neg", "neu", "pos"]
    assert [f.fold for f in report.per_fold] == [1, 2, 3]
    assert sum(f.val_rows for f in report.per_fold) == 30  # every row scored once
    assert all(f.train_rows + f.val_rows == 30 and f.val_rows == 10 for f in report.per_fold)
    assert all(1 <= f.steps <= 4 and f.seconds > 0 and 0 <= f.ece <= 1 for f in report.per_fold)
    f1 = [f.macro_f1 for f in report.per_fold]
    assert report.summary.macro_f1.mean == pytest.approx(statistics.fmean(f1))
    assert report.summary.macro_f1.std == pytest.approx(statistics.stdev(f1))
    assert report.summary.steps.mean == pytest.approx(statistics.fmean(f.steps for f in report.per_fold))
    assert report.data["train"]["path"] == str(train)
    markdown = (project / "cvout" / "cv.md").read_text()
    assert "| 3 | 20 | 10 |" in markdown and f"{report.summary.macro_f1.mean:.4f} ± " in markdown
    assert not (project / "cvout.checkpoints").exists()


def test_cli_refuses_too_few_rows_of_a_class_without_traceback(project, cli):
    train = write(project / "t.csv", sentiment_rows(6) + "one rare text,rare\n")
    val = write(project / "v.csv", sentiment_rows(2, seed=1) + "another rare text,rare\n")
    result = cli("cv", "--folds", "3", "--train", train, "--val", val, "--out", "cvout")
    assert result.exit_code == 1
    assert "'rare' (2 rows)" in result.stderr and "lower --folds to 2" in result.stderr
    assert "Traceback" not in result.output
    assert not (project / "cvout").exists()


def test_artifact_only_inside_a_flow_run(monkeypatch):
    import prefect.artifacts
    import prefect.context

    published = []
    monkeypatch.setattr(prefect.artifacts, "create_markdown_artifact", lambda **kw: published.append(kw))
    assert publish_artifact("# cv") is False and published == []  # no flow run: nothing Prefect-related
    monkeypatch.setattr(prefect.context.FlowRunContext, "get", classmethod(lambda cls: object()))
    assert publish_artifact("# cv") is True
    assert published[0]["key"] == "cv-report" and published[0]["markdown"] == "# cv"
    assert "prefect" in sys.modules


def test_report_round_trips(tmp_path: Path):
    from tuneloop.cv import FoldResult, render_markdown, summarise

    folds = [
        FoldResult(fold=i, train_rows=8, val_rows=2, accuracy=a, macro_f1=a, loss=1 - a, ece=0.1, steps=3, seconds=1.0)
        for i, a in enumerate([0.5, 1.0], start=1)
    ]
    summary = summarise(folds)
    assert summary.accuracy.mean == 0.75 and summary.accuracy.std == pytest.approx(0.353553, abs=1e-6)
    assert summary.steps.std == 0.0
    report = CvReport(
        folds=2, rows=10, labels=["x", "y"], base_model="m", device="cpu", seed=1, max_steps=-1, data={},
        created_at="now", wall_time_s=2.0, per_fold=folds, summary=summary,
    )  # fmt: skip
    report.write(tmp_path)
    assert CvReport.model_validate_json((tmp_path / "cv.json").read_text()) == report
    assert (tmp_path / "cv.md").read_text() == render_markdown(report)
    assert "| **mean ± std** | | | 0.7500 ± 0.3536 |" in render_markdown(report)
