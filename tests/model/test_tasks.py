"""Tasks in the registry: each classifier has its own champion, history and Bento; the gate never compares
models whose label sets differ (the new user's six question types against the demo's intents)."""

from pathlib import Path

import pytest

from tests.conftest import LOOSE_GATE, REPO, TINY_TRAIN, sentiment_rows, write
from tuneloop import registry
from tuneloop.config import load_params
from tuneloop.evaluate import evaluate
from tuneloop.package import bento_name
from tuneloop.release import release
from tuneloop.train import train

LOOSE = [*TINY_TRAIN, *LOOSE_GATE, "train.epochs=2"]


def _relabel(csv: str, mapping: dict[str, str]) -> str:
    lines = csv.splitlines()
    return (
        "\n".join([lines[0]] + [f"{t},{mapping[label]}" for t, label in (ln.rsplit(",", 1) for ln in lines[1:])]) + "\n"
    )


@pytest.fixture(scope="module")
def two_label_sets(tiny_model, tmp_path_factory):
    """One model on pos/neg/neu, one on the same texts under other labels (another classifier)."""
    root = tmp_path_factory.mktemp("tasks")
    params = load_params(REPO / "params.yaml", LOOSE)
    data = {"sentiment": (sentiment_rows(12, 0), sentiment_rows(4, 1), sentiment_rows(6, 2))}
    mapping = {"pos": "praise", "neg": "complaint", "neu": "question"}
    data["feedback"] = tuple(_relabel(csv, mapping) for csv in data["sentiment"])
    models = {}
    for name, (tr, va, te) in data.items():
        paths = [write(root / name / f"{split}.csv", csv) for split, csv in zip(("train", "val", "test"), (tr, va, te))]
        train(params, paths[0], paths[1], root / name / "model", base=str(tiny_model), live_dir=None)
        evaluate(params, root / name / "model", paths[2], root / name / "eval", behaviour_file="")
        models[name] = (root / name / "model", paths[2], root / name / "eval")
    return params, models


def test_gate_refuses_a_challenger_whose_label_set_differs(store, two_label_sets):
    params, models = two_label_sets
    model, test_csv, eval_dir = models["sentiment"]
    first = release(params, model, test_csv, eval_dir=eval_dir)
    assert first.outcome == "promoted" and registry.champion().tag == first.champion
    judged = registry.champion().metadata["served"]  # what evaluate scored as served, for the service to compare
    assert judged["backend"] in (params.serve.backend, "torch-int8") and 0 <= judged["agreement"] <= 1
    other, other_test, other_eval = models["feedback"]
    refused = release(params, other, other_test, eval_dir=other_eval)
    assert refused.outcome == "refused" and registry.champion().tag == first.champion  # untouched
    check = next(c for c in refused.report.checks if c.name == "label_set")
    assert not check.passed and "new task" in check.why and "--force --reason" in check.why
    assert "complaint" in check.why and "neg" in check.why  # names what is new and what is missing
    assert "no_regression_vs_champion" not in [c.name for c in refused.report.checks]  # no bogus comparison
    assert [e.tag for e in registry.entries("classifier")] == [first.champion]  # refused: never registered


def test_two_tasks_keep_their_own_champion_history_and_bento(store, two_label_sets, cli, project):
    params, models = two_label_sets
    tags = {}
    for task in ("sentiment", "feedback"):
        scoped = load_params(REPO / "params.yaml", [*LOOSE, f"task.name={task}"])
        model, test_csv, eval_dir = models[task]
        done = release(scoped, model, test_csv, eval_dir=eval_dir)
        assert done.outcome == "promoted", done.message
        tags[task] = done.champion
    assert tags["sentiment"].startswith("tuneloop-sentiment:") and tags["feedback"].startswith("tuneloop-feedback:")
    assert registry.champion("sentiment").tag == tags["sentiment"]
    assert registry.champion("feedback").tag == tags["feedback"]
    assert [h["tag"] for h in registry.history("feedback")] == [tags["feedback"]]
    assert registry.tasks() == ["feedback", "sentiment"]
    assert bento_name("feedback") != bento_name("sentiment")
    listed = cli("models", "list")
    assert listed.exit_code == 0 and "feedback" in listed.stdout and "sentiment" in listed.stdout
    scoped = cli("models", "list", "--task", "feedback")
    assert tags["feedback"] in scoped.stdout and tags["sentiment"] not in scoped.stdout
    with pytest.raises(registry.RegistryError, match="nothing to roll back to: task 'sentiment'"):
        registry.rollback("sentiment", reason="only one champion so far")


def test_models_show_names_the_task_and_bad_tags_are_clear_errors(store, two_label_sets, cli, project):
    params, models = two_label_sets
    model, test_csv, eval_dir = models["sentiment"]
    tag = release(params, model, test_csv, eval_dir=eval_dir).champion
    shown = cli("models", "show", tag)
    assert shown.exit_code == 0 and '"task": "classifier"' in shown.stdout
    bad = cli("models", "show", "a:b:c")
    assert bad.exit_code == 1 and "invalid model tag 'a:b:c'" in bad.stderr and "Traceback" not in bad.output


def test_a_damaged_champion_pointer_is_a_clear_error(store, cli, project):
    pointer = store / "tuneloop" / "classifier" / "champion.json"
    write(pointer, "{not json")
    result = cli("models", "list")
    assert result.exit_code == 1 and str(pointer) in result.stderr and "delete it" in result.stderr
    assert "Traceback" not in result.output


def test_reading_the_registry_creates_no_folders(store):
    assert registry.champion("never-used") is None and registry.entries("never-used") == []
    assert not (store / "tuneloop" / "never-used").exists()


def _with_spam(csv: str, rows: int, origin: str) -> str:
    """The sentiment rows (origin corpus) plus `rows` texts of a class the champion never saw."""
    lines = [f"{line},corpus" for line in csv.splitlines()[1:]]
    spam = [f"win a free prize now! click link {i},spam,{origin}" for i in range(rows)]
    return "\n".join(["text,label,origin", *lines, *spam]) + "\n"


def test_a_class_production_feedback_brought_is_compared_and_any_other_new_class_refused(
    store, two_label_sets, tiny_model, tmp_path
):
    """New intents come back as feedback labels (`feedback import --new-labels`) and reach the test
    split as production rows: the champion is then judged on them (it cannot predict them), not refused."""
    params, models = two_label_sets
    model, test_csv, eval_dir = models["sentiment"]
    first = release(params, model, test_csv, eval_dir=eval_dir)
    splits = [
        _with_spam(sentiment_rows(n, seed), k, "production") for n, k, seed in ((12, 12, 0), (4, 4, 1), (6, 6, 2))
    ]
    paths = [write(tmp_path / f"{name}.csv", csv) for name, csv in zip(("train", "val", "test"), splits)]
    train(params, paths[0], paths[1], tmp_path / "model", base=str(tiny_model), live_dir=None)
    evaluate(params, tmp_path / "model", paths[2], tmp_path / "eval", behaviour_file="")
    judged = release(params, tmp_path / "model", paths[2], eval_dir=tmp_path / "eval", register=False)
    check = next(c for c in judged.report.checks if c.name == "label_set")
    assert check.passed and "spam" in check.why and "production" in check.why
    comparison = judged.report.comparison
    assert "no_regression_vs_champion" in [c.name for c in judged.report.checks]  # compared on the same rows
    assert comparison["champion_accuracy"] <= 18 / 24  # the 6 spam rows are wrong for the champion
    corpus_only = write(tmp_path / "test_corpus.csv", paths[2].read_text().replace(",production\n", ",corpus\n"))
    evaluate(params, tmp_path / "model", corpus_only, tmp_path / "eval_corpus", behaviour_file="")
    refused = release(params, tmp_path / "model", corpus_only, eval_dir=tmp_path / "eval_corpus", register=False)
    check = next(c for c in refused.report.checks if c.name == "label_set")
    assert not check.passed and "new task" in check.why and registry.champion().tag == first.champion


def test_a_task_name_that_is_not_one_is_refused_and_foreign_store_entries_are_left_out(store, cli):
    """--task reaches a folder name (the champion pointer): '../x' would write outside the registry. A model put
    in the store as `tuneloop-<not a task name>` by something else must not break the listing of every task."""
    import bentoml

    for bad in ("../../etc", "Sentiment", "a_b", "-x", "x" * 41):
        result = cli("models", "list", "--task", bad)
        assert result.exit_code == 1 and f"task {bad!r}: a task name is" in result.stderr, result.output
        with pytest.raises(Exception, match="a task name is"):
            registry.champion(bad)
    assert not (store / "etc").exists()
    with bentoml.models.create("tuneloop-not_a.task") as foreign:
        (Path(foreign.path) / "x").write_text("y")
    write(store / "tuneloop" / "Bad.Name" / "champion.json", '{"champion": null, "history": []}')
    try:
        assert registry.tasks() == [] and registry.entries() == []
        assert cli("models", "list").exit_code == 0
    finally:
        bentoml.models.delete(foreign.tag)
