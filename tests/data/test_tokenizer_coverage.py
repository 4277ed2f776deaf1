"""Validation's tokenizer_coverage check: it fires on text the base vocabulary cannot read and not on text it
can, warns or fails per policy with the fix named, and judges the extended vocabulary when vocab.extend is on."""

import json

from tests.conftest import REPO, write
from tuneloop.config import load_params
from tuneloop.tabular import read_table
from tuneloop.validate import validate_table

CHINESE = [
    ("国足主场两球击败对手晋级", "sport"), ("篮球联赛总决赛今晚开打", "sport"), ("足球明星宣布退役告别", "sport"),
    ("央行宣布下调存款准备金率", "money"), ("股市收盘大涨成交额创新高", "money"), ("银行理财产品收益下降", "money"),
] * 3  # every character occurs three times: vocab.extend (min_count 2) can add each
ENGLISH = [("I lost my card yesterday", "card"), ("my card never arrived", "card"), ("top up failed again", "top_up"),
           ("how do I top up by bank transfer", "top_up"), ("card payment was declined", "card"),
           ("the top up is still pending", "top_up")]


def _csv(path, rows):
    return write(path, "text,label\n" + "".join(f"{t} {i},{label}\n" for i, (t, label) in enumerate(rows)))


def _check(project, rows, tokenizer, overrides=()):
    from transformers import AutoTokenizer

    params = load_params(REPO / "params.yaml", ["validate.min_rows_per_class=1", *overrides])
    table = read_table(_csv(project / "d.csv", rows), strict_encoding=False)
    report = validate_table(table, params.validate_, [], AutoTokenizer.from_pretrained(tokenizer), params.vocab)
    return report, report.checks["tokenizer_coverage"]


def test_fires_on_text_the_vocabulary_cannot_read(project, tiny_model):
    report, check = _check(project, CHINESE, tiny_model)
    assert not check.success and check.policy == "warn" and report.passed  # warn: the run goes on
    assert check.count == len(CHINESE)  # every title reads mostly as [UNK]
    assert "[UNK] share" in check.note and "unreadable characters" in check.note
    assert len(report.kept) == len(CHINESE)  # a corpus-level check sets no row aside


def test_quiet_on_text_it_can_read(project, tiny_model):
    _, check = _check(project, ENGLISH, tiny_model)
    assert check.success and check.count == 0 and "[UNK] share 0.0%" in check.note


def test_extended_vocabulary_is_what_is_judged(project, tiny_model):
    _, check = _check(project, CHINESE, tiny_model, ["vocab.extend=true"])
    assert check.success, check.note
    assert "after vocab.extend adds" in check.note and "before: [UNK] share" in check.note


def test_policy_fail_stops_the_cli_with_the_fix(project, cli, tiny_model):
    _csv(project / "zh.csv", CHINESE)
    base = f"train.base_model={tiny_model}"
    warned = cli("data", "validate", "zh.csv", "--report", "rep", "--set", "validate.min_rows_per_class=1",
                 "--set", base)
    assert warned.exit_code == 0 and "tokenizer_coverage" in warned.output and "vocab.extend: true" in warned.output
    summary = json.loads((project / "rep" / "summary.json").read_text())
    assert summary["checks"]["tokenizer_coverage"]["success"] is False and summary["passed"] is True
    failed = cli("data", "validate", "zh.csv", "--set", "validate.min_rows_per_class=1", "--set", base,
                 "--set", "validate.policy.tokenizer_coverage=fail")
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "tuneloop pretrain" in failed.output and "validate.policy.tokenizer_coverage: warn" in failed.output
