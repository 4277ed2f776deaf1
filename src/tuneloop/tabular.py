"""Reading and writing labeled tables (CSV, TSV, Parquet, JSONL) with errors a user can act on.

Every downstream file is a canonical UTF-8 CSV with the columns `text` and `label` first (other
columns, e.g. slices such as `channel`, ride along). Rows are numbered from 1, header excluded,
in every message and report.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from tuneloop.errors import DataError

TEXT, LABEL = "text", "label"
ORIGIN = "origin"  # where a row came from: corpus, or production feedback merged by tuneloop.retrain
CORPUS, PRODUCTION = "corpus", "production"  # the values of ORIGIN
AUGMENTED = "augmented"  # ORIGIN of train rows that prepare.augment made from other train rows
FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
REPLACEMENT_CHAR = "\ufffd"
REPEATED = "tuneloop_repeated_columns"  # frame.attrs key: header names a delimited file holds more than once


@dataclass
class Table:
    """A table read from a file, with canonical `text`/`label` columns.

    Attributes:
        frame: the rows, `text` and `label` first; missing cells are None.
        path: where it came from.
        bad_encoding_lines: 1-based physical lines that held bytes which are not UTF-8 (only
            when read with `strict_encoding=False`; those bytes became U+FFFD).
    """

    frame: pd.DataFrame
    path: Path
    bad_encoding_lines: list[int] = field(default_factory=list)


def read_table(
    path: str | Path, text_col: str = TEXT, label_col: str = LABEL, *, strict_encoding: bool = True
) -> Table:
    """Read a labeled file and rename its text/label columns to `text`/`label`.

    Args:
        path: a .csv, .tsv, .parquet or .jsonl file.
        text_col: the column holding the text.
        label_col: the column holding the label.
        strict_encoding: raise on bytes that are not UTF-8; otherwise replace them with U+FFFD
            and report the lines (validation then decides per its `encoding` policy).

    Raises:
        DataError: naming the file, the line or column, and the fix.
    """
    path = Path(path)
    frame, bad_lines = read_rows(path, (text_col, label_col), strict_encoding=strict_encoding)
    frame = _canonical_columns(path, frame, text_col, label_col)
    return Table(frame=frame, path=path, bad_encoding_lines=bad_lines)


def read_rows(
    path: str | Path, columns: tuple[str, ...], *, strict_encoding: bool = True
) -> tuple[pd.DataFrame, list[int]]:
    """The rows of a .csv, .tsv, .parquet or .jsonl file as they are (delimited cells as strings, an empty
    cell missing), and the lines that held bytes which are not UTF-8 (see `read_table`). `columns` are the
    ones the caller needs, named in the messages about an empty file.

    Raises:
        DataError: naming the file, the line, and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found. Check the path (relative paths start at {Path.cwd()}).")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; pass a file (.csv, .tsv, .parquet or .jsonl).")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unknown extension '{path.suffix or '(none)'}'. Supported: "
            f"{', '.join(sorted(FORMATS))}. Convert the file or rename it to match its format."
        )
    named = " and ".join(f"'{c}'" for c in columns)
    if path.stat().st_size == 0:
        raise DataError(
            f"{path}: file is empty. It needs a header naming the {named} columns and at least one data row."
        )
    bad_lines: list[int] = []
    if fmt == "parquet":
        frame = _read_parquet(path)
    else:
        text, bad_lines = decode_file(path, strict_encoding)
        frame = _read_jsonl(path, text) if fmt == "jsonl" else _read_delimited(path, text, fmt)
    if frame.empty:
        raise DataError(f"{path}: has a header but no data rows. Add rows of {named}.")
    return frame, bad_lines


def read_labeled(path: str | Path) -> pd.DataFrame:
    """A prepared file for training or scoring: every row must have a text and a label.

    Raises:
        DataError: naming the first rows that lack one (validation quarantines such rows).
    """
    frame = read_table(path).frame
    incomplete = frame[frame[TEXT].isna() | frame[LABEL].isna()]
    if len(incomplete):
        raise DataError(
            f"{path}: rows {', '.join(str(i + 1) for i in incomplete.index[:5])} have no text or "
            "no label. Run `tuneloop data validate` first, it quarantines such rows."
        )
    return frame


def decode_file(path: Path, strict: bool) -> tuple[str, list[int]]:
    """A text file's content (UTF-8, or what its byte-order mark says) and the lines that held undecodable bytes;
    `strict`: a DataError naming the line, the byte and the fix instead."""
    data = path.read_bytes()
    encoding = _bom_encoding(data)
    try:
        return data.decode(encoding), []
    except UnicodeDecodeError as exc:
        if strict:
            line = data[: exc.start].decode(encoding, errors="replace").count("\n") + 1
            shown = "UTF-8" if encoding == "utf-8-sig" else f"{encoding.upper()} (its byte-order mark says so)"
            fix = (
                f"Re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`."
                if encoding == "utf-8-sig"
                else "The file is damaged or cut short: export it again (UTF-8 preferred)."
            )
            raise DataError(
                f"{path}: line {line} (byte {exc.start}) is not valid {shown} (byte 0x{data[exc.start]:02x}). {fix}"
            ) from None
    text = data.decode(encoding, errors="replace")
    bad = [i + 1 for i, ln in enumerate(text.split("\n")) if REPLACEMENT_CHAR in ln]
    return text, bad


# Spreadsheets save "Unicode text" as UTF-16 with a byte-order mark; a mark says the encoding for certain.
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose mark is its first two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _bom_encoding(data: bytes) -> str:
    """UTF-16 or UTF-32 when the bytes start with that byte-order mark; else UTF-8 (a UTF-8 mark skipped)."""
    return next((encoding for bom, encoding in _WIDE_BOMS if data.startswith(bom)), "utf-8-sig")


def _read_delimited(path: Path, text: str, fmt: str) -> pd.DataFrame:
    """Parse CSV/TSV with the csv module: every cell a string, an empty cell missing.

    Not pandas' C parser: it ends a field at a NUL byte, even inside quotes, and so cuts texts short
    without a word. Records end at \n, \r\n or a bare \r, unless quoted; nothing else splits them.
    """
    sep = "\t" if fmt == "tsv" else ","
    csv.field_size_limit(2**31 - 1)  # the default 128 KiB cap is not ours to set: text_length judges length
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            raise DataError(f"{path}: no header row found. The first line must name the columns.")
        width = len(header)
        rows = []
        for row in reader:
            if len(row) > width:
                raise DataError(
                    f"{path}: line {reader.line_num} has {len(row)} fields, the header has {width}. Quote "
                    f"fields that contain the delimiter {sep!r}, or check that the file really is {fmt.upper()}."
                )
            if row:  # a blank line is no record
                rows.append([cell if cell != "" else None for cell in row] + [None] * (width - len(row)))
    except csv.Error as exc:
        raise DataError(_quote_problem(path, reader.line_num, str(exc))) from None
    frame = pd.DataFrame(rows, columns=_unique_names(header), dtype=object)
    frame.attrs[REPEATED] = sorted({name for name in header if name and header.count(name) > 1})
    return frame


def _quote_problem(path: Path, line: int, problem: str) -> str:
    if "unexpected end of data" in problem:
        return (
            f"{path}: a quoted field opened before line {line} never closes (broken quote). Close the "
            'quote, or write a quote inside a field as two quotes ("").'
        )
    return (
        f"{path}: line {line}: {problem} (a quote ends in the middle of a field). Quote the whole "
        'field, and write a quote inside a field as two quotes ("").'
    )


def _unique_names(header: list[str]) -> list[str]:
    """Column names as pandas would give them: a blank one `Unnamed: i`, a repeat `name.1`."""
    names: list[str] = []
    for i, name in enumerate(header):
        name = name or f"Unnamed: {i}"
        base, n = name, 0
        while name in names:
            n += 1
            name = f"{base}.{n}"
        names.append(name)
    return names


# JSON never holds a raw CR or LF inside a value (json.loads refuses control characters in
# strings), so these are the only record separators; str.splitlines would also split at U+2028,
# U+0085 and other characters a JSON string may contain as they are.
_JSONL_LINE_END = re.compile(r"\r\n|\r|\n")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    records = []
    for number, line in enumerate(_JSONL_LINE_END.split(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: line {number} is not valid JSON ({exc.msg}, column {exc.colno}). "
                "Each line must be one JSON object."
            ) from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is a JSON {type(record).__name__}, expected an object.")
        if _SURROGATE_ESCAPE.search(line) and not _encodable(record):
            raise DataError(
                f"{path}: line {number} holds an unpaired surrogate escape (e.g. \\ud800), which is no "
                "character and cannot be stored as UTF-8. Fix the exporting tool or remove the escape."
            )
        records.append(record)
    if not records:
        raise DataError(f"{path}: no JSON records. Each line must be one JSON object.")
    return pd.DataFrame.from_records(records)


def _encodable(record: dict[str, object]) -> bool:
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc}). Re-export it.") from None


def refuse_repeated(path: str | Path, frame: pd.DataFrame, roles: dict[str, str]) -> None:
    """A DataError when the header names a column the caller reads (role -> column name) more than once: pandas
    would read the first and rename the others `name.1`, so a second label column would be dropped unsaid.
    Names that became equal once the caller stripped them count too.
    """
    names = [str(c) for c in frame.columns]
    repeated = set(frame.attrs.get(REPEATED, [])) | {name for name in names if names.count(name) > 1}
    for role, col in roles.items():
        if col in repeated:
            raise DataError(
                f"{path}: the header names column '{col}' more than once, so which one holds the {role} is "
                "ambiguous. Rename or remove the other copies."
            )


def _canonical_columns(path: Path, frame: pd.DataFrame, text_col: str, label_col: str) -> pd.DataFrame:
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    for role, col, flag in ((TEXT, text_col, "--text-col"), (LABEL, label_col, "--label-col")):
        if col not in columns:
            spaced = [c for c in columns if c != c.strip() and c.strip() == col]
            fix = (
                f"The header has {spaced[0]!r}, with white space around the name: remove it from the header"
                if spaced
                else f"Pass {flag} NAME to say which column holds the {role}"
            )
            shown = ", ".join(repr(c) if c != c.strip() else c for c in columns)
            raise DataError(f"{path}: no {role} column '{col}' (columns found: {shown}). {fix}.")
    if text_col == label_col:
        raise DataError(f"{path}: --text-col and --label-col are both '{text_col}'; they must differ.")
    refuse_repeated(path, frame, {TEXT: text_col, LABEL: label_col})
    clash = [c for c in (TEXT, LABEL) if c in columns and c not in (text_col, label_col)]
    if clash:
        raise DataError(
            f"{path}: column '{clash[0]}' exists but is not the one named as text or label; "
            "rename it so it cannot be confused with the canonical column."
        )
    frame = frame.rename(columns={text_col: TEXT, label_col: LABEL})
    for col in (TEXT, LABEL):
        values = frame[col]
        if values.isna().all():
            raise DataError(
                f"{path}: the {col} column ('{text_col if col == TEXT else label_col}') is empty "
                f"in all {len(frame)} rows. Point {'--text-col' if col == TEXT else '--label-col'} "
                "at the right column or fill it."
            )
        # Labels are strings everywhere (0/1 in a Parquet int column becomes "0"/"1").
        cells = [_cell(path, col, row, value) for row, value in enumerate(values, start=1)]
        frame[col] = pd.Series(cells, index=frame.index, dtype=object)
    rest = [c for c in frame.columns if c not in (TEXT, LABEL)]
    return frame[[TEXT, LABEL, *rest]].reset_index(drop=True)


def _cell(path: Path, col: str, row: int, value: object) -> str | None:
    """One text or label cell as a string (None when missing). A nested value (a JSON object or array, a
    Parquet list) has no single string form: refused, never written as its Python repr."""
    if is_missing(value):
        return None
    if isinstance(value, bytes):  # a Parquet binary column
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(
                f"{path}: row {row}: the {col} is binary data that is not UTF-8 text. Store the {col} column "
                "as UTF-8 strings."
            ) from None
    if isinstance(value, dict | list | tuple | set | np.ndarray):
        kind = "an object" if isinstance(value, dict) else "a list"
        raise DataError(
            f"{path}: row {row}: the {col} is {kind}, not a single value. Give each row's {col} as one string "
            "(flatten or join the nested value first)."
        )
    return str(value)


def is_missing(value: object) -> bool:
    # Not pd.isna: on a list (a JSON array cell) it answers per element, and `if` on that raises.
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write `frame` as UTF-8 CSV so that a crash leaves the old file or the new one, never half.

    Records end in \n; a field holding \r, \n, a quote or a comma is quoted, so `read_table`
    gives back every text byte for byte (an empty text reads back as missing, as in any CSV).
    """
    return _atomic_write(path, lambda handle: frame.to_csv(_LFRecords(handle), index=False, lineterminator="\r\n"))


class _LFRecords:
    """A text handle that turns the csv writer's \r\n record ends into \n.

    Written with lineterminator="\n", the csv module leaves a field holding a bare \r unquoted,
    and every reader takes that \r for the end of the record (one text became two rows). With
    "\r\n" it quotes any field holding \r or \n; it hands each record to write() whole, so the
    last two characters of each call are the terminator.
    """

    def __init__(self, handle: IO[str]):
        self._handle = handle

    def write(self, record: str) -> int:
        return self._handle.write(record[:-2] + "\n" if record.endswith("\r\n") else record)

    def __iter__(self) -> Iterator[str]:  # pandas takes only objects with it for file-like
        return iter(())


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file atomically (temp file in the same folder, then rename)."""
    return _atomic_write(path, lambda handle: handle.write(text))


def _atomic_write(path: str | Path, write: Callable[[IO[str]], object]) -> Path:
    """Write through a temp file beside `path`, then rename it over `path`.

    The temp file is created with mode 0666 less the umask, as open() would (mkstemp's 0600 made
    the corpus and every report readable by their owner only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
