import json

import pandas as pd
import pytest

from tests.conftest import REPO
from tuneloop.config import load_params
from tuneloop.errors import DataError
from tuneloop.prepare import prepare_frame, write_prepared


@pytest.fixture(scope="module")
def params():
    return load_params(REPO / "params.yaml")


def _frame(per_class: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{label} message number {i}", label) for label, n in per_class.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["text", "label"])


def test_split_is_stratified_deterministic_and_disjoint(params):
    frame = _frame({"a": 100, "b": 50, "c": 10})
    one = prepare_frame(frame, params.prepare, seed=1, known_labels=[])
    two = prepare_frame(frame, params.prepare, seed=1, known_labels=[])
    other = prepare_frame(frame, params.prepare, seed=2, known_labels=[])
    for name in ("train", "val", "test"):
        pd.testing.assert_frame_equal(one.splits[name], two.splits[name])
    assert not one.splits["test"].equals(other.splits["test"])
    counts = {name: split["label"].value_counts().to_dict() for name, split in one.splits.items()}
    assert counts["test"] == {"a": 10, "b": 5, "c": 1}
    assert counts["val"] == {"a": 10, "b": 5, "c": 1}
    texts = [set(s["text"]) for s in one.splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(len(s) for s in one.splits.values()) == 160


def test_normalisation_then_dedupe_records_what_it_drops(params):
    frame = pd.DataFrame(
        {
            "text": ["Cafe\u0301  au\tlait", "Caf\u00e9 au lait", "other"] + [f"x{i}" for i in range(10)],
            "label": ["a", "a", "a"] + ["b"] * 10,
        }
    )
    prepared = prepare_frame(frame, params.prepare, seed=0, known_labels=[])
    every = pd.concat(prepared.splits.values())
    assert "Caf\u00e9 au lait" in set(every["text"])
    assert prepared.dropped["reason"].tolist() == ["duplicate after normalisation"]
    assert len(every) + len(prepared.dropped) == len(frame)  # nothing silently dropped


def test_provided_test_file_is_used_and_leaks_removed(params):
    frame = _frame({"a": 20, "b": 20})
    test = pd.DataFrame({"text": ["a message number 3", "fresh b text"], "label": ["a", "b"]})
    prepared = prepare_frame(frame, params.prepare, seed=0, known_labels=[], test_frame=test)
    assert prepared.splits["test"]["text"].tolist() == test["text"].tolist()
    assert "a message number 3" not in set(prepared.splits["train"]["text"])
    assert prepared.dropped["reason"].tolist() == ["also in the test file (kept there only)"]


def test_label_map_follows_known_labels_order(params, tmp_path):
    frame = _frame({"b": 10, "a": 10})
    prepared = prepare_frame(frame, params.prepare, seed=0, known_labels=["b", "a", "z"])
    write_prepared(prepared, tmp_path)
    assert json.loads((tmp_path / "labels.json").read_text())["label2id"] == {"b": 0, "a": 1, "z": 2}
    with pytest.raises(DataError, match="not in data.labels"):
        prepare_frame(frame, params.prepare, seed=0, known_labels=["a"])


def test_label_only_in_test_file_is_refused(params):
    test = pd.DataFrame({"text": ["unseen"], "label": ["zzz"]})
    with pytest.raises(DataError, match=r"\['zzz'\] appear in val/test but not in train"):
        prepare_frame(_frame({"a": 10}), params.prepare, seed=0, known_labels=[], test_frame=test)
