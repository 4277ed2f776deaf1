"""Import keeps every byte: property tests of the round trip file -> `data import` -> raw corpus ->
the reader validate and prepare use, for every input format and line-ending style.

Texts are arbitrary Unicode (control characters, quotes, delimiters, NUL, U+2028/U+0085, BOM,
every line break) except the empty string: in CSV an empty cell is a missing value, so an empty
text reads back as missing in every format (validation's null_text/empty_text handle both).
Runs are derandomised and bounded so the suite stays fast and repeatable.
"""

from __future__ import annotations

import codecs
import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from tuneloop import ingest, prepare, validate
from tuneloop.config import load_params
from tuneloop.tabular import LABEL, TEXT, read_labeled, read_table
from tuneloop.text import normalize_text

# Characters that broke or could break a parser: delimiters, quotes, every line break Python or
# Unicode knows, NUL, BOM, other C0/C1 controls.
NASTY = list(",;\t\"'\r\n\x00\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029\ufeff\\ a\u00e9\u4e2d\U0001f600")
TEXTS = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(alphabet=st.sampled_from(NASTY), min_size=1, max_size=20),
    st.lists(st.sampled_from(["\r", "\n", "\r\n", '"', ",", "x", " "]), min_size=1, max_size=8).map("".join),
)
ROWS = st.lists(st.tuples(TEXTS, TEXTS), min_size=1, max_size=12)
FORMATS = ["csv", "tsv", "jsonl", "parquet"]
LINE_ENDINGS = ["\n", "\r\n", "\r"]
SETTINGS = settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _field(value: str, sep: str, quote_all: bool) -> str:
    if quote_all or any(c in value for c in (sep, '"', "\r", "\n")):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_input(rows: list[tuple[str, str]], fmt: str, ending: str, quote_all: bool, folder: Path) -> Path:
    """The rows as a user's file of format `fmt` with records ended by `ending`."""
    path = folder / f"input.{fmt}"
    if fmt == "parquet":
        pd.DataFrame(rows, columns=[TEXT, LABEL]).to_parquet(path)
    elif fmt == "jsonl":
        lines = [json.dumps({TEXT: t, LABEL: lab}, ensure_ascii=quote_all) for t, lab in rows]
        path.write_bytes(ending.join(lines).encode("utf-8") + ending.encode())
    else:
        sep = "\t" if fmt == "tsv" else ","
        lines = [sep.join(_field(v, sep, quote_all) for v in row) for row in [(TEXT, LABEL), *rows]]
        path.write_bytes((ending.join(lines) + ending).encode("utf-8"))
    return path


@SETTINGS
@given(
    rows=ROWS,
    fmt=st.sampled_from(FORMATS),
    ending=st.sampled_from(LINE_ENDINGS),
    quote_all=st.booleans(),
)
def test_import_round_trip_keeps_every_row_and_byte(rows, fmt, ending, quote_all):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_input(rows, fmt, ending, quote_all, folder)
        read = read_table(source).frame
        assert list(zip(read[TEXT], read[LABEL])) == rows
        raw = ingest.import_file(source, folder / "raw" / "corpus.csv", track=False)
        # validate reads with strict_encoding=False, prepare and train with the default: both here
        for strict in (True, False):
            back = read_table(raw, strict_encoding=strict).frame
            assert list(zip(back[TEXT], back[LABEL])) == rows


# What spreadsheets save as "Unicode text": UTF-16 with a byte-order mark (little-endian on Windows).
WIDE_ENCODINGS = {
    "utf-16-le": lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
    "utf-16-be": lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    "utf-32-le": lambda text: codecs.BOM_UTF32_LE + text.encode("utf-32-le"),
}


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    rows=ROWS,
    fmt=st.sampled_from(["csv", "tsv", "jsonl"]),
    ending=st.sampled_from(LINE_ENDINGS),
    encoding=st.sampled_from(sorted(WIDE_ENCODINGS)),
)
def test_utf16_and_utf32_files_with_a_byte_order_mark_import_byte_for_byte(rows, fmt, ending, encoding):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = write_input(rows, fmt, ending, True, folder)
        source.write_bytes(WIDE_ENCODINGS[encoding](source.read_bytes().decode("utf-8")))
        raw = ingest.import_file(source, folder / "raw" / "corpus.csv", track=False)
        back = read_table(raw).frame
        assert list(zip(back[TEXT], back[LABEL])) == rows


@pytest.mark.parametrize(
    "raw_bytes",
    [
        b'text,label\n"first\rstill first",a\nsecond,b\n',  # a bare CR inside quotes
        b'text,label\r"first\rstill first",a\rsecond,b\r',  # ... in a file with CR line ends
        b'text,label\r\n"first\r\nstill first",a\r\nsecond,b\r\n',
    ],
)
def test_bare_cr_inside_a_quoted_field_stays_one_row(tmp_path, raw_bytes):
    source = tmp_path / "in.csv"
    source.write_bytes(raw_bytes)
    raw = ingest.import_file(source, tmp_path / "raw" / "corpus.csv", track=False)
    frame = read_table(raw).frame
    first = raw_bytes.split(b'"')[1].decode()
    assert list(frame[TEXT]) == [first, "second"]
    assert list(frame[LABEL]) == ["a", "b"]


def test_jsonl_with_unicode_line_separators_inside_strings_is_accepted(tmp_path):
    texts = ["one\u2028two", "three\x85four", "five\u2029six", "tab\x0bvt\x0cff\x1cfs"]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t, "label": "x"}, ensure_ascii=False) + "\n" for t in texts))
    assert list(read_table(source).frame[TEXT]) == texts


def test_nul_inside_a_text_is_kept(tmp_path):
    # pandas' C parser ends a field at NUL, quoted or not: "a\x00b" came back as "a".
    source = tmp_path / "in.csv"
    source.write_bytes(b'text,label\na\x00b,x\n"c\x00d",y\n')
    assert list(read_table(source).frame[TEXT]) == ["a\x00b", "c\x00d"]


def test_jsonl_unpaired_surrogate_is_a_data_error(tmp_path):
    from tuneloop.errors import DataError

    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "ok", "label": "a"}\n{"text": "bad \\ud800", "label": "a"}\n')
    with pytest.raises(DataError, match=r"in\.jsonl: line 2 holds an unpaired surrogate"):
        read_table(source)


def test_csv_line_with_too_many_fields_names_the_line(tmp_path):
    from tuneloop.errors import DataError

    source = tmp_path / "in.csv"
    source.write_text("text,label\nfine,a\nnot, quoted,b\n")
    with pytest.raises(DataError, match=r"in\.csv: line 3 has 3 fields, the header has 2\. Quote fields"):
        read_table(source)


# ------------------------------------------------------------- validate -> prepare

LABELS = ("a", "b")


# No shrinking: every example runs the GX suite, and shrinking a failure took minutes.
@settings(
    max_examples=6,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.generate],
)
@given(texts=st.lists(TEXTS, min_size=1, max_size=40, unique=True))
def test_validate_keeps_texts_byte_identical_and_prepare_only_normalises(texts):
    """validate writes every text unchanged (kept or quarantined, by row); prepare applies exactly
    `normalize_text` (NFC, whitespace runs to one space, ends stripped) on purpose: what it writes
    is that of the validated text, nothing else."""
    params = load_params(REPO / "params.yaml", ["validate.policy.min_rows_per_class=quarantine"])
    # plain rows that always survive, so validation passes and prepare has two classes to split
    plain = [(f"plain message {label} {i}", label) for label in LABELS for i in range(6)]
    rows = [(t, LABELS[i % 2]) for i, t in enumerate(texts)] + plain
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raw = ingest.import_file(write_input(rows, "csv", "\r", False, folder), folder / "raw.csv", track=False)
        report = validate.validate_file(raw, params.validate_, [], out_dir=folder / "validated")
        kept = read_table(folder / "validated" / validate.VALID_FILE).frame
        quarantined = _read_maybe_empty(folder / "validated" / validate.QUARANTINE_FILE)
        assert len(kept) + len(quarantined) == len(rows) == report.rows_in
        by_row = {int(r): (t, lab) for r, t, lab in zip(quarantined["row"], quarantined[TEXT], quarantined[LABEL])}
        kept_rows = [r for r in range(1, len(rows) + 1) if r not in by_row]
        by_row.update(zip(kept_rows, zip(kept[TEXT], kept[LABEL])))
        assert [by_row[r] for r in range(1, len(rows) + 1)] == rows
        prepare.run(params, folder / "validated" / validate.VALID_FILE, folder / "prepared", None)
        prepared = pd.concat(read_labeled(folder / "prepared" / f"{s}.csv") for s in prepare.SPLITS)
        expected = {normalize_text(t) for t in kept[TEXT]}
        assert set(prepared[TEXT]) <= expected
        assert len(set(prepared[TEXT])) == len(expected)  # nothing but copies after normalising dropped


def _read_maybe_empty(path: Path) -> pd.DataFrame:
    """read_table, or an empty frame for a file holding only its header (no row was quarantined)."""
    if len(path.read_bytes().splitlines()) == 1:
        return pd.DataFrame({"row": [], TEXT: [], LABEL: []})
    return read_table(path).frame
