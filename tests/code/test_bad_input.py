"""Every bad input of the foundation issue: non-zero exit, one readable message, no traceback,
nothing partial left behind."""

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import labeled_csv, write

RAW = Path("data/raw/corpus.csv")

# name -> (file name, content, words the message must contain)
IMPORT_CASES = {
    "missing file": ("absent.csv", None, ["absent.csv", "file not found"]),
    "unknown extension": ("data.xlsx", "text,label\nhi,a\n", ["data.xlsx", "unknown extension '.xlsx'", ".jsonl"]),
    "empty file": ("empty.csv", "", ["empty.csv", "file is empty"]),
    "header only": ("header.csv", "text,label\n", ["header.csv", "no data rows"]),
    "missing text column": ("notext.csv", "body,label\nhi,a\n", ["no text column 'text'", "body, label", "--text-col"]),
    "missing label column": ("nolabel.csv", "text,intent\nhi,a\n", ["no label column 'label'", "--label-col"]),
    "broken quote": ("quote.csv", 'text,label\nfine,a\n"never closed,b\nmore,c\n', ["quote.csv", "broken quote", '""']),
    "non-UTF-8 bytes": (
        "latin.csv",
        b"text,label\ncaf\xe9 au lait,a\n",
        ["latin.csv", "line 2", "not valid UTF-8", "iconv"],
    ),
    "label column entirely null": ("nulls.csv", "text,label\nhi,\nthere,\n", ["label column", "empty in all 2 rows"]),
    "bad JSONL line": (
        "rows.jsonl",
        '{"text": "hi", "label": "a"}\n{"text": oops}\n',
        ["rows.jsonl", "line 2", "not valid JSON"],
    ),
    # a nested value used to be written as its Python repr ("{'a': 'hi'}") and trained on
    "nested JSON text": (
        "nested.jsonl",
        '{"text": "hi", "label": "a"}\n{"text": {"a": "hi"}, "label": "b"}\n',
        ["nested.jsonl", "row 2", "the text is an object", "one string"],
    ),
    "JSON list label": ("list.jsonl", '{"text": "hi", "label": ["a", "b"]}\n', ["row 1", "the label is a list"]),
    # pandas-style renaming made the second 'text' column 'text.1' and took the first without a word
    "spaces around a column name": (
        "spaced.csv",
        "text , label\nhi,a\n",
        ["no text column 'text'", "'text ', ' label'", "white space around the name"],
    ),
    "text column twice": ("twice.csv", "text,label,text\nhi,a,other\n", ["'text' more than once", "ambiguous"]),
    "damaged UTF-16": ("wide.csv", "text,label\nhi,a\n".encode("utf-16") + b"\x00\xd8", ["not valid UTF-16"]),
}


def _leftovers(root: Path) -> list[Path]:
    return [p for p in (root / "data").rglob("*") if p.is_file()] if (root / "data").exists() else []


@pytest.mark.parametrize("case", list(IMPORT_CASES))
def test_import_rejects_bad_input_cleanly(project, cli, case):
    name, content, words = IMPORT_CASES[case]
    if content is not None:
        write(project / name, content)
    result = cli("data", "import", name)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error:")
    for word in words:
        assert word in result.stderr, f"{word!r} missing from: {result.stderr}"
    assert _leftovers(project) == []  # no raw file, no temp file, no data.dvc update


@pytest.mark.parametrize("case", ["missing file", "header only", "broken quote", "label column entirely null"])
def test_validate_rejects_unreadable_input_cleanly(project, cli, case):
    name, content, words = IMPORT_CASES[case]
    if content is not None:
        write(project / name, content)
    result = cli("data", "validate", name, "--out", "data/validated", "--report", "reports/v")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert all(word in result.stderr for word in words)
    assert not Path("data/validated/valid.csv").exists()


def test_class_below_minimum_fails_naming_the_class(project, cli):
    content = labeled_csv(6, ("a", "b")) + "lonely one,c\nlonely two,c\n"
    write(project / "small.csv", content)
    result = cli("data", "validate", "small.csv", "--out", "data/validated", "--report", "reports/v")
    assert result.exit_code == 1
    assert "min_rows_per_class: 2 rows" in result.stderr
    assert "class 'c' has 2 rows, needs 5" in result.stderr
    assert "Traceback" not in result.output
    assert not Path("data/validated/valid.csv").exists()
    assert Path("reports/v/report.md").exists()  # the report says why


def test_one_megabyte_text_fails_naming_row_and_setting(project, cli):
    content = labeled_csv(6) + f"{'x' * 1_048_576},a\n"
    write(project / "big.csv", content)
    result = cli("data", "validate", "big.csv", "--out", "data/validated")
    assert result.exit_code == 1
    assert "text_length: 1 rows (rows 19)" in result.stderr
    assert "1,048,576 characters" in result.stderr and "max_text_chars" in result.stderr
    assert not Path("data/validated/valid.csv").exists()


def test_non_utf8_in_validate_fails_by_policy_or_quarantines(project, cli):
    write(project / "enc.csv", labeled_csv(6).encode() + b"caf\xe9,a\n")
    failed = cli("data", "validate", "enc.csv", "--out", "data/validated")
    assert failed.exit_code == 1 and "encoding: 1 rows (rows 19)" in failed.stderr
    passed = cli(
        "data", "validate", "enc.csv", "--out", "data/validated", "--set", "validate.policy.encoding=quarantine"
    )
    assert passed.exit_code == 0, passed.output
    quarantined = pd.read_csv("data/validated/quarantine.csv")
    assert quarantined["row"].tolist() == [19]
    assert quarantined["reason"].str.contains("encoding").all()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_every_format_imports_to_the_same_canonical_file(project, cli, fmt):
    frame = pd.DataFrame(
        {
            "utterance": ["hello there", "NA", 'a, quoted "one"'],
            "intent": [1, 0, 1],
            "channel": ["chat", "app", "email"],
        }
    )
    src = project / f"in.{fmt}"
    {
        "csv": lambda: frame.to_csv(src, index=False),
        "tsv": lambda: frame.to_csv(src, sep="\t", index=False),
        "parquet": lambda: frame.to_parquet(src),
        "jsonl": lambda: frame.to_json(src, orient="records", lines=True),
    }[fmt]()
    result = cli("data", "import", src.name, "--text-col", "utterance", "--label-col", "intent", "--no-dvc")
    assert result.exit_code == 0, result.output
    assert RAW.read_text() == 'text,label,channel\nhello there,1,chat\nNA,0,app\n"a, quoted ""one""",1,email\n'


def _damage_tokenizer(folder: Path, how: str) -> None:
    """A tokenizer.json whose vocabulary lost [UNK] (valid JSON), or one the tokenizers library cannot parse; or
    (for the loaders' other failures) weights cut in half, or a config.json value of the wrong type."""
    import json

    if how == "truncated-weights":
        weights = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        return
    if how == "config-value":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"hidden_size": "big"}))
        return
    spec = json.loads((folder / "tokenizer.json").read_text())
    if how == "no-unk":
        spec["model"]["vocab"] = {t: i for t, i in spec["model"]["vocab"].items() if t != "[UNK]"}
    else:
        spec["model"]["vocab"] = ["not", "a", "map"]
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in ("[PAD]", "[CLS]", "[SEP]", "hello")))


@pytest.mark.parametrize("how", ["truncated-weights", "config-value"])
def test_a_damaged_base_model_is_one_message_naming_it(project, cli, tiny_model, tmp_path, how):
    """Truncated weights or a config value of the wrong type in train.base_model: train and pretrain stop with one
    line naming the folder and the fix (the loaders raised SafetensorError or a validation error, a traceback)."""
    import shutil

    base = Path(shutil.copytree(tiny_model, tmp_path / "base"))
    _damage_tokenizer(base, how)
    write(project / "in.csv", labeled_csv(8))
    trained = cli("train", "--train", "in.csv", "--val", "in.csv", "--out", "m", "--base", base, "--max-samples", 24)
    assert trained.exit_code == 1 and str(base) in trained.output and "save_pretrained" in trained.output
    pretrained = cli(
        "pretrain", "--train", "in.csv", "--val", "in.csv", "--out", "p", "--max-steps", 2,
        "--set", f"train.base_model={base}", "--set", "pretrain.enabled=true",
    )  # fmt: skip
    assert pretrained.exit_code == 1 and str(base) in pretrained.output and "save_pretrained" in pretrained.output


@pytest.mark.parametrize("how", ["no-unk", "unparseable"])
def test_a_damaged_tokenizer_is_one_message_naming_the_folder(project, cli, tiny_model, tmp_path, caplog, how):
    """A base model whose tokenizer files are damaged: train stops with one line naming the folder and the fix (the
    tokenizers library raised a bare Exception with a traceback at the first text); validate skips
    tokenizer_coverage with that reason. A model dir's loader (evaluate, serve): the next test."""
    import shutil

    from tuneloop.model import ModelError, load_tokenizer

    base = Path(shutil.copytree(tiny_model, tmp_path / "base"))
    _damage_tokenizer(base, how)
    with pytest.raises(ModelError, match=r"(?s)base: cannot read its tokenizer.*save_pretrained"):
        load_tokenizer(base)
    write(project / "in.csv", labeled_csv(8))
    trained = cli("train", "--train", "in.csv", "--val", "in.csv", "--out", "m", "--base", base, "--max-samples", 24)
    assert trained.exit_code == 1 and f"{base}: cannot read its tokenizer" in trained.output, trained.output
    checked = cli(
        "data", "validate", "in.csv", "--set", f"train.base_model={base}", "--set", "validate.min_rows_per_class=1"
    )
    assert checked.exit_code == 0, checked.output
    assert "tokenizer_coverage not checked" in caplog.text and "cannot read its tokenizer" in caplog.text


def test_a_model_dir_with_a_damaged_tokenizer_is_refused_on_load(tiny_classifier, tmp_path):
    import shutil

    from tuneloop.model import ModelError, load_classifier

    model = Path(shutil.copytree(tiny_classifier, tmp_path / "model"))
    _damage_tokenizer(model, "no-unk")
    with pytest.raises(ModelError, match="model: cannot read its tokenizer"):
        load_classifier(model)
    _damage_tokenizer(model, "config-value")
    with pytest.raises(ModelError, match="model: cannot load the model"):
        load_classifier(model)


@pytest.mark.parametrize("suffix", [".txt", ".csv"])
def test_extra_pretraining_text_that_is_not_utf8_is_one_message_naming_the_line(project, cli, tiny_model, suffix):
    """pretrain.extra_text read with the corpus' decoder: a Latin-1 byte on line 3 names the file, the line and
    the fix (it was a UnicodeDecodeError traceback); the same file in UTF-8 is read whole."""
    from tuneloop.pretrain import read_extra_text

    head = "text\n" if suffix == ".csv" else ""
    extra = write(project / f"extra{suffix}", (head + "first line\nsecond line\ncaf\xe9 au lait\n").encode("latin-1"))
    write(project / "in.csv", labeled_csv(8))
    ran = cli(
        "pretrain", "--train", "in.csv", "--val", "in.csv", "--out", "p", "--max-steps", 2,
        "--set", f"train.base_model={tiny_model}", "--set", "pretrain.enabled=true",
        "--set", f"pretrain.extra_text=[{extra.name}]",
    )  # fmt: skip
    line = 4 if suffix == ".csv" else 3
    assert ran.exit_code == 1 and f"extra{suffix}: line {line}" in ran.output and "UTF-8" in ran.output, ran.output
    write(project / f"extra{suffix}", head + "first line\nsecond line\ncafé au lait\n")
    assert read_extra_text(project / f"extra{suffix}") == ["first line", "second line", "café au lait"]


def test_a_loader_error_without_a_message_is_still_one_line(tiny_model, monkeypatch):
    """`str(exc).splitlines()[0]` raised IndexError on an exception with no message (an OSError() from a loader):
    every such message now goes through errors.first_line, which names the exception's type instead."""
    import transformers

    from tuneloop.model import ModelError
    from tuneloop.train import load_base_model

    def fail(*_args, **_kwargs):
        raise OSError()

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", fail)
    with pytest.raises(ModelError, match=r"cannot load base model '.*': OSError Offline"):
        load_base_model(str(tiny_model), ["a", "b"], seed=0)
