"""Validation stage: a Great Expectations suite, built in code, over a labeled table.

The core (`validate_table`) runs the suite on an ephemeral GX context and turns each expectation
result, looked up by the check name kept in its `meta`, into a `CheckResult`. Each check then
follows its policy from params.yaml: `fail` stops the run and nothing is written downstream;
`quarantine` sets the offending rows aside with a reason. Invariant (tested): rows in == rows
kept + rows quarantined; a row is never dropped silently.

Row-level expectations run first; the per-class minimum is checked second, on the rows that
survive quarantine, because that is what training will actually see.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop.config import ValidateParams, VocabParams
from tuneloop.errors import ValidationFailed
from tuneloop.predlog import MAX_LABEL_CHARS
from tuneloop.tabular import LABEL, REPLACEMENT_CHAR, TEXT, Table, write_csv_atomic, write_text_atomic
from tuneloop.text import label_key, normalize_text

log = logging.getLogger(__name__)

VALID_FILE, QUARANTINE_FILE = "valid.csv", "quarantine.csv"
# Helper columns the suite checks; computed here because "the earlier copy of this row" and
# "labels seen for this text" are relations between rows, which no single GX column
# expectation expresses. GX still evaluates them and reports the offending rows.
_DUP, _VARIANTS, _SPELLINGS = "_duplicate_of_row", "_labels_for_text", "_spellings_of_label"

# check name -> (what it means, how to fix it). The policy key in params.yaml is the check name.
CHECKS: dict[str, tuple[str, str, str]] = {
    # name: (what must hold, what a failing row is, how to fix it)
    "columns": ("text and label columns present", "column missing", "name the columns with --text-col/--label-col"),
    "null_text": ("text is not missing", "text is missing", "fill in the text or remove the row"),
    "empty_text": (
        "text is not empty after stripping whitespace",
        "text is blank",
        "fill in the text or remove the row",
    ),
    "text_length": (
        "text length within [min_text_chars, max_text_chars]",
        "text length out of bounds",
        "fix the row (a very long text is often a broken quote) or change "
        "validate.min_text_chars / validate.max_text_chars",
    ),
    "null_label": ("label is not missing", "label is missing", "label the row or remove it"),
    "unknown_label": (
        "label is in data.labels",
        "label not in data.labels",
        "add the label to data.labels in params.yaml or fix the rows",
    ),
    "duplicates": ("no second copy of the same text with the same label", "duplicate row", "remove the copies"),
    "conflicting_labels": (
        "the same text never carries two labels",
        "text carries several labels",
        "decide the right label and fix the rows",
    ),
    "encoding": (
        "text and label are valid UTF-8",
        "bytes that are not UTF-8",
        "re-encode the file as UTF-8 (e.g. with iconv)",
    ),
    "label_format": (
        f"label is 1..{MAX_LABEL_CHARS} characters, without control characters or spaces at its ends",
        "label malformed",
        "fix the label (a long one is often a text in the label column: check --text-col/--label-col; ' pos' "
        "and 'pos' would be two classes)",
    ),
    "label_spelling": (
        "no two labels differ only in case, white space, '_', '-' or '.'",
        "label spelt two ways",
        "decide the spelling and fix the rows (or list both in data.labels if they are different classes)",
    ),
    "min_rows_per_class": (
        "every class has at least min_rows_per_class rows",
        "class too small",
        "add examples, merge the class into another, or lower validate.min_rows_per_class",
    ),
    "tokenizer_coverage": (
        "train.base_model's tokenizer reads the corpus (few [UNK] tokens, few unrepresentable characters)",
        "text the tokenizer reads mostly as [UNK]",
        "set vocab.extend: true (adds the corpus' unreadable units to the vocabulary) and continue pre-training "
        "on your text (`tuneloop pretrain`, pretrain.enabled: true), or set train.base_model to a model made "
        "for this language",
    ),
}


@dataclass
class CheckResult:
    """One check's outcome: which rows broke it and what its policy does with them."""

    name: str
    expectation: str
    policy: str
    success: bool
    rows: list[int] = field(default_factory=list)  # 0-based positions in the table
    reasons: dict[int, str] = field(default_factory=dict)  # row position -> specific reason
    note: str = ""  # what a corpus-level check measured (tokenizer_coverage)

    @property
    def count(self) -> int:
        return len(self.rows)


@dataclass
class ValidationReport:
    """Everything `tuneloop data validate` learnt about one file."""

    source: str
    rows_in: int
    checks: dict[str, CheckResult]
    kept: pd.DataFrame
    quarantined: pd.DataFrame

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks.values() if not c.success and c.policy == "fail"]

    @property
    def passed(self) -> bool:
        return not self.failed and len(self.kept) > 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: counts, every check by name, up to five example rows each."""
        return {
            "source": self.source,
            "passed": self.passed,
            "rows_in": self.rows_in,
            "rows_kept": len(self.kept),
            "rows_quarantined": len(self.quarantined),
            "failed_checks": [c.name for c in self.failed],
            "classes": {str(k): int(v) for k, v in self.kept[LABEL].value_counts().sort_index().items()},
            "checks": {
                c.name: {
                    "expectation": c.expectation,
                    "description": CHECKS[c.name][0],
                    "policy": c.policy,
                    "success": c.success,
                    "unexpected_count": c.count,
                    "examples": self.examples(c),
                }
                | ({"measured": c.note} if c.note else {})
                for c in self.checks.values()
            },
        }

    def examples(self, check: CheckResult, limit: int = 5) -> list[dict[str, Any]]:
        frame = self._all_rows
        out = []
        for pos in check.rows[:limit]:
            text, label = frame.at[pos, TEXT], frame.at[pos, LABEL]
            out.append(
                {
                    "row": pos + 1,
                    "text": None if text is None else (text if len(text) <= 120 else text[:117] + "..."),
                    "label": label,
                    "reason": check.reasons.get(pos, CHECKS[check.name][1]),
                }
            )
        return out

    @property
    def _all_rows(self) -> pd.DataFrame:
        kept = self.kept.assign(_pos=self.kept.index)
        quarantined = self.quarantined.assign(_pos=self.quarantined["row"] - 1)
        return pd.concat([kept, quarantined]).set_index("_pos").sort_index()


def validate_table(
    table: Table, params: ValidateParams, labels: list[str], tokenizer: Any = None, vocab: VocabParams | None = None
) -> ValidationReport:
    """Run the GX suite over `table` and apply each check's policy.

    Args:
        table: the rows, as read by `tuneloop.tabular.read_table(strict_encoding=False)`.
        params: the `validate:` section of params.yaml.
        labels: the known label set (`data.labels`); empty = any label is allowed.
        tokenizer: train.base_model's tokenizer for the tokenizer_coverage check (None: not checked).
        vocab: the `vocab:` section; with `extend` on, coverage is judged after the planned extension.
    """
    frame = table.frame
    policy = params.policy.model_dump()
    checks = _run_row_suite(frame, params, labels, policy)
    quarantined_rows = {r for c in checks.values() if c.policy == "quarantine" for r in c.rows}
    survivors = frame.drop(index=sorted(quarantined_rows))
    checks["min_rows_per_class"] = _run_class_check(survivors, params, policy["min_rows_per_class"])
    if tokenizer is not None:
        checks["tokenizer_coverage"] = _run_coverage_check(survivors, params, tokenizer, vocab)
    kept, quarantined = _split(frame, checks)
    return ValidationReport(
        source=str(table.path), rows_in=len(frame), checks=checks, kept=kept, quarantined=quarantined
    )


def _gx_validate(frame: pd.DataFrame, expectations: list[Any]) -> dict[str, list[Any]]:
    """Validate `frame` against `expectations`; return the results grouped by meta['check']."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no usage reporting from CI/offline
    import great_expectations as gx  # heavy: imported only when validation runs
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("tuneloop")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name="tuneloop_labeled_text")
    for expectation in expectations:
        suite.add_expectation(expectation)
    result = batch.validate(suite, result_format="COMPLETE")
    grouped: dict[str, list[Any]] = {}
    for item in result.results:
        config = item.expectation_config
        assert config is not None and config.meta is not None  # every expectation here carries meta["check"]
        grouped.setdefault(config.meta["check"], []).append(item)
    return grouped


def _run_row_suite(
    frame: pd.DataFrame, params: ValidateParams, labels: list[str], policy: dict[str, str]
) -> dict[str, CheckResult]:
    import great_expectations.expectations as gxe

    rows = _with_relations(frame, labels)
    suite: list[Any] = [
        gxe.ExpectColumnToExist(column=TEXT, meta={"check": "columns"}),
        gxe.ExpectColumnToExist(column=LABEL, meta={"check": "columns"}),
        gxe.ExpectColumnValuesToNotBeNull(column=TEXT, meta={"check": "null_text"}),
        gxe.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=r"^\s*$", meta={"check": "empty_text"}),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column=TEXT, min_value=params.min_text_chars, max_value=params.max_text_chars, meta={"check": "text_length"}
        ),
        gxe.ExpectColumnValuesToNotBeNull(column=LABEL, meta={"check": "null_label"}),
        gxe.ExpectColumnValuesToBeNull(column=_DUP, meta={"check": "duplicates"}),
        gxe.ExpectColumnValuesToBeBetween(column=_VARIANTS, max_value=1, meta={"check": "conflicting_labels"}),
        gxe.ExpectColumnValuesToBeBetween(column=_SPELLINGS, max_value=1, meta={"check": "label_spelling"}),
        gxe.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=REPLACEMENT_CHAR, meta={"check": "encoding"}),
        gxe.ExpectColumnValuesToNotMatchRegex(column=LABEL, regex=REPLACEMENT_CHAR, meta={"check": "encoding"}),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column=LABEL, min_value=1, max_value=MAX_LABEL_CHARS, meta={"check": "label_format"}
        ),
        gxe.ExpectColumnValuesToNotMatchRegex(column=LABEL, regex=_MALFORMED_LABEL, meta={"check": "label_format"}),
    ]
    if labels:
        suite.append(gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=labels, meta={"check": "unknown_label"}))
    grouped = _gx_validate(rows, suite)
    checks: dict[str, CheckResult] = {}
    for name, results in grouped.items():
        bad = sorted({i for r in results for i in r.result.get("unexpected_index_list") or []})
        checks[name] = CheckResult(
            name=name,
            expectation=", ".join(dict.fromkeys(r.expectation_config.type for r in results)),
            policy="fail" if name == "columns" else policy[name],
            success=all(r.success for r in results),
            rows=bad,
            reasons=_reasons(name, bad, rows, params),
        )
    return checks


def _with_relations(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Add the row-relation helper columns the suite checks (duplicate-of, labels-per-text, spellings-per-label;
    labels listed in data.labels are distinct classes by decision, so they are not counted as spellings)."""
    rows = frame[[TEXT, LABEL]].copy()
    complete = rows[TEXT].notna() & rows[LABEL].notna()
    norm = rows.loc[complete, TEXT].map(normalize_text)
    keyed = pd.DataFrame({"norm": norm, LABEL: rows.loc[complete, LABEL]})
    first = keyed.reset_index().groupby(["norm", LABEL])["index"].transform("min")
    first.index = keyed.index
    rows[_DUP] = (first.where(first != keyed.index.to_series()) + 1).reindex(rows.index)
    rows[_VARIANTS] = keyed.groupby("norm")[LABEL].transform("nunique").reindex(rows.index)
    listed = set(labels)
    named = rows[LABEL].map(lambda v: isinstance(v, str) and v not in listed).astype(bool)
    spelt = pd.DataFrame({"key": rows.loc[named, LABEL].map(label_key), LABEL: rows.loc[named, LABEL]})
    rows[_SPELLINGS] = spelt.groupby("key")[LABEL].transform("nunique").reindex(rows.index)
    return rows


def _reasons(name: str, bad: list[int], rows: pd.DataFrame, params: ValidateParams) -> dict[int, str]:
    if name == "duplicates":
        return {i: f"duplicates: same text and label as row {int(rows.at[i, _DUP])}" for i in bad}
    if name == "text_length":
        return {
            i: f"text_length: {len(rows.at[i, TEXT]):,} characters, allowed "
            f"{params.min_text_chars}..{params.max_text_chars}"
            for i in bad
        }
    if name == "conflicting_labels":
        return {i: f"conflicting_labels: this text appears with {int(rows.at[i, _VARIANTS])} labels" for i in bad}
    if name == "label_format":
        return {i: f"label_format: {_label_problem(rows.at[i, LABEL])}" for i in bad}
    if name == "unknown_label":
        return {i: f"unknown_label: '{rows.at[i, LABEL]}' is not in data.labels" for i in bad}
    if name == "label_spelling":
        said = _spellings(rows.loc[bad, LABEL])
        return {i: f"label_spelling: {said[rows.at[i, LABEL]]}" for i in bad}
    return {i: f"{name}: {CHECKS[name][1]}" for i in bad}


def _spellings(flagged: pd.Series) -> dict[str, str]:
    """Each flagged label -> "'Card Lost' (3 rows) and 'card_lost' (120 rows) are one class name spelt 2 ways"."""
    counts = flagged.value_counts()
    by_key: dict[str, list[str]] = {}
    for name in sorted(counts.index):
        by_key.setdefault(label_key(name), []).append(name)
    said: dict[str, str] = {}
    for names in by_key.values():
        text = " and ".join(f"'{name}' ({counts[name]} rows)" for name in names)
        said |= dict.fromkeys(names, f"{text} are one class name spelt {len(names)} ways")
    return said


# Control characters (PostgreSQL cannot store NUL; a newline or tab in a class name breaks every report) and
# white space at either end (' pos' and 'pos' would be two classes).
_CONTROL = r"[\x00-\x1f\x7f-\x9f]"
_MALFORMED_LABEL = rf"{_CONTROL}|^\s|\s$"


def _label_problem(label: str) -> str:
    if len(label) > MAX_LABEL_CHARS:
        return f"{len(label):,} characters, at most {MAX_LABEL_CHARS} (the prediction log's label columns)"
    if re.search(_CONTROL, label):
        return "the label holds a control character (a newline, a tab, NUL ...)"
    return "white space at the start or end of the label"


def _run_class_check(survivors: pd.DataFrame, params: ValidateParams, policy: str) -> CheckResult:
    import great_expectations.expectations as gxe

    counts = survivors[LABEL].dropna().value_counts().sort_index()
    per_class = pd.DataFrame({LABEL: counts.index.astype(str), "rows": counts.to_numpy()})
    grouped = _gx_validate(
        per_class,
        [
            gxe.ExpectColumnValuesToBeBetween(
                column="rows", min_value=params.min_rows_per_class, meta={"check": "min_rows_per_class"}
            ),
        ],
    )
    (result,) = grouped["min_rows_per_class"]
    small = {
        per_class.at[i, LABEL]: int(per_class.at[i, "rows"]) for i in result.result.get("unexpected_index_list") or []
    }
    bad = sorted(survivors.index[survivors[LABEL].isin(list(small))])
    return CheckResult(
        name="min_rows_per_class",
        expectation=result.expectation_config.type,
        policy=policy,
        success=bool(result.success),
        rows=[int(i) for i in bad],
        reasons={
            int(i): f"min_rows_per_class: class '{survivors.at[i, LABEL]}' has "
            f"{small[survivors.at[i, LABEL]]} rows, needs {params.min_rows_per_class}"
            for i in bad
        },
    )


def _run_coverage_check(
    survivors: pd.DataFrame, params: ValidateParams, tokenizer: Any, vocab: VocabParams | None
) -> CheckResult:
    """Corpus-level: the [UNK] share overall and per text, and the share of unrepresentable characters."""
    import great_expectations.expectations as gxe

    texts = survivors[TEXT].dropna().astype(str)
    found, note = _measured_coverage(texts.tolist(), tokenizer, vocab)
    # One row per text: its [UNK] share, and its parts of the corpus' [UNK] tokens and unreadable characters,
    # whose column sums are the corpus-level shares GX bounds.
    per_text = pd.DataFrame(
        {
            "unk_share": found.unk_share_per_text,
            "unk_part": found.unk / max(found.tokens.sum(), 1),
            "char_part": found.unreadable / max(found.chars.sum(), 1),
        }
    )
    p, meta = params.tokenizer, {"check": "tokenizer_coverage"}
    suite = [
        gxe.ExpectColumnSumToBeBetween(column="unk_part", max_value=p.max_unk_share, meta=meta),
        gxe.ExpectColumnSumToBeBetween(column="char_part", max_value=p.max_unreadable_char_share, meta=meta),
        gxe.ExpectColumnValuesToBeBetween(
            column="unk_share", max_value=p.max_unk_share_per_text, mostly=1 - p.max_unreadable_texts, meta=meta
        ),
    ]
    results = _gx_validate(per_text, suite)["tokenizer_coverage"]
    bad = sorted({int(texts.index[i]) for r in results for i in r.result.get("unexpected_index_list") or []})
    shares = dict(zip(texts.index, found.unk_share_per_text, strict=True))
    note = (
        f"[UNK] share {found.unk_share:.1%} (max {p.max_unk_share:.0%}), unreadable characters "
        f"{found.unreadable_char_share:.1%} (max {p.max_unreadable_char_share:.0%}){note}; most frequent "
        f"unreadable: {''.join(found.unreadable_examples) or 'none'}"
    )
    success = all(r.success for r in results)  # under policy warn the CLI prints the note and the fix
    return CheckResult(
        name="tokenizer_coverage",
        expectation=", ".join(dict.fromkeys(r.expectation_config.type for r in results)),
        policy=params.policy.tokenizer_coverage,
        success=success,
        rows=bad,
        reasons={i: f"tokenizer_coverage: {shares[i]:.0%} of its tokens are [UNK]" for i in bad},
        note=note,
    )


def _measured_coverage(texts: list[str], tokenizer: Any, vocab: VocabParams | None) -> tuple[Any, str]:
    """Coverage by the tokenizer training will use: extended first when vocab.extend is on."""
    from tuneloop.vocab import coverage, extend, plan_extension

    if vocab is None or not vocab.extend:
        return coverage(tokenizer, texts), ""
    extension = plan_extension(tokenizer, texts, vocab.min_count, vocab.max_new_tokens)  # measures "before"
    extend(tokenizer, None, extension, [])
    note = (
        f" after vocab.extend adds {len(extension.units)} units (before: [UNK] share {extension.unk_share_before:.1%})"
    )
    return coverage(tokenizer, texts), note


def _split(frame: pd.DataFrame, checks: dict[str, CheckResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    reasons: dict[int, list[str]] = {}
    for check in checks.values():
        if check.policy != "quarantine":
            continue
        for row in check.rows:
            reasons.setdefault(row, []).append(check.reasons.get(row, check.name))
    bad = sorted(reasons)
    quarantined = frame.loc[bad].copy()
    quarantined.insert(0, "row", [i + 1 for i in bad])
    quarantined["reason"] = ["; ".join(reasons[i]) for i in bad]
    return frame.drop(index=bad), quarantined.reset_index(drop=True)


def render_markdown(report: ValidationReport) -> str:
    """A human-readable report naming each check, its policy, counts and example rows."""
    s = report.summary()
    verdict = "PASSED" if s["passed"] else "FAILED"
    lines = [
        f"# Validation report: `{s['source']}`",
        "",
        f"**{verdict}**: {s['rows_in']} rows in, {s['rows_kept']} kept, {s['rows_quarantined']} quarantined.",
        "",
        "| check | expectation | policy | result | rows |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for name, c in s["checks"].items():
        result = "pass" if c["success"] else {"fail": "FAIL", "warn": "WARN"}.get(c["policy"], "quarantined")
        lines.append(f"| {name} | `{c['expectation']}` | {c['policy']} | {result} | {c['unexpected_count']} |")
    for name, c in s["checks"].items():
        if c["success"]:
            continue
        lines += [
            "",
            f"## {name}: {c['unexpected_count']} rows ({c['policy']})",
            "",
            f"{c['description']}. Fix: {CHECKS[name][2]}.",
            "",
        ]
        lines += [f"Measured: {c['measured']}.", ""] if c.get("measured") else []
        for ex in c["examples"]:
            lines.append(
                f"- row {ex['row']}: {json.dumps(ex['text'], ensure_ascii=False)} [{ex['label']}]: {ex['reason']}"
            )
    if not s["rows_kept"]:
        lines += ["", "No rows are left after quarantine."]
    lines += ["", "## Classes kept", "", "| label | rows |", "| --- | ---: |"]
    lines += [f"| {k} | {v} |" for k, v in s["classes"].items()]
    return "\n".join(lines) + "\n"


def write_report(report: ValidationReport, out_dir: Path | None, report_dir: Path | None) -> None:
    """Write the report files and, only when validation passed, the kept and quarantined rows.

    On failure the previous valid/quarantine files are removed, so nothing stale feeds
    `prepare` (under DVC the stage fails and its outputs are not committed either).
    """
    if report_dir is not None:
        summary = report.summary()
        write_text_atomic(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", report_dir / "summary.json")
        write_text_atomic(render_markdown(report), report_dir / "report.md")
        metrics = {k: summary[k] for k in ("rows_in", "rows_kept", "rows_quarantined")}
        metrics["checks_failed"] = len(summary["failed_checks"])
        write_text_atomic(json.dumps(metrics, indent=2) + "\n", report_dir / "metrics.json")
    if out_dir is None:
        return
    if not report.passed:
        for name in (VALID_FILE, QUARANTINE_FILE):
            (out_dir / name).unlink(missing_ok=True)
        return
    write_csv_atomic(report.kept, out_dir / VALID_FILE)
    write_csv_atomic(report.quarantined, out_dir / QUARANTINE_FILE)


def failure_message(report: ValidationReport) -> str:
    """One readable message: which checks failed, how many rows, the first rows, the fix."""
    lines = [f"{report.source}: validation failed."]
    for check in report.failed:
        shown = ", ".join(str(r + 1) for r in check.rows[:5]) + (", ..." if check.count > 5 else "")
        first = check.reasons.get(check.rows[0], "") if check.rows else ""
        lines.append(f"  - {check.name}: {check.count} rows (rows {shown}); {check.note or first}.")
        other = "warn to go on anyway" if check.name == "tokenizer_coverage" else "quarantine to set those rows aside"
        lines.append(f"    Fix: {CHECKS[check.name][2]}, or set validate.policy.{check.name}: {other}.")
    if not report.failed and not len(report.kept):
        lines.append("  - every row was quarantined; nothing is left to train on. See the report.")
    return "\n".join(lines)


def validate_file(
    path: str | Path,
    params: ValidateParams,
    labels: list[str],
    *,
    text_col: str = TEXT,
    label_col: str = LABEL,
    out_dir: str | Path | None = None,
    report_dir: str | Path | None = None,
    base_model: str | None = None,
    vocab: VocabParams | None = None,
) -> ValidationReport:
    """Read, validate and write outputs for one file; raise `ValidationFailed` if a `fail` check broke.
    `base_model` (train.base_model) adds the tokenizer_coverage check, judged after `vocab`'s extension."""
    from tuneloop.tabular import read_table

    table = read_table(path, text_col, label_col, strict_encoding=False)
    tokenizer = None
    if base_model is not None:
        from tuneloop.vocab import coverage_tokenizer

        tokenizer = coverage_tokenizer(base_model)
    report = validate_table(table, params, labels, tokenizer, vocab)
    write_report(report, Path(out_dir) if out_dir else None, Path(report_dir) if report_dir else None)
    if not report.passed:
        raise ValidationFailed(failure_message(report))
    return report
