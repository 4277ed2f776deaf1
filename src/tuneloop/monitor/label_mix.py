"""The predicted-label mix undrifted traffic is expected to have, from the labels of the whole corpus.

The reference is the held-out rows (val + test) of a split that `tuneloop prepare` stratifies by label:
its true-label shares are the prepared data's to the rounding of a row per class, not a random sample of
a few hundred. A two-sample test that takes the reference for such a sample is conservative and weak:
simulated like the demo (360 reference rows of 1,800, tests/monitor/test_label_mix.py) it flagged 0.1%
of undrifted 200-row windows at a nominal 2%, and on the demo champion (bench/drift_power.py, 400 windows)
91% of the label-mix windows this test flags 98% of, both at 0.005. The expected mix here is the label
shares of the raw corpus as collected (`data.raw_path`: repeats included, since traffic repeats itself;
validation sets the copies aside and the prepared splits then under-count the labels whose texts repeat,
0.043 apart from undrifted demo traffic in total variation, which flagged 9% of its windows) carried
through the reference's confusion matrix (P(predicted | true), as black-box shift estimation does,
Lipton et al. 2018):

    q_k = sum_j pi_j C_jk

It is worth `rows` rows of evidence, from the two sources of its error: the corpus' own sampling
(pi_j: 1 / N) and the confusion matrix estimated on r_j reference rows per class
(var q_k = sum_j pi_j^2 C_jk (1 - C_jk) / r_j), matched on the total variance a multinomial sample of
`rows` rows would have. A class the reference lacks (too few rows to hold out) is taken as predicted as
itself; labels the model does not know (rows validation quarantines) are left out. Never worth fewer
rows than the reference holds.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

CORPUS_LABELS = "corpus_labels"  # the reference's metadata key: label -> rows of the raw corpus


@dataclass(frozen=True)
class LabelMix:
    """Expected predicted-label shares of undrifted traffic, worth `rows` rows of evidence."""

    shares: tuple[tuple[str, float], ...]
    rows: float
    corpus_rows: int

    def as_dict(self) -> dict[str, float]:
        return dict(self.shares)

    def key(self) -> str:
        """A short digest naming this mix (its registered Evidently stattest)."""
        blob = json.dumps([self.shares, round(self.rows, 3)]).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def describe(self) -> str:
        return (
            f"expected mix: the corpus' {self.corpus_rows} labels through the reference's confusion matrix, "
            f"worth {self.rows:.0f} rows"
        )


def corpus_label_counts(path: str | Path) -> dict[str, int]:
    """Rows per label of the raw corpus file (repeats included; rows without a label are not counted)."""
    from tuneloop.errors import DataError
    from tuneloop.tabular import LABEL, read_rows, refuse_repeated

    frame, _ = read_rows(path, (LABEL,))
    if LABEL not in frame.columns:
        raise DataError(
            f"{path}: no '{LABEL}' column (columns found: {', '.join(map(str, frame.columns))}). Pass the raw corpus "
            f"`tuneloop data import` writes (data.raw_path), whose columns are text and {LABEL}."
        )
    refuse_repeated(path, frame, {LABEL: LABEL})
    return dict(sorted(Counter(str(v) for v in frame[LABEL].dropna()).items()))


def expected_label_mix(reference: pd.DataFrame) -> LabelMix | None:
    """The mix for a reference registered with its corpus' label counts; None for one without (built from rows
    of any origin: the two-sample test then takes it for the sample it may be)."""
    settings = reference.attrs.get("tuneloop_reference", {})
    counts: Mapping[str, int] = settings.get(CORPUS_LABELS) or {}
    if not counts or reference.empty:
        return None
    known = {str(label) for label in settings.get("labels", [])}
    table = reference.groupby([reference["true_label"].astype(str), reference["predicted"].astype(str)]).size()
    held_out = table.groupby(level=0).sum()
    counts = {k: int(n) for k, n in counts.items() if n > 0 and (k in held_out.index or k in known)}
    total = sum(counts.values())
    if total == 0:
        return None
    shares: dict[str, float] = {}
    variance = 0.0
    for true, n in counts.items():
        weight = n / total
        if true not in held_out.index:
            shares[true] = shares.get(true, 0.0) + weight
            continue
        rows = table.loc[true]
        for predicted, m in rows.items():
            c = m / held_out[true]
            shares[str(predicted)] = shares.get(str(predicted), 0.0) + weight * c
            variance += weight**2 * c * (1 - c) / held_out[true]
    spread = sum(q * (1 - q) for q in shares.values())
    inverse = 1 / total + (variance / spread if spread > 0 else 0.0)
    return LabelMix(
        shares=tuple(sorted(shares.items())),
        rows=max(1 / inverse, float(len(reference))),
        corpus_rows=total,
    )
