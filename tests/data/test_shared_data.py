"""Acceptance on real corpora from ../shared/data (read in place, never copied into the repo)."""

import pytest

from tests.conftest import SHARED_DATA


@pytest.mark.slow
@pytest.mark.parametrize("name", ["banking77", "sms_spam", "20newsgroups"])
def test_real_corpus_imports_and_validates(project, cli, name):
    source = SHARED_DATA / name / "train.csv"
    if not source.exists():
        pytest.skip(f"{source} is absent (set TUNELOOP_SHARED_DATA to the folder holding {name}/)")
    imported = cli("data", "import", str(source))
    assert imported.exit_code == 0, imported.output
    result = cli("data", "validate", "data/raw/corpus.csv", "--report", "reports/v", "--out", "data/validated")
    assert result.exit_code == 0, result.output
    assert "validation passed" in result.stdout
