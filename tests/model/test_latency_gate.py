"""The gate's latency check is judged against the champion timed in the same run, interleaved, so a busy or
stalling machine does not fail an equally fast model, and a genuinely slower one fails on an idle, a busy and a
stalling machine."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO
from tuneloop.config import load_params
from tuneloop.gate import interleaved_latency, latency_checks

TEXTS = [f"my card number {i} was charged twice for the same order, please refund me" for i in range(20)]


def _classifier(tiny_model: Path, layers: int, hidden: int, seed: int):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tuneloop.model import Classifier

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4 if hidden < 384 else 12,
        intermediate_size=hidden * 4,
        max_position_embeddings=128,
        num_labels=3,
    )
    model = BertForSequenceClassification(config).eval()
    return Classifier(
        model=model,
        tokenizer=AutoTokenizer.from_pretrained(tiny_model),
        labels=["a", "b", "c"],
        meta={},
        path=tiny_model,
    )


@contextmanager
def busy_cores(n: int = 2):
    """Another process keeps every core busy (what made the old absolute ceiling fail scheduled runs)."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()


# Stops the process given for 10-30 ms every 30-120 ms, as a cgroup's CPU quota or a noisy neighbour does (what
# failed the busy case in CI with one call per request: an equal model measured 1.26x). On SIGTERM it lets the
# process go on before it exits, so the test never leaves itself stopped.
STALLER = """
import os, random, signal, sys, time
pid = int(sys.argv[1])
signal.signal(signal.SIGTERM, lambda *_: (os.kill(pid, signal.SIGCONT), os._exit(0)))
while True:
    time.sleep(random.uniform(0.03, 0.12))
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    os.kill(pid, signal.SIGSTOP)
    time.sleep(random.uniform(0.01, 0.03))
    os.kill(pid, signal.SIGCONT)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
"""


@contextmanager
def stalls():
    staller = subprocess.Popen([sys.executable, "-c", STALLER, str(os.getpid())])
    try:
        yield
    finally:
        staller.terminate()
        staller.wait()


@pytest.fixture(scope="module")
def gate_params():
    return load_params(REPO / "params.yaml").gate  # max_latency_ratio 1.25


@pytest.mark.parametrize(
    "machine",
    [pytest.param("idle", marks=pytest.mark.heavy), pytest.param("busy", marks=pytest.mark.system), pytest.param("stalls", marks=pytest.mark.system)],
)
def test_same_size_challenger_passes_and_twice_the_layers_fails(tiny_model, gate_params, machine):
    # MiniLM's width: at 384 the layers' work dominates a single-text call, as it does for real models
    # (2 layers against 4: measured 0.97-1.00 and 1.70-1.88 idle, busy and stalling, as 3 against 6 were; on
    # a 2-core AVX-512 box, 2026-12-05: 0.99-1.01 and 1.67-1.73 idle or stalling, 1.37-1.38 with busy cores)
    champion = _classifier(tiny_model, layers=2, hidden=384, seed=0)
    same_size = _classifier(tiny_model, layers=2, hidden=384, seed=1)
    deeper = _classifier(tiny_model, layers=4, hidden=384, seed=2)
    with {"idle": _nothing, "busy": busy_cores, "stalls": stalls}[machine]():
        fair = interleaved_latency(same_size, champion, TEXTS, 100)
        slow = interleaved_latency(deeper, champion, TEXTS, 100)
    ok = {c.name: c for c in latency_checks(fair, gate_params)}
    assert ok["p95_latency_ratio"].passed, ok["p95_latency_ratio"].why
    bad = {c.name: c for c in latency_checks(slow, gate_params)}
    assert not bad["p95_latency_ratio"].passed, bad["p95_latency_ratio"].why
    assert slow["ratio"] > fair["ratio"] + 0.2  # twice the layers measures clearly slower, not just past the ceiling
    assert "load average" in bad["p95_latency_ratio"].why and "interleaved" in bad["p95_latency_ratio"].why


def test_without_a_champion_the_absolute_figure_is_reported_as_machine_dependent(tiny_model, gate_params):
    alone = interleaved_latency(_classifier(tiny_model, 2, 64, 0), None, TEXTS, 20)
    (check,) = latency_checks(alone, gate_params)
    assert check.name == "p95_latency_ms" and "depends on the machine" in check.why and "ratio" not in alone


@contextmanager
def _nothing():
    yield
