"""The Great Expectations suite: each check finds the right rows, policies route them, and no row
is ever lost (rows in == rows kept + rows quarantined)."""

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO
from tuneloop.config import load_params
from tuneloop.errors import ValidationFailed
from tuneloop.tabular import Table
from tuneloop.validate import validate_file, validate_table


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml").validate_


def _table(rows: list[tuple[object, object]]) -> Table:
    return Table(frame=pd.DataFrame(rows, columns=["text", "label"], dtype=object), path=Path("t.csv"))


def _base(n: int = 6) -> list[tuple[object, object]]:
    return [(f"message {i} for {c}", c) for c in ("a", "b") for i in range(n)]


def test_each_check_flags_exactly_its_rows(params):
    rows = _base() + [
        (None, "a"),  # 13 null_text
        ("   ", "a"),  # 14 empty_text
        ("message 0 for a", "a"),  # 15 duplicate of row 1
        ("  Message  0 for a ".replace("M", "m"), "a"),  # 16 duplicate after normalisation
        ("ambiguous", "a"),  # 17 conflicting
        ("ambiguous", "b"),  # 18 conflicting
        ("no label", None),  # 19 null_label
    ]
    report = validate_table(_table(rows), params, [])
    rows_of = {name: [r + 1 for r in c.rows] for name, c in report.checks.items()}
    assert rows_of["null_text"] == [13]
    assert rows_of["empty_text"] == [14]
    assert rows_of["duplicates"] == [15, 16]
    assert rows_of["conflicting_labels"] == [17, 18]
    assert rows_of["null_label"] == [19]
    assert report.checks["duplicates"].reasons[14] == "duplicates: same text and label as row 1"
    assert report.passed
    assert sorted(report.quarantined["row"]) == [13, 14, 15, 16, 17, 18, 19]
    assert len(report.kept) == 12


def test_one_class_name_spelt_two_ways_fails_naming_both_unless_data_labels_lists_both(params):
    names = ("a", "A", "b", "b_", "c-d", "Ｃ d", "e")  # case, a separator, full-width letters (NFKC) and a space
    rows = [(f"message {i} for {c}", c) for c in names for i in range(6)]
    report = validate_table(_table(rows), params, [])
    check = report.checks["label_spelling"]
    assert not report.passed and check.policy == "fail" and [r + 1 for r in check.rows] == list(range(1, 37))
    assert check.reasons[0] == "label_spelling: 'A' (6 rows) and 'a' (6 rows) are one class name spelt 2 ways"
    assert check.reasons[35] == "label_spelling: 'c-d' (6 rows) and 'Ｃ d' (6 rows) are one class name spelt 2 ways"
    assert validate_table(_table(rows), params, list(names)).checks["label_spelling"].success  # distinct by decision


def test_known_label_set_rejects_unknown_labels(params):
    rows = _base() + [("new thing", "zzz")]
    report = validate_table(_table(rows), params, ["a", "b"])
    assert [r + 1 for r in report.checks["unknown_label"].rows] == [13]
    assert not report.passed  # unknown_label policy is fail
    assert "unknown_label" not in validate_table(_table(_base()), params, []).checks


def test_malformed_labels_fail_naming_each_row_and_its_problem(params):
    """A label the prediction log cannot store (over 200 characters, NUL) or that splits a class in two (' b')."""
    bad = [("a text", "x" * 201), ("second text", "b\x00"), ("third text", " b"), ("fourth text", "b\nc")]
    report = validate_table(_table(_base() + bad), params, [])
    check = report.checks["label_format"]
    assert [r + 1 for r in check.rows] == [13, 14, 15, 16] and not report.passed
    assert check.reasons[12] == "label_format: 201 characters, at most 200 (the prediction log's label columns)"
    assert "control character" in check.reasons[13] and "control character" in check.reasons[15]
    assert check.reasons[14] == "label_format: white space at the start or end of the label"
    fine = [("a text", "x" * 200), ("another", "multi word label"), ("more", "zh 中文"), ("last", "comp.graphics")]
    assert validate_table(_table(_base() + fine), params, []).checks["label_format"].rows == []


@pytest.mark.parametrize("seed", range(5))
def test_invariant_rows_in_equals_kept_plus_quarantined(params, seed):
    rng = random.Random(seed)
    pool = ["hello", "Hello", "  hello ", "", "   ", None, "refund please", "x" * 50]
    rows = [
        (
            rng.choice(pool) if rng.random() < 0.4 else f"text {rng.randint(0, 40)}",
            rng.choice(["a", "b", "c", None]) if rng.random() < 0.1 else rng.choice(["a", "b", "c"]),
        )
        for _ in range(300)
    ]
    loose = params.model_copy(
        update={"policy": params.policy.model_copy(update={k: "quarantine" for k in params.policy.model_dump()})}
    )
    report = validate_table(_table(rows), loose, [])
    assert report.rows_in == 300
    assert len(report.kept) + len(report.quarantined) == 300
    all_rows = sorted([i + 1 for i in report.kept.index] + report.quarantined["row"].tolist())
    assert all_rows == list(range(1, 301))  # each row exactly once
    assert report.quarantined["reason"].str.len().min() > 0


def test_quarantine_policy_for_small_class_sets_its_rows_aside(params):
    rows = _base() + [("only one c", "c"), ("only two c", "c")]
    loose = params.model_copy(update={"policy": params.policy.model_copy(update={"min_rows_per_class": "quarantine"})})
    report = validate_table(_table(rows), loose, [])
    assert report.passed
    assert report.quarantined["label"].tolist() == ["c", "c"]
    assert report.quarantined["reason"].str.contains("class 'c' has 2 rows, needs 5").all()


def test_class_minimum_counts_rows_that_survive_quarantine(params):
    # 'b' has 6 rows but 2 are duplicates: 4 usable rows < 5.
    rows = [(f"a {i}", "a") for i in range(6)] + [(f"b {i % 4}", "b") for i in range(6)]
    report = validate_table(_table(rows), params, [])
    assert not report.checks["min_rows_per_class"].success
    assert not report.passed


def test_fail_policy_writes_report_but_nothing_downstream(params, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame(_base() + [("x" * 200, "a")], columns=["text", "label"]).to_csv(src, index=False)
    out = tmp_path / "validated"
    out.mkdir()
    (out / "valid.csv").write_text("stale")
    strict = params.model_copy(update={"max_text_chars": 100})
    with pytest.raises(ValidationFailed, match="text_length: 1 rows"):
        validate_file(src, strict, [], out_dir=out, report_dir=tmp_path / "report")
    assert not (out / "valid.csv").exists()  # the stale file cannot feed prepare
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["passed"] is False
    assert summary["failed_checks"] == ["text_length"]
    check = summary["checks"]["text_length"]
    assert check["expectation"] == "expect_column_value_lengths_to_be_between"
    assert check["unexpected_count"] == 1 and check["examples"][0]["row"] == 13
    assert "## text_length: 1 rows (fail)" in (tmp_path / "report" / "report.md").read_text()


def test_passing_run_writes_kept_and_quarantined_files(params, tmp_path):
    src = tmp_path / "in.csv"
    pd.DataFrame(_base() + [("message 1 for a", "a")], columns=["text", "label"]).to_csv(src, index=False)
    report = validate_file(src, params, [], out_dir=tmp_path / "v", report_dir=tmp_path / "r")
    kept = pd.read_csv(tmp_path / "v" / "valid.csv")
    quarantined = pd.read_csv(tmp_path / "v" / "quarantine.csv")
    assert len(kept) == 12 and quarantined["row"].tolist() == [13]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics == {"rows_in": 13, "rows_kept": 12, "rows_quarantined": 1, "checks_failed": 0}
    assert report.summary()["classes"] == {"a": 6, "b": 6}
