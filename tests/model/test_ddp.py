"""Data-parallel training on the CPU (gloo): `tuneloop train --nproc 2` launches torchrun itself, takes the
same steps as one process with the same global batch, writes one model, and resumes after a crash."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, TINY_TRAIN, save_tiny_bert, sentiment_rows, write

pytestmark = pytest.mark.integration  # launches torchrun process groups

# Global batch 4 (TINY_TRAIN) over 2 processes; an evaluation (and checkpoint) every 6 steps, a log line every
# step. Without dropout this model needs the higher rate to learn within 54 steps (measured).
DDP_TRAIN = [*TINY_TRAIN, "train.lr=0.005", "train.epochs=3", "train.eval_steps=6", "train.save_total_limit=20"]


@pytest.fixture(scope="module")
def dropout_free_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random BERT without dropout: with dropout each process draws its own masks, so 1 and 2
    processes could not take bit-comparable steps."""
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), **no_dropout)


@dataclass
class Runs:
    """One module-wide folder: the tiny splits, and a 1-process and a 2-process run of the same training."""

    root: Path
    splits: tuple[Path, Path]
    one: subprocess.CompletedProcess
    two: subprocess.CompletedProcess


def _cmd(splits, base: Path, out: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "tuneloop", "train", "--train", str(splits[0]), "--val", str(splits[1])]
    cmd += ["--out", out, "--base", str(base), "--params", str(REPO / "params.yaml"), *extra]
    return cmd + [a for o in DDP_TRAIN for a in ("--set", o)]


def _losses(live: Path) -> list[float]:
    rows = (live / "plots" / "metrics" / "loss.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[1]) for row in rows]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, dropout_free_model: Path) -> Runs:
    root = tmp_path_factory.mktemp("ddp")
    splits = (write(root / "train.csv", sentiment_rows(24, seed=0)), write(root / "val.csv", sentiment_rows(6, seed=1)))
    one = _run(_cmd(splits, dropout_free_model, "one", "--live-dir", "live1"), root)
    two = _run(_cmd(splits, dropout_free_model, "two", "--live-dir", "live2", "--nproc", "2"), root)
    return Runs(root, splits, one, two)


def test_two_processes_take_the_steps_of_one_and_write_one_model(runs):
    one, two, root = runs.one, runs.two, runs.root
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]

    single, parallel = _losses(root / "live1"), _losses(root / "live2")
    assert len(single) == len(parallel) >= 20  # a logged loss per step
    assert max(abs(a - b) for a, b in zip(single, parallel)) < 1e-4
    assert single[-1] < single[0] * 0.8  # it learnt: the curves compared are a real training run
    meta = json.loads((root / "two" / "tuneloop.json").read_text())
    assert meta["processes"] == 2 and json.loads((root / "one" / "tuneloop.json").read_text())["processes"] == 1
    assert meta["steps"] == len(parallel)
    # rank 0 alone writes the model and reports; no find_unused_parameters traversal (PyTorch warns about it)
    assert two.stderr.count("model written to") == 1 and two.stdout.count("trained two") == 1
    assert "find_unused_parameters" not in two.stderr
    assert not list(root.glob(".two.tmp*")) and not (root / "two.checkpoints").exists()


def test_resume_under_ddp_after_a_crash(runs, dropout_free_model):
    assert runs.two.returncode == 0, runs.two.stderr[-3000:]
    root = runs.root
    cmd = _cmd(runs.splits, dropout_free_model, "crashed", "--live-dir", "", "--nproc", "2")
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = root / "crashed.checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.02)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "crashed" in " ".join(p.cmdline())]
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and torchrun: a crash, no final save
    proc.wait()
    # torchrun starts each rank in its own session, out of the killed group: they must stop on their own
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert len(workers) >= 3 and not alive, f"orphaned training processes: {alive}"
    assert not (root / "crashed").exists(), "training finished before the kill; the test proved nothing"

    resumed = _run([*cmd, "--resume"], root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = json.loads((root / "crashed" / "tuneloop.json").read_text())
    want = json.loads((root / "two" / "tuneloop.json").read_text())  # the same run, uninterrupted
    assert got["steps"] == want["steps"]
    for key in ("macro_f1", "accuracy", "loss"):
        assert got["val_metrics"][key] == pytest.approx(want["val_metrics"][key], abs=1e-4)


def test_a_global_batch_that_does_not_split_is_one_message_before_launch(runs, dropout_free_model):
    result = _run(_cmd(runs.splits, dropout_free_model, "m", "--live-dir", "", "--nproc", "3"), runs.root)
    assert result.returncode == 1  # batch 4 over 3 processes
    assert "train.batch_size=4 is the global batch" in result.stderr and "multiple of 3" in result.stderr
    assert "Traceback" not in result.stderr and "torch.distributed.run" not in result.stderr  # nothing launched
    assert not (runs.root / "m").exists()


def test_the_learning_rate_scales_with_the_gpu_batch_only_when_asked():
    from tuneloop.config import load_params
    from tuneloop.train import learning_rate

    base = ["train.lr=0.0001", "train.batch_size=32", "train.cuda_batch_size=256"]
    rate = {
        mode: learning_rate(load_params(REPO / "params.yaml", [*base, f"train.lr_scaling={mode}"]), cuda=True)
        for mode in ("none", "linear", "sqrt")
    }
    assert rate == pytest.approx({"none": 1e-4, "linear": 8e-4, "sqrt": 1e-4 * 8**0.5})
    cpu = load_params(REPO / "params.yaml", [*base, "train.lr_scaling=linear"])
    assert learning_rate(cpu, cuda=False) == 1e-4  # the CPU batch is the one the rate is given for
