"""Training refuses what cannot be a classifier: fewer than two classes, in the file or in a
sample of it. Both fail before any model is loaded, so these tests are fast."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import TINY_TRAIN, write
from tuneloop.errors import DataError

SETS = [arg for s in TINY_TRAIN for arg in ("--set", s)]


def test_one_class_file_is_refused_naming_file_and_fix(project, cli, tiny_model):
    write(project / "train.csv", "text,label\n" + "".join(f"message {i},only\n" for i in range(20)))
    write(project / "val.csv", "text,label\nanother,only\nmore,only\n")
    args = ["--train", "train.csv", "--val", "val.csv", "--out", "m", "--base", str(tiny_model), "--live-dir", ""]
    result = cli("train", *args, *SETS)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "train.csv: holds only the class 'only' (20 rows); a classifier needs at least 2" in result.stderr
    assert "Add rows of another class" in result.stderr
    assert not (project / "m").exists()


def test_sample_left_with_one_class_names_max_samples(project, cli, tiny_model):
    # 60 rows of 'big' and 2 of 'rare': a 10-row sample holds 'rare' at most once, so it sits out
    rows = [f"big message {i},big\n" for i in range(60)] + ["rare one,rare\n", "rare two,rare\n"]
    write(project / "train.csv", "text,label\n" + "".join(rows))
    write(project / "val.csv", "text,label\nbig again,big\nrare again,rare\n")
    args = ["--train", "train.csv", "--val", "val.csv", "--out", "m", "--base", str(tiny_model), "--live-dir", ""]
    result = cli("train", *args, "--max-samples", "10", *SETS)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "train.csv: the 10-row sample leaves only the class 'big'" in result.stderr
    assert "Raise train.max_samples (or --max-samples)" in result.stderr


@pytest.mark.parametrize("labels", [[], ["a"], ["a", "a", "a"]])
def test_require_two_classes_refuses_zero_or_one(tmp_path, labels):
    from tuneloop.train import require_two_classes

    with pytest.raises(DataError, match="a classifier needs at least 2"):
        require_two_classes(pd.DataFrame({"text": ["x"] * len(labels), "label": labels}), tmp_path / "t.csv")


def test_require_two_classes_accepts_two(tmp_path):
    from tuneloop.train import require_two_classes

    require_two_classes(pd.DataFrame({"text": ["x", "y"], "label": ["a", "b"]}), tmp_path / "t.csv")
