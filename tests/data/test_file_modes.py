"""Files the platform writes get the permissions open() would give them (0666 less the umask),
not mkstemp's 0600: the imported corpus and the validation reports among them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.conftest import labeled_csv, write


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one after."""
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_imported_corpus_and_reports_follow_the_umask(project, cli, umask, mask):
    umask(mask)
    write(project / "in.csv", labeled_csv())
    assert cli("data", "import", "in.csv").exit_code == 0
    assert cli("data", "validate", "data/raw/corpus.csv", "--out", "data/validated", "--report", "r").exit_code == 0
    written = [
        project / "data" / "raw" / "corpus.csv",
        project / "data" / "validated" / "valid.csv",
        project / "r" / "summary.json",
        project / "r" / "report.md",
    ]
    for path in written:
        assert _mode(path) == 0o666 & ~mask, f"{path}: {oct(_mode(path))}"
    assert not list((project / "data" / "raw").glob(".*.tmp"))  # no temp file left behind
