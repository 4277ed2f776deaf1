"""Which logged predictions to label, and labels from a file recorded as feedback.

`queue` picks the predictions most worth a human label: every predicted class represented (its least
confident rows first), then the least confident of the rest; rows already labeled or logged without
text are never offered. `import_labels` records an annotated queue (or any CSV with `request_id` and
`label`) through the same checks as `POST /feedback` (tuneloop.serve.guard.feedback_pairs), all or
nothing: labels from either path are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tuneloop.errors import DataError
from tuneloop.tabular import is_missing, read_rows, refuse_repeated

QUEUE_COLUMNS = ["request_id", "text", "predicted", "confidence", "model_tag", "label"]


def pick(window: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to `n` unlabeled rows with text: the least confident of each predicted class, then the least confident."""
    candidates = window[window["true_label"].isna() & window["text"].notna()].sort_values("confidence", kind="stable")
    if candidates.empty or n <= 0:
        return candidates.head(0)
    per_class = max(1, n // max(candidates["predicted"].nunique(), 1) // 2)  # half the queue spreads over classes
    spread = candidates.groupby("predicted", sort=False).head(per_class)
    rest = candidates.drop(spread.index)
    chosen = pd.concat([spread.head(n), rest.head(max(n - len(spread), 0))])
    return chosen.sort_values("confidence", kind="stable")


QUEUE_WINDOW = 50_000  # predictions a queue picks from: the newest, not the whole log (read into memory)


def queue(
    out_path: str | Path, n: int, url: str | None = None, model_tag: str | None = None, window: int = QUEUE_WINDOW
) -> int:
    """Write the `n` predictions most worth a label among the newest `window` as a CSV for annotation; returns how
    many were written."""
    from tuneloop.predlog import read_window
    from tuneloop.tabular import write_csv_atomic

    chosen = pick(read_window(url, model_tag=model_tag, last=window), n)
    frame = chosen.assign(label="")[QUEUE_COLUMNS]
    write_csv_atomic(frame, out_path)
    return len(frame)


@dataclass(frozen=True)
class Imported:
    recorded: int
    skipped_blank: int  # queue rows the annotator left without a label
    new_labels: list[str]  # labels recorded that the model does not know (only with new_labels=True)


def import_labels(path: str | Path, labels: list[str], url: str | None = None, *, new_labels: bool = False) -> Imported:
    """Record `request_id,label` rows of a CSV as feedback, all or nothing (blank labels are skipped).

    `new_labels`: also accept labels outside `labels` (a class production showed that the model does
    not know; the retrain learns it and the gate accepts the larger label set, see gate.label_set_check).

    Raises:
        DataError: the file lacks the columns, a row fails the /feedback checks (named by row), or an id is unknown.
    """
    from tuneloop.predlog import PredictionLog, UnknownRequest, database_url, require_existing
    from tuneloop.serve.guard import feedback_pairs

    url = require_existing(url or database_url())  # labels for requests of a log that is not there: refused
    rows = _annotated(path)
    items = [{"request_id": r, "label": lab} for r, lab in rows if lab]
    pairs: list[tuple[str, str]] = []
    known = list(labels)  # and the new labels of earlier batches: one spelling per class across the file
    for start in range(0, len(items), 1000):  # the /feedback batch limit
        try:
            pairs += feedback_pairs({"items": items[start : start + 1000]}, known, new_labels=new_labels)
            known += sorted({label for _, label in pairs} - set(known))
        except ValueError as exc:
            raise DataError(f"{path}: rows from {start + 2}: {exc}. Fix the file; nothing was recorded.") from None
    log = PredictionLog(url)
    try:
        log.record_feedback_many(pairs, source="import")
    except UnknownRequest as exc:
        raise DataError(
            f"{path}: {exc}; use the request_id column of `tuneloop feedback queue` (nothing was recorded)."
        ) from None
    finally:
        log.close()
    added = sorted({label for _, label in pairs} - set(labels))
    return Imported(recorded=len(pairs), skipped_blank=len(rows) - len(items), new_labels=added)


def _annotated(path: str | Path) -> list[tuple[str, str]]:
    """(request_id, label) of each row; label '' where the annotator left it blank. The file is read as an
    import is (tuneloop.tabular.read_rows): CSV as a spreadsheet saves it (a UTF-8 byte-order mark, UTF-16
    "Unicode text"), TSV, JSONL or Parquet."""
    try:
        frame, _ = read_rows(path, ("request_id", "label"))
    except DataError as exc:
        if not Path(path).exists():
            raise DataError(f"{path}: not found. Write one with `tuneloop feedback queue --out {path}`.") from None
        raise exc
    frame.columns = [str(c).strip() for c in frame.columns]
    refuse_repeated(path, frame, {"request id": "request_id", "label": "label"})
    missing = {"request_id", "label"} - set(frame.columns)
    if missing:
        raise DataError(
            f"{path}: no {sorted(missing)} column(s); it needs request_id and label "
            f"(columns found: {list(frame.columns)[:8]})."
        )
    cells = [["" if is_missing(v) else str(v) for v in frame[col]] for col in ("request_id", "label")]
    return [(r.strip(), lab.strip()) for r, lab in zip(*cells, strict=True) if r.strip()]
