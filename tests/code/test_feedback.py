"""`tuneloop feedback queue` offers the predictions most worth a label; `feedback import` records an
annotated file with the /feedback checks, all or nothing."""

import pandas as pd
import pytest

from tuneloop.errors import DataError
from tuneloop.feedback import import_labels, pick, queue
from tuneloop.predlog import Prediction, PredictionLog, new_request_id, read_window


def _log(url, rows):
    plog = PredictionLog(url)
    ids = []
    for text, predicted, confidence in rows:
        ids.append(new_request_id())
        plog.log(
            Prediction(
                request_id=ids[-1],
                text=text,
                predicted=predicted,
                confidence=confidence,
                top_k=[{"label": predicted, "score": confidence}],
                model_tag="m:1",
                latency_ms=1.0,
            )
        )
    plog.close()
    return ids


def test_queue_covers_every_predicted_class_then_the_least_confident(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    rows = [(f"a {i}", "a", 0.5 + i / 100) for i in range(20)] + [("b sure", "b", 0.99), ("c sure", "c", 0.97)]
    ids = _log(url, rows)
    plog = PredictionLog(url)
    plog.record_feedback_many([(ids[0], "a")])  # already labeled: never offered again
    plog.close()
    chosen = pick(read_window(url), 6)
    assert len(chosen) == 6 and {"a", "b", "c"} <= set(chosen["predicted"])
    assert ids[0] not in set(chosen["request_id"]) and ids[1] in set(chosen["request_id"])  # least confident left
    written = queue(tmp_path / "q.csv", 6, url)
    frame = pd.read_csv(tmp_path / "q.csv", dtype=str, keep_default_na=False)
    assert written == 6 and list(frame.columns) == [
        "request_id",
        "text",
        "predicted",
        "confidence",
        "model_tag",
        "label",
    ]
    # Among the newest 3 predictions only ('b sure', 'c sure' and the last 'a'): the log is not read whole.
    assert queue(tmp_path / "q3.csv", 6, url, window=3) == 3
    assert set(pd.read_csv(tmp_path / "q3.csv")["request_id"]) == set(ids[-3:])


def test_import_records_annotated_rows_and_skips_blanks(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    ids = _log(url, [("one", "a", 0.6), ("two", "a", 0.7), ("three", "b", 0.8)])
    path = tmp_path / "done.csv"
    pd.DataFrame({"request_id": ids, "text": ["one", "two\r\nmore", "three"], "label": ["b", "", "a"]}).to_csv(
        path, index=False
    )
    done = import_labels(path, ["a", "b"], url)
    assert done.recorded == 2 and done.skipped_blank == 1
    labels = dict(zip(read_window(url)["request_id"], read_window(url)["true_label"]))
    assert labels[ids[0]] == "b" and labels[ids[2]] == "a" and labels[ids[1]] is None
    assert read_window(url, labeled=True)["feedback_source"].tolist() == ["import", "import"]  # not checked as random


@pytest.mark.parametrize(
    "name, encode",
    [
        ("excel.csv", lambda text: b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8")),  # "CSV UTF-8"
        ("unicode.tsv", lambda text: text.replace(",", "\t").encode("utf-16")),  # "Unicode text"
    ],
)
def test_an_annotated_queue_saved_by_a_spreadsheet_imports(tmp_path, name, encode):
    """The queue goes to an annotator's spreadsheet and comes back as it saves it: "Unicode text" (UTF-16, tabs)
    was refused as not UTF-8. Read now as an import reads a file (tuneloop.tabular.read_rows)."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    ids = _log(url, [("one", "a", 0.6), ("two", "a", 0.7)])
    path = tmp_path / name
    path.write_bytes(encode(f"request_id,text,label\n{ids[0]},one,b\n{ids[1]},two,\n"))
    done = import_labels(path, ["a", "b"], url)
    assert done.recorded == 1 and done.skipped_blank == 1
    assert dict(zip(read_window(url)["request_id"], read_window(url)["true_label"]))[ids[0]] == "b"


@pytest.mark.parametrize(
    "content, message",
    [
        ("request_id,label\n{id},a\n" + "0" * 32 + ",a\n", "not in the prediction log"),
        ("request_id,label\nX,a\n{id},a\n", "not an id /classify returned"),
        ("request_id,label\n{id},zebra\n", "not one of this model's labels"),
        ("request_id,label\n{id},a\n{id},b\n", "repeats"),  # one id twice: the /feedback rule
        ("id,label\n{id},a\n", "needs request_id and label"),
        ('request_id,label\n"{id},a\n', "broken quote"),
        ("request_id,label,label\n{id},a,b\n", "names column 'label' more than once"),  # was: the first, unsaid
        ("request_id, label,label\n{id},a,b\n", "names column 'label' more than once"),  # was: a traceback
    ],
)
def test_bad_annotation_files_record_nothing(tmp_path, content, message):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    (rid,) = _log(url, [("one", "a", 0.6)])
    path = tmp_path / "bad.csv"
    path.write_text(content.format(id=rid))
    with pytest.raises(DataError, match=message):
        import_labels(path, ["a", "b"], url)
    assert read_window(url)["true_label"].isna().all()


def test_new_labels_are_refused_unless_the_annotator_says_so_and_must_be_plain_names(tmp_path):
    """New intents reach the retrain through `feedback import --new-labels`; POST /feedback never accepts them."""
    from tuneloop.serve.guard import feedback_pairs

    url = f"sqlite:///{tmp_path / 'log.db'}"
    ids = _log(url, [("open an account", "a", 0.4), ("exchange rate for yen", "b", 0.5)])
    path = tmp_path / "new.csv"
    pd.DataFrame({"request_id": ids, "label": ["open_account", "b"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="not one of this model's labels"):
        import_labels(path, ["a", "b"], url)
    assert read_window(url)["true_label"].isna().all()
    done = import_labels(path, ["a", "b"], url, new_labels=True)
    assert done.recorded == 2 and done.new_labels == ["open_account"]
    assert set(read_window(url)["true_label"]) == {"open_account", "b"}
    for bad in [" padded", "two\nlines", "zero\u200bwidth", "_x", "tab\tbed", "ctrl\x07"]:
        with pytest.raises(ValueError, match="plain name"):
            feedback_pairs({"request_id": ids[0], "label": bad}, ["a"], new_labels=True)
    with pytest.raises(ValueError):  # over 200 characters: refused by the /feedback shape check already
        feedback_pairs({"request_id": ids[0], "label": "x" * 201}, ["a"], new_labels=True)
    assert feedback_pairs({"request_id": ids[0], "label": "Konto eröffnen 2"}, ["a"], new_labels=True)
    assert feedback_pairs({"request_id": ids[0], "label": "开户"}, ["a"], new_labels=True)
    with pytest.raises(ValueError, match="not one of this model's labels"):
        feedback_pairs({"request_id": ids[0], "label": "open_account"}, ["a"])  # the service's /feedback


def test_a_new_label_that_is_a_known_one_spelt_anew_is_refused_across_the_whole_file(tmp_path):
    """'Card Lost' for the model's 'card_lost' would teach the retrain a second class of one intent; so would
    'open_account' and 'Open Account' as two new ones, even 1,000 rows (one /feedback batch) apart."""
    from tuneloop.serve.guard import feedback_pairs

    url = f"sqlite:///{tmp_path / 'log.db'}"
    ids = _log(url, [(f"text {i}", "card_lost", 0.5) for i in range(1002)])
    with pytest.raises(ValueError, match=r"new label 'Card-Lost' is 'card_lost' spelt another way.*write 'card_lost'"):
        feedback_pairs({"request_id": ids[0], "label": "Card-Lost"}, ["card_lost", "b"], new_labels=True)
    path = tmp_path / "new.csv"
    labels = ["open_account"] + ["card_lost"] * 1000 + ["Open Account"]
    pd.DataFrame({"request_id": ids, "label": labels}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"rows from 1002: .*'Open Account' is 'open_account' spelt another way"):
        import_labels(path, ["card_lost"], url, new_labels=True)
    assert read_window(url)["true_label"].isna().all()  # all or nothing


def test_reading_or_labelling_a_log_that_is_not_there_names_the_file_and_creates_none(tmp_path):
    """A typo in TUNELOOP_DB_URL must not leave an empty database behind (SQLite creates the file it is asked to
    open) nor answer "no predictions table" about it: each reader says the file is missing, by path."""
    from tuneloop.predlog import PredictionLogError

    missing = tmp_path / "predicitons.db"
    url = f"sqlite:///{missing}"
    annotated = tmp_path / "labels.csv"
    annotated.write_text("request_id,label\n" + "0" * 32 + ",a\n")
    for read in (lambda: read_window(url), lambda: queue(tmp_path / "q.csv", 5, url)):
        with pytest.raises(PredictionLogError, match=f"no such file \\({missing}\\).*TUNELOOP_DB_URL"):
            read()
    with pytest.raises(PredictionLogError, match="no such file"):
        import_labels(annotated, ["a"], url)
    assert not missing.exists() and not (tmp_path / "q.csv").exists()
    _log(url, [("one", "a", 0.6)])  # once the service has written it, the same readers work
    assert len(read_window(url)) == 1
