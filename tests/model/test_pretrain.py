"""Continued pre-training and vocabulary extension with the tiny random BERT: the MLM loss falls, the added
units survive save/load into the fine-tuned model and its predictions, and the records say what happened."""

import json

import pytest

from tests.conftest import REPO, TINY_TRAIN, write
from tuneloop.config import load_params
from tuneloop.errors import DataError
from tuneloop.pretrain import corpus, read_extra_text, run
from tuneloop.train import starting_point, train

TITLES = {
    "sport": ["国足主场两球击败对手晋级", "篮球联赛总决赛今晚开打", "足球明星宣布退役告别赛场", "国足客场战平对手"],
    "money": ["央行宣布下调存款准备金率", "股市收盘大涨成交额创新高", "银行理财产品收益下降", "央行公布货币数据"],
}


def _split(path, n, offset=0):
    rows = [f"{t}{i + offset},{label}" for label, ts in TITLES.items() for i in range(n) for t in ts]
    return write(path, "text,label\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def pretrained(tiny_model, tmp_path_factory):
    """One pre-training run (vocabulary extended) shared by the module's tests; they only read its output."""
    project = tmp_path_factory.mktemp("pretrain")
    train_csv, val_csv = _split(project / "d" / "train.csv", 4), _split(project / "d" / "val.csv", 1, 100)
    extra = write(project / "d" / "unlabeled.txt", "国足今晚出战\n股市早盘下跌\n\n篮球联赛揭幕\n")
    overrides = [f"train.base_model={tiny_model}", "vocab.extend=true", "pretrain.enabled=true",
                 "pretrain.lr=0.001", "pretrain.batch_size=8", f"pretrain.extra_text=[{extra}]"]
    params = load_params(REPO / "params.yaml", overrides)
    record = run(params, [train_csv, val_csv], project / "models" / "pretrained", max_steps=40)
    return params, record, train_csv, val_csv, project / "models" / "pretrained"


def test_pretraining_extends_the_vocabulary_and_lowers_the_mlm_loss(pretrained):
    from transformers import AutoTokenizer

    _, record, _, _, out = pretrained
    assert record["enabled"] and record["steps"] == 40 and record["texts"] == 43  # 32 + 8 + 3 extra lines
    assert record["mlm_loss_after"] < record["mlm_loss_before"]
    extension = record["vocab_extension"]
    assert extension["added"] > 20 and extension["unk_share_before"] > 0.3 and extension["unk_share_after"] < 0.05
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.unk_token not in tokenizer.tokenize("国足击败对手")  # 击 and 败 were [UNK] before
    facts = json.loads((out / "run.json").read_text())  # when and how long: out of the record train copies
    assert set(facts) == {"created_at", "wall_time_s"}
    assert json.loads((out / "pretrain.json").read_text()) | facts == record


def test_fine_tuning_starts_from_the_checkpoint_and_serves_the_extended_vocabulary(pretrained, project):
    from tuneloop.model import load_classifier, predict_proba

    params, record, train_csv, val_csv, out = pretrained
    assert starting_point(params, out) == str(out)
    params = load_params(REPO / "params.yaml", [*TINY_TRAIN, "train.epochs=1", "vocab.extend=true"])
    train(params, train_csv, val_csv, project / "models" / "candidate", base=str(out), live_dir=None)
    meta = json.loads((project / "models" / "candidate" / "tuneloop.json").read_text())
    assert meta["pretrained"]["vocab_extension"]["units_sha256"] == record["vocab_extension"]["units_sha256"]
    assert meta["vocab_extension"]["added"] == 0  # the checkpoint's tokenizer reads the training texts already
    clf = load_classifier(project / "models" / "candidate")
    assert clf.tokenizer.unk_token not in clf.tokenizer.tokenize("国足击败对手")
    assert clf.model.get_input_embeddings().weight.shape[0] == len(clf.tokenizer)
    probs = predict_proba(clf, ["国足击败对手", "央行下调利率"])
    assert probs.shape == (2, 2) and abs(probs.sum() - 2) < 1e-4
    # Served as the service runs it by default (ONNX Runtime): the exported graph reads the extended vocabulary.
    from tuneloop.compress import build_variants, for_serving

    variants = build_variants(project / "models" / "candidate", "onnx", project / "onnx")
    served = for_serving(clf, "onnx", variants)
    assert served.backend == "onnx"  # parity with torch held on load, new embedding rows included
    assert abs(predict_proba(served, ["国足击败对手", "央行下调利率"]) - probs).max() < 1e-4


def test_disabled_stage_writes_only_its_marker_and_train_starts_from_the_base(project):
    params = load_params(REPO / "params.yaml")
    record = run(params, [], project / "models" / "pretrained")
    assert record["enabled"] is False and not (project / "models" / "pretrained" / "config.json").exists()
    assert starting_point(params, project / "models" / "pretrained") == params.train.base_model


def test_extra_text_files_are_read_or_refused_with_the_fix(project):
    assert read_extra_text(write(project / "u.csv", "id,text\n1,first\n2,second\n")) == ["first", "second"]
    with pytest.raises(DataError, match="no 'text' column"):
        read_extra_text(write(project / "bad.csv", "id,body\n1,x\n"))
    with pytest.raises(DataError, match="names column 'text' more than once"):  # was: the first column, unsaid
        read_extra_text(write(project / "twice.csv", "text,text\nfirst,other\n"))
    params = load_params(REPO / "params.yaml", ["pretrain.extra_text=[missing.txt]"])
    with pytest.raises(DataError, match="missing.txt, which does not exist"):
        corpus(params, [])


def test_prediction_log_texts_join_the_corpus_and_hashed_ones_do_not(project, monkeypatch):
    from tests.code.test_predlog import _prediction
    from tuneloop.predlog import PredictionLog

    url = f"sqlite:///{project / 'log.db'}"
    for store_text, text in ((True, "股市今天又跌了"), (False, "my card number is 4111")):
        plog = PredictionLog(url, store_text=store_text)
        plog.log(_prediction(1, text=text))
        plog.close()
    monkeypatch.setenv("TUNELOOP_DB_URL", url)
    params = load_params(REPO / "params.yaml", ["pretrain.prediction_log_rows=10"])
    texts = corpus(params, [])
    assert texts == ["股市今天又跌了"]  # the privacy-mode row kept only a hash: nothing to learn from
