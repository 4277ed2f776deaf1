"""Training on a tiny random BERT: loss goes down, output describes itself, runs are deterministic,
and a run killed mid-way resumes to the same result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_TRAIN, write
from tuneloop.config import load_params
from tuneloop.train import train


def _train(tiny_model, train_csv, val_csv, out, extra=(), **kw):
    params = load_params(REPO / "params.yaml", [*TINY_TRAIN, *extra])
    return train(params, train_csv, val_csv, out, base=str(tiny_model), **kw)


def test_training_reduces_loss_and_writes_a_self_describing_dir(tiny_model, tiny_training):
    # The session's one training with dvclive on (tests/conftest.py::tiny_training), as this test ran it before
    result, project, out = tiny_training.result, tiny_training.project, tiny_training.model
    assert {"model.safetensors", "config.json", "tokenizer.json", "tuneloop.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "training_args.bin").exists()  # no pickles in a model dir
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
    meta = json.loads((out / "tuneloop.json").read_text())
    assert meta["base_model"] == str(tiny_model)
    assert meta["params"]["train"]["lr"] == 0.001 and meta["params"]["base"]["seed"] == 42
    assert len(meta["data"]["train"]["md5"]) == 32 and meta["data"]["id"]
    facts = json.loads((out / "run.json").read_text())  # the run's facts, out of DVC's hash of the folder
    assert "git_revision" in facts and facts["wall_time_s"] > 0 and facts["created_at"]
    assert not {"git_revision", "created_at", "wall_time_s", "train_samples_per_second"} & set(meta)
    assert set(meta["params"]) == {"base", "train", "vocab"}  # only what the model depends on (serve.*: no)
    assert "num_threads" not in meta["params"]["train"] and facts["run_params"]["serve"]["backend"]  # the rest: run.json
    # nor how this shell loaded the tokenizer (HF_HUB_OFFLINE saves local_files_only=true): same model, same bytes
    assert "local_files_only" not in json.loads((out / "tokenizer_config.json").read_text())
    assert meta["val_metrics"]["macro_f1"] == result.val_metrics["macro_f1"]
    # dvclive wrote the loss curve: it must go down.
    curve = (project / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    losses = [float(line.split("\t")[-1]) for line in curve]
    assert len(losses) >= 3 and losses[-1] < losses[0] * 0.8
    assert not list((project / "live").rglob("*runtime*")) and not list((project / "live").rglob("*per_second*"))
    assert result.val_metrics["accuracy"] > 0.5  # three classes: chance is 0.33
    assert not (project / "model.checkpoints").exists()  # removed after success


@pytest.mark.heavy
def test_cpu_training_is_deterministic(project, tiny_model, tiny_splits, tiny_trained):
    # `tiny_trained` is the same training on the same rows, run earlier in this session (other tests, thread
    # counts and seeds in between, and dvclive on: a logger must not change the model): the modules that share
    # it rely on this.
    two = _train(tiny_model, *tiny_splits, project / "two", live_dir=None)
    assert json.loads((tiny_trained / "tuneloop.json").read_text())["val_metrics"] == two.val_metrics
    assert (tiny_trained / "model.safetensors").read_bytes() == (project / "two" / "model.safetensors").read_bytes()


@pytest.mark.system
def test_resume_after_kill_matches_an_uninterrupted_run(project, tiny_model, tiny_splits):
    overrides = [*TINY_TRAIN, "train.epochs=3", "train.eval_steps=6", "train.save_total_limit=40"]
    reference = train(
        load_params(REPO / "params.yaml", overrides), *tiny_splits, project / "ref", base=str(tiny_model), live_dir=None
    )
    cmd = [
        sys.executable,
        "-m",
        "tuneloop",
        "train",
        "--train",
        str(tiny_splits[0]),
        "--val",
        str(tiny_splits[1]),
        "--out",
        "crashed",
        "--base",
        str(tiny_model),
        "--live-dir",
        "",
        *[a for o in overrides for a in ("--set", o)],
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    checkpoints = project / "crashed.checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # a crash: no cleanup, no final save
    proc.wait()
    assert not (project / "crashed").exists(), "training finished before the kill; the test proved nothing"
    assert list(checkpoints.glob("checkpoint-*"))

    resumed = subprocess.run([*cmd, "--resume"], cwd=project, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    meta = json.loads((project / "crashed" / "tuneloop.json").read_text())
    for key in ("macro_f1", "accuracy", "loss"):
        assert meta["val_metrics"][key] == pytest.approx(reference.val_metrics[key], abs=1e-4)
    assert meta["steps"] == reference.steps


BAD_TRAIN = {
    "base model folder missing": (
        [],
        "--base",
        "./no/such/model",
        ["base model folder ./no/such/model does not exist"],
    ),
    "base folder is not a model": ([], "--base", "notamodel", ["notamodel", "no config.json"]),
    "val label unseen in train": (
        ["val_extra"],
        None,
        None,
        ["labels ['mystery'] do not appear in", "add training rows"],
    ),
    "class with one example": (["train_single"], None, None, ["fewer than 2 training rows: 'lonely' (1)"]),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_training_bad_input_is_one_clear_message(project, cli, tiny_model, tiny_splits, case):
    edits, flag, value, words = BAD_TRAIN[case]
    train_csv, val_csv = tiny_splits
    (project / "notamodel").mkdir()
    if "val_extra" in edits:
        write(val_csv, val_csv.read_text() + "who knows,mystery\n")
    if "train_single" in edits:
        write(train_csv, train_csv.read_text() + "only me,lonely\n")
    args = ["train", "--train", train_csv, "--val", val_csv, "--out", "m", "--live-dir", ""]
    args += [flag, value] if flag else ["--base", str(tiny_model)]
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.stderr
    assert not (project / "m").exists()


def test_resume_without_checkpoint_is_refused(project, cli, tiny_model, tiny_splits):
    result = cli(
        "train", "--train", tiny_splits[0], "--val", tiny_splits[1], "--out", "m", "--resume", "--base", str(tiny_model)
    )
    assert result.exit_code == 1
    assert "--resume: no checkpoint in m.checkpoints" in result.stderr


def test_dry_run_is_a_two_step_smoke_run(project, cli, tiny_model, tiny_splits):
    result = cli(
        "train",
        "--train",
        tiny_splits[0],
        "--val",
        tiny_splits[1],
        "--out",
        "m",
        "--dry-run",
        "--base",
        str(tiny_model),
        "--live-dir",
        "",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(Path("m/tuneloop.json").read_text())["steps"] == 2


def test_dry_run_on_many_classes_leaves_out_classes_its_sample_holds_once(project, cli, tiny_model):
    rows = "".join(f"message {i} about topic {c},topic{c}\n" for c in range(20) for i in range(4))
    train_csv, val_csv = (
        write(project / "t.csv", "text,label\n" + rows),
        write(project / "v.csv", "text,label\n" + rows),
    )
    result = cli(
        "train",
        "--train",
        train_csv,
        "--val",
        val_csv,
        "--out",
        "m",
        "--dry-run",
        "--base",
        str(tiny_model),
        "--live-dir",
        "",
    )  # 32 of 80 rows over 20 classes: some appear once
    assert result.exit_code == 0, result.output
    assert json.loads(Path("m/tuneloop.json").read_text())["steps"] == 2


def test_gpu_out_of_memory_names_the_setting_to_lower(project, cli, tiny_model, tiny_splits, monkeypatch):
    import torch
    from transformers import Trainer

    def boom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train", boom)
    result = cli(
        "train",
        "--train",
        tiny_splits[0],
        "--val",
        tiny_splits[1],
        "--out",
        "m",
        "--base",
        str(tiny_model),
        "--live-dir",
        "",
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "out of GPU memory at batch size 32" in result.stderr
    assert "--set train.cuda_batch_size=16" in result.stderr
    assert not (project / "m").exists()


def test_class_weights_and_label_smoothing_shape_the_loss():
    import torch
    import torch.nn.functional as F

    from tuneloop.train import weighted_loss

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -1.0, 0.0]])
    labels = torch.tensor([0, 2, 1])
    weights = torch.tensor([0.5, 3.0, 1.0])
    outputs = type("Out", (), {"logits": logits})()
    got = weighted_loss(weights, 0.1)(outputs, labels)
    assert torch.allclose(got, F.cross_entropy(logits, labels, weight=weights, label_smoothing=0.1))
    assert not torch.allclose(got, weighted_loss(None, 0.0)(outputs, labels))


def test_not_classifier_compatible_base_is_refused(project, cli, tiny_splits):
    write(project / "weird" / "config.json", '{"model_type": "no-such-architecture"}')
    result = cli(
        "train", "--train", tiny_splits[0], "--val", tiny_splits[1], "--out", "m", "--base", "weird", "--live-dir", ""
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "weird" in result.stderr and ("not classifier-compatible" in result.stderr or "cannot load" in result.stderr)


def test_the_cpu_optimizer_is_fused_adamw(project, tiny_model, tiny_splits):
    # The per-tensor AdamW loop took 110 of MiniLM's ~500 ms a step on 2 cores, the fused kernel 17 ms (train.py).
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine trains on its GPU (fused AdamW there since the first commit); this is the CPU path")

    from tuneloop.train import build_trainer

    params = load_params(REPO / "params.yaml", TINY_TRAIN)
    trainer, _ = build_trainer(params, *tiny_splits, str(tiny_model), project / "ckpt", max_steps=1)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    assert all(p.device.type == "cpu" for group in optimizer.param_groups for p in group["params"])
