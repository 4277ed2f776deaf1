"""Reading and writing labeled tables (CSV, TSV, Parquet, JSONL) with errors a user can act on.

Every downstream file is a canonical UTF-8 CSV with the columns `text` and `label` first (other
columns, e.g. slices such as `channel`, ride along). Rows are numbered from 1, header excluded,
in every message and report.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pandas as pd

from tuneloop.errors import DataError

TEXT, LABEL = "text", "label"
FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
REPLACEMENT_CHAR = "\ufffd"


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
    if path.stat().st_size == 0:
        raise DataError(
            f"{path}: file is empty. It needs a header naming the '{text_col}' and '{label_col}' "
            "columns and at least one data row."
        )
    bad_lines: list[int] = []
    if fmt == "parquet":
        frame = _read_parquet(path)
    else:
        text, bad_lines = _decode(path, strict_encoding)
        frame = _read_jsonl(path, text) if fmt == "jsonl" else _read_delimited(path, text, fmt)
    if frame.empty:
        raise DataError(f"{path}: has a header but no data rows. Add rows of '{text_col}' and '{label_col}'.")
    frame = _canonical_columns(path, frame, text_col, label_col)
    return Table(frame=frame, path=path, bad_encoding_lines=bad_lines)


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


def _decode(path: Path, strict: bool) -> tuple[str, list[int]]:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        if strict:
            raise DataError(
                f"{path}: line {line} (byte {exc.start}) is not valid UTF-8 "
                f"(byte 0x{data[exc.start]:02x}). Re-encode the file as UTF-8, e.g. "
                f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`."
            ) from None
    text = data.decode("utf-8-sig", errors="replace")
    bad = [i + 1 for i, ln in enumerate(text.split("\n")) if REPLACEMENT_CHAR in ln]
    return text, bad


_C_ERROR = re.compile(r"(?:row|line) (\d+)")


def _read_delimited(path: Path, text: str, fmt: str) -> pd.DataFrame:
    sep = "\t" if fmt == "tsv" else ","
    try:
        # dtype=str and only empty cells as missing: a text "NA" or "null" is a real message.
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""], engine="c")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: no header row found. The first line must name the columns.") from None
    except pd.errors.ParserError as exc:
        msg = str(exc)
        if "EOF inside string" in msg:
            where = _C_ERROR.search(msg)
            line = _line_of_row(text, int(where.group(1))) if where else None
            at = f" near line {line}" if line else ""
            raise DataError(
                f"{path}: a quoted field opened{at} never closes (broken quote). Close the quote, "
                'or write a quote inside a field as two quotes ("").'
            ) from None
        raise DataError(
            f"{path}: cannot parse as {fmt.upper()}: {msg.strip()}. Quote fields that contain "
            f"the delimiter {sep!r}, or check that the file really is {fmt.upper()}."
        ) from None


def _line_of_row(text: str, row: int) -> int:
    # pandas counts rows from 0 including the header; quoted newlines make lines differ, so
    # report the physical line where that record starts as best we can: row + 1.
    return row + 1


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
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
        records.append(record)
    if not records:
        raise DataError(f"{path}: no JSON records. Each line must be one JSON object.")
    return pd.DataFrame.from_records(records)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc}). Re-export it.") from None


def _canonical_columns(path: Path, frame: pd.DataFrame, text_col: str, label_col: str) -> pd.DataFrame:
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    for role, col, flag in ((TEXT, text_col, "--text-col"), (LABEL, label_col, "--label-col")):
        if col not in columns:
            raise DataError(
                f"{path}: no {role} column '{col}' (columns found: {', '.join(columns)}). "
                f"Pass {flag} NAME to say which column holds the {role}."
            )
    if text_col == label_col:
        raise DataError(f"{path}: --text-col and --label-col are both '{text_col}'; they must differ.")
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
        frame[col] = values.map(lambda v: None if pd.isna(v) else str(v)).astype(object)
    rest = [c for c in frame.columns if c not in (TEXT, LABEL)]
    return frame[[TEXT, LABEL, *rest]].reset_index(drop=True)


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write `frame` as UTF-8 CSV so that a crash leaves the old file or the new one, never half."""
    return _atomic_write(path, lambda handle: frame.to_csv(handle, index=False, lineterminator="\n"))


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write a text file atomically (temp file in the same folder, then rename)."""
    return _atomic_write(path, lambda handle: handle.write(text))


def _atomic_write(path: str | Path, write: Callable[[IO[str]], object]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
