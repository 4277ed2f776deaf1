"""Retraining data: labeled production rows join the raw corpus once each, with their origin, and the
split holds out production rows in the same share as corpus rows."""

import pandas as pd

from tuneloop.predlog import Prediction, PredictionLog, new_request_id
from tuneloop.prepare import stratified_split
from tuneloop.retrain import feedback_rows, merge_production
from tuneloop.tabular import ORIGIN


def _logged(plog: PredictionLog, text: str, predicted: str = "a") -> str:
    rid = new_request_id()
    plog.log(Prediction(request_id=rid, text=text, predicted=predicted, confidence=0.6,
                        top_k=[{"label": predicted, "score": 0.6}], model_tag="m:1", latency_ms=1.0))
    return rid


def test_only_labeled_rows_with_text_come_back_with_their_latest_label(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    plog = PredictionLog(url)
    labeled, unlabeled, relabeled = _logged(plog, "where is my card"), _logged(plog, "hi"), _logged(plog, "refund")
    plog.record_feedback_many([(labeled, "card"), (relabeled, "card"), (relabeled, "refund")])
    private = PredictionLog(url, store_text=False)
    hidden = _logged(private, "secret text")
    private.record_feedback_many([(hidden, "card")])
    plog.close()
    private.close()
    rows, without_text = feedback_rows(url)
    assert dict(zip(rows["request_id"], rows["label"])) == {labeled: "card", relabeled: "refund"}
    assert unlabeled not in set(rows["request_id"]) and without_text == 1
    assert set(rows[ORIGIN]) == {"production"}


def test_merge_adds_each_production_row_once_and_marks_origins():
    raw = pd.DataFrame({"text": ["a1", "b1"], "label": ["a", "b"], "channel": ["chat", "mail"]})
    production = pd.DataFrame({"text": ["p1", "p2"], "label": ["a", "c"], ORIGIN: "production",
                               "request_id": ["r1", "r2"]})
    merged, added, relabeled = merge_production(raw, production)
    assert (added, relabeled) == (2, 0) and len(merged) == 4 and list(merged.columns[:2]) == ["text", "label"]
    assert merged[ORIGIN].tolist() == ["corpus", "corpus", "production", "production"]
    again, added_again, relabeled_again = merge_production(merged, production)  # the same feedback a second time
    assert (added_again, relabeled_again) == (0, 0) and again.equals(merged)
    # An annotator corrects r2 after the last retrain: the corpus row follows the newest label, once.
    corrected = production.assign(label=["a", "b"])
    fixed, added_fixed, relabeled_fixed = merge_production(merged, corrected)
    assert (added_fixed, relabeled_fixed) == (0, 1) and fixed["label"].tolist() == ["a", "b", "a", "b"]
    assert merge_production(fixed, corrected)[1:] == (0, 0)


def test_split_holds_out_production_rows_like_corpus_rows():
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(200)], "label": ["a", "b"] * 100,
                          ORIGIN: ["corpus"] * 160 + ["production"] * 40})
    splits = stratified_split(frame, 0.1, 0.2, seed=0)
    test = splits["test"]
    assert (test[ORIGIN] == "production").sum() == 8  # 20% of the 40 production rows (4 per class)
    assert (test[ORIGIN] == "corpus").sum() == 32


def test_merging_production_rows_never_moves_a_champion_training_row_into_the_test_split():
    """The gate re-scores the champion on the retrain's test split: none of those rows may be ones it trained on."""
    labels = ["a", "b", "c", "d", "e"]
    corpus = pd.DataFrame({"text": [f"corpus text {i}" for i in range(500)], "label": labels * 100, ORIGIN: "corpus"})
    before = stratified_split(corpus, 0.1, 0.1, seed=42)
    production = pd.DataFrame({"text": [f"new text {i}" for i in range(120)], "label": labels * 24, ORIGIN: "production"})
    quarantined = corpus.drop(index=[3, 77, 140, 260, 301])  # validation sets a few corpus rows aside
    after = stratified_split(pd.concat([quarantined, production], ignore_index=True), 0.1, 0.1, seed=42)
    trained_on = set(before["train"]["text"])
    assert not trained_on & set(after["test"]["text"])
    kept = {t: name for name, part in before.items() for t in part["text"]}
    moved = [t for name, part in after.items() for t in part["text"] if t in kept and kept[t] != name]
    assert len(moved) <= 10  # only rows at a cut point move (val <-> test, train <-> val), out of 495


def test_a_merge_killed_before_dvc_add_is_tracked_by_the_next_one(project, tmp_path):
    """The corpus is written, then `dvc add` records it as a data version; a run killed in between left data.dvc
    naming the old corpus, and the next merge (nothing new to add) returned early, so it stayed behind."""
    from tuneloop.ingest import dvc_track
    from tuneloop.retrain import merge_feedback_into_raw
    from tuneloop.tabular import read_table, write_csv_atomic

    raw = project / "data" / "raw" / "corpus.csv"
    write_csv_atomic(pd.DataFrame({"text": ["a1", "b1"], "label": ["a", "b"]}), raw)
    dvc_track(project, raw.parent)
    url = f"sqlite:///{tmp_path / 'log.db'}"
    plog = PredictionLog(url)
    rid = _logged(plog, "where is my card")
    plog.record_feedback_many([(rid, "a")])
    plog.close()
    version = (project / "data.dvc").read_text()
    merged, _, _ = merge_production(read_table(raw).frame, feedback_rows(url)[0])
    write_csv_atomic(merged, raw)  # the killed run got this far
    remote = project.parent / "remote"
    assert not any(remote.rglob("*.*"))
    again = merge_feedback_into_raw(raw, url)
    assert (again.production_added, again.production_relabeled) == (0, 0)
    assert (project / "data.dvc").read_text() != version  # the corpus on disk is the tracked version now ...
    assert any(remote.rglob("*.*"))  # ... and pushed
    assert merge_feedback_into_raw(raw, url).production_added == 0  # unchanged: no push, no remote needed
