"""No traceback from user input: broken --set values, non-strict types, a damaged or foreign
tuneloop.json, a broken behaviour YAML, pickled weights. Each through the CLI: non-zero exit, no
traceback, a message naming the key or file and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, write
from tuneloop.config import load_params
from tuneloop.errors import ConfigError


def _assert_clean_failure(result, *words: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert "error: " in result.stderr, result.output  # after any progress bar (model loading)
    for word in words:
        assert word in result.stderr, f"{word!r} missing from: {result.stderr}"


# ------------------------------------------------------------------ --set and strict types

SET_CASES = {
    "unclosed list": ("data.labels=[a, b", ["--set data.labels=[a, b", "'data.labels'", "not valid YAML"]),
    "unclosed quote": ('base.seed="42', ["'base.seed'", "not valid YAML"]),
    "bad mapping": ("data.labels=a: b: c", ["'data.labels'", "not valid YAML"]),
    "bool for a float": ("train.epochs=true", ["train.epochs = True", "valid number", "booleans"]),
    "string for a bool": ('serve.store_text="yes"', ["serve.store_text = 'yes'", "valid boolean", "quoted"]),
    "string for an int": ("train.batch_size='8'", ["train.batch_size = '8'", "valid integer"]),
    "float for an int": ("train.batch_size=8.5", ["train.batch_size = 8.5", "valid integer"]),
    "bool for an int": ("base.seed=yes", ["base.seed = True", "valid integer"]),
}


@pytest.mark.parametrize("case", list(SET_CASES))
def test_bad_set_value_is_one_message_naming_the_key(project, cli, case):
    item, words = SET_CASES[case]
    result = cli("prepare", "--set", item)
    _assert_clean_failure(result, *words)


def test_strict_types_still_take_every_repository_value_and_usual_spellings():
    params = load_params(REPO / "params.yaml", ["train.lr=1e-4", "train.epochs=3", "gate.max_ece=0"])
    assert params.train.lr == pytest.approx(1e-4)  # YAML 1.1 reads 1e-4 as a string; we read a number
    assert params.train.epochs == 3.0 and isinstance(params.train.epochs, float)
    assert params.gate.max_ece == 0.0


def test_strict_types_in_the_params_file(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("class_weights: false", 'class_weights: "false"')
    path = write(tmp_path / "params.yaml", text)
    with pytest.raises(ConfigError, match=r"train\.class_weights = 'false': Input should be a valid boolean"):
        load_params(path)


# ------------------------------------------------------------------ tuneloop.json

META_CASES = {
    "truncated": ('{"labels": ["a", "b"], "par', ["tuneloop.json: not valid JSON", "damaged", "Re-train"]),
    "not an object": ('["a", "b"]', ["a JSON list, not tuneloop's metadata", "Re-train"]),
    "no labels": ('{"base_model": "minilm"}', ["no 'labels' list of strings", "not written by tuneloop"]),
    "labels not strings": ('{"labels": [1, 2]}', ["no 'labels' list of strings"]),
    "params not a mapping": ('{"labels": ["a", "b"], "params": []}', ["params.train.max_length"]),
    "max_length a string": (
        '{"labels": ["a", "b"], "params": {"train": {"max_length": "128"}}}',
        ["params.train.max_length", "whole number"],
    ),
    "not UTF-8": (b'{"labels": ["\xff"]}', ["tuneloop.json: not valid JSON"]),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_damaged_or_foreign_tuneloop_json_is_a_model_error(project, cli, case):
    content, words = META_CASES[case]
    write(project / "m" / "tuneloop.json", content)
    write(project / "test.csv", "text,label\nhello,a\n")
    result = cli("evaluate", "--model", "m", "--data", "test.csv", "--out", "e")
    _assert_clean_failure(result, "m/tuneloop.json", *words)


def _tuneloop_dir(tiny_model: Path, dest: Path) -> Path:
    """The tiny random BERT as a tuneloop model dir (its labels are transformers' defaults)."""
    shutil.copytree(tiny_model, dest)
    meta = {"labels": ["LABEL_0", "LABEL_1"], "params": {"train": {"max_length": 32}}}
    write(dest / "tuneloop.json", json.dumps(meta))
    return dest


def test_pickled_weights_are_never_loaded(project, cli, tiny_model):
    import torch
    from safetensors.torch import load_file

    model = _tuneloop_dir(tiny_model, project / "m")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    write(project / "test.csv", "text,label\nhello,LABEL_0\nbye,LABEL_1\n")
    result = cli("evaluate", "--model", "m", "--data", "test.csv", "--out", "e", "--behaviour", "none")
    _assert_clean_failure(result, "m: cannot load the model", "Re-train")


# ------------------------------------------------------------------ behaviour YAML

BEHAVIOUR_CASES = {
    "broken YAML": ("invariance: [uppercase\n", ["broken.yaml: not valid YAML", "behaviour_file"]),
    "a list at the top": ("- uppercase\n", ["top level must be a mapping"]),
    "invariance a list": ("invariance: [uppercase]\n", ["invariance must be a mapping"]),
    "perturbations a string": ("invariance: {perturbations: uppercase}\n", ["perturbations must be a list"]),
    "perturbation a mapping": ("invariance: {perturbations: [{a: 1}]}\n", ["unknown perturbations"]),
    "sample not a number": ("invariance: {sample: many}\n", ["invariance.sample = 'many'"]),
    "cases a mapping": ("minimum_functionality: {text: hi}\n", ["minimum_functionality must be a list"]),
    "label a boolean": ("minimum_functionality: [{text: hi, label: yes}]\n", ["case 1", "boolean"]),
}


@pytest.mark.parametrize("case", list(BEHAVIOUR_CASES))
def test_broken_behaviour_yaml_is_a_data_error(project, cli, tiny_model, case):
    content, words = BEHAVIOUR_CASES[case]
    _tuneloop_dir(tiny_model, project / "m")
    write(project / "broken.yaml", content)
    write(project / "test.csv", "text,label\nhello,LABEL_0\nbye,LABEL_1\n")
    result = cli(
        "evaluate", "--model", "m", "--data", "test.csv", "--out", "e", "--behaviour", "broken.yaml",
        "--set", "serve.backend=torch",
    )  # fmt: skip
    _assert_clean_failure(result, "broken.yaml", *words)


def test_numeric_behaviour_label_matches_the_string_label(tmp_path):
    from tuneloop.evaluate import load_behaviour

    path = write(tmp_path / "b.yaml", "minimum_functionality: [{text: great film, label: 1}]\n")
    assert load_behaviour(path)["minimum_functionality"] == [{"text": "great film", "label": "1"}]


# ------------------------------------------------------------------ ports and addresses


@pytest.mark.parametrize("command", [["serve"], ["dashboard"], ["monitor", "ui"]])
@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_a_port_out_of_range_is_a_usage_error(project, cli, command, port):
    """`serve --port 99999` ended in a traceback (OverflowError from bind)."""
    result = cli(*command, "--port", port)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--port" in result.output


def test_simulate_names_an_address_that_is_not_http(project, cli):
    result = cli("simulate", "--url", "localhost:3000", "--rows", "3")
    _assert_clean_failure(result, "--url 'localhost:3000'", "http://127.0.0.1:3000")
