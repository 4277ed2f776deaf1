"""Data for a retrain: production rows that received feedback labels, merged into the raw corpus.

Production text is user input: the merged corpus becomes a new DVC data version (`data.dvc`, pushed
to the remote) and goes through validation like any import. Each row carries its `origin`
(`corpus` or `production`) and production rows their `request_id`, so a second retrain adds only
new feedback, prepare stratifies its split by label *and* origin (the test split holds out the same
share of production rows as of the corpus: the gate re-scores champion and challenger on the traffic
the platform now sees), and evaluate reports an `origin` slice that the gate judges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop.errors import DataError, first_line
from tuneloop.tabular import CORPUS, LABEL, ORIGIN, PRODUCTION, TEXT, is_missing, read_table, write_csv_atomic

log = logging.getLogger(__name__)

REQUEST_ID = "request_id"


@dataclass(frozen=True)
class Merge:
    """What a merge added to the raw corpus."""

    path: Path
    rows_before: int
    production_added: int
    production_total: int
    labeled_without_text: int  # feedback on rows logged with serve.store_text false: nothing to learn from
    production_relabeled: int = 0  # rows merged before whose newest feedback label differs: now that label

    @property
    def rows_after(self) -> int:
        return self.rows_before + self.production_added


def feedback_rows(url: str | None = None, *, model_tag: str | None = None, since: datetime | None = None) -> Any:
    """Logged predictions that received a feedback label: `text, label, origin, request_id` (+ how many had no text)."""
    from tuneloop.predlog import read_window

    labeled = read_window(url, model_tag=model_tag, since=since, labeled=True)  # not the whole log: labeled rows
    with_text = labeled[labeled["text"].notna() & (labeled["text"].astype(str).str.len() > 0)]
    rows = pd.DataFrame(
        {
            TEXT: with_text["text"].astype(str),
            LABEL: with_text["true_label"].astype(str),
            ORIGIN: PRODUCTION,
            REQUEST_ID: with_text["request_id"].astype(str),
        }
    )
    return rows.reset_index(drop=True), len(labeled) - len(with_text)


def merge_production(raw: pd.DataFrame, production: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """The raw corpus plus the production rows it does not hold yet (by request id), and the rows it holds
    relabeled where their newest feedback label says otherwise (an annotator's correction: the latest label
    wins, as everywhere else it is read); returns (corpus, rows added, rows relabeled). Pure."""
    base = raw.copy()
    if ORIGIN not in base.columns:
        base[ORIGIN] = CORPUS
    if REQUEST_ID not in base.columns:
        base[REQUEST_ID] = None
    latest = production.set_index(REQUEST_ID)[LABEL]
    ids = base[REQUEST_ID].map(lambda v: None if is_missing(v) else str(v))
    newer = ids.map(latest)  # NaN where the row is not a labeled production row
    relabel = newer.notna() & (newer != base[LABEL].astype(str))
    base.loc[relabel, LABEL] = newer[relabel]
    new = production[~production[REQUEST_ID].isin(set(ids.dropna()))]
    merged = pd.concat([base, new], ignore_index=True)
    first = [TEXT, LABEL]
    return merged[first + [c for c in merged.columns if c not in first]], len(new), int(relabel.sum())


def merge_feedback_into_raw(
    raw_path: str | Path, url: str | None = None, *, track: bool = True, push: bool = True
) -> Merge:
    """Append new labeled production rows to the raw corpus, then `dvc add` (a new data version) and push it.

    Raises:
        DataError: the raw corpus is missing (import one first).
    """
    raw_path = Path(raw_path)
    if not raw_path.is_file():
        raise DataError(f"{raw_path}: no raw corpus to merge feedback into. Import one with `tuneloop data import`.")
    production, without_text = feedback_rows(url)
    raw = read_table(raw_path).frame
    merged, added, relabeled = merge_production(raw, production)
    result = Merge(raw_path, len(raw), added, int((merged[ORIGIN] == PRODUCTION).sum()), without_text, relabeled)
    if added or relabeled:
        write_csv_atomic(merged, raw_path)
        log.info(
            "merged %d labeled production rows into %s (%d rows now), relabeled %d merged before",
            added,
            raw_path,
            result.rows_after,
            relabeled,
        )
    else:
        log.info("no new or corrected labeled production rows: %s unchanged", raw_path)
    if track:  # unchanged too: a run killed after writing the corpus left data.dvc behind it (`dvc add` is a no-op)
        from tuneloop.ingest import dvc_track, find_dvc_root
        from tuneloop.provenance import DATA_DVC

        root = find_dvc_root(raw_path)
        before = _read_if_there(root / DATA_DVC)
        if dvc_track(root, raw_path.resolve().parent).read_text(encoding="utf-8") != before and push:
            _push(root)  # a new data version only: an unchanged one needs no remote (nor fails on one that is down)
    return result


def _read_if_there(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _push(root: Path) -> None:
    """`dvc push data.dvc` to the default remote; a project without a remote is told how to add one."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    from tuneloop.ingest import quiet_dvc
    from tuneloop.provenance import DATA_DVC

    try:
        with quiet_dvc(), Repo(str(root)) as repo:
            repo.push(targets=[str(root / DATA_DVC)])
    except DvcException as exc:
        raise DataError(
            f"dvc push of the merged corpus failed ({first_line(exc)}). Configure a DVC remote "
            "(`dvc remote add -d NAME URL`) or retrain with push disabled."
        ) from None
