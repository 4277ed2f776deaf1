"""One DVC stage run on another machine (tuneloop.pipeline's hand-off): two checkouts of one toy project share
a DVC remote folder and nothing else. The sender pushes the stage's inputs, the receiver pulls them, runs the
stage alone and hands back its lock entry and metrics; afterwards the sender's pipeline is up to date."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneloop.pipeline import (
    Handback,
    StageFailed,
    apply_handback,
    hand_back,
    push_stage_inputs,
    receive_stage_inputs,
    repro,
)

DVC_YAML = """\
stages:
  make:
    cmd: python make.py
    deps: [make.py]
    outs: [data]
  use:
    cmd: python use.py
    deps: [data/a.txt, use.py]
    outs: [model]
    metrics:
      - live/metrics.json:
          cache: false
    plots:
      - live/plots:
          cache: false
"""
MAKE = "import os\nos.makedirs('data', exist_ok=True)\nopen('data/a.txt', 'w').write('inputs v1\\n')\n"
USE = """\
import json, os
for d in ('model', 'live/plots'):
    os.makedirs(d, exist_ok=True)
text = open('data/a.txt').read()
open('model/weights.txt', 'w').write(text.upper())
json.dump({'loss': len(text)}, open('live/metrics.json', 'w'))
open('live/plots/loss.tsv', 'w').write('step\\tloss\\n0\\t1.0\\n')
open('model/run.json', 'w').write('{"created_at": "now"}')
"""


def _checkout(root: Path, remote: Path | None) -> Path:
    root.mkdir()
    # run facts (provenance.RUN_FILE) are out of DVC's hash, as the project's .dvcignore has them
    files = {"dvc.yaml": DVC_YAML, "make.py": MAKE, "use.py": USE, "params.yaml": "a: 1\n", ".dvcignore": "/model/run.json\n"}
    for name, text in files.items():
        (root / name).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    config = "[core]\n    analytics = false\n"
    if remote is not None:
        config += f"    remote = shared\n['remote \"shared\"']\n    url = {remote}\n"
    (root / ".dvc" / "config").write_text(config)
    return root


def _status(root: Path) -> dict:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.status()


def test_a_stage_run_elsewhere_comes_back_as_if_it_ran_here(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    cpu, gpu = _checkout(tmp_path / "cpu", remote), _checkout(tmp_path / "gpu", remote)
    monkeypatch.chdir(cpu)  # DVC reads stage names relative to the working directory, as the flows run
    repro("make")
    (cpu / "params.yaml").write_text("a: 2\n")  # an override on the sender: the receiver must train with it
    assert push_stage_inputs("use") == ["make"]
    sent = (cpu / "params.yaml").read_text(), (cpu / "dvc.lock").read_text()

    monkeypatch.chdir(gpu)
    assert receive_stage_inputs("use", *sent) == ["make"]
    assert (gpu / "data/a.txt").read_text() == "inputs v1\n" and (gpu / "params.yaml").read_text() == "a: 2\n"
    assert repro("use", upstream=False).ran == ["use"]
    handback = hand_back("use")
    # uncached: not in the remote; run facts: left out of it by .dvcignore
    assert set(handback.files) == {"live/metrics.json", "live/plots/loss.tsv", "model/run.json"}

    travelled = Handback.from_rows(handback.rows())  # through a Prefect table artifact's rows
    assert travelled == handback
    monkeypatch.chdir(cpu)
    shutil.rmtree(gpu)  # nothing comes from the receiver's disk from here on
    apply_handback(travelled)
    assert (cpu / "model/weights.txt").read_text() == "INPUTS V1\n"
    assert (cpu / "live/metrics.json").is_file()
    assert (cpu / "model/run.json").read_text() == '{"created_at": "now"}'  # the run's facts came back too
    assert _status(cpu) == {}  # dvc.lock, outputs and metrics agree: `dvc repro` has nothing to do
    assert repro("use").ran == []


def test_no_remote_pushes_nothing_and_a_receiver_says_what_is_missing(tmp_path, monkeypatch):
    cpu, gpu = _checkout(tmp_path / "cpu", None), _checkout(tmp_path / "gpu", None)
    monkeypatch.chdir(cpu)
    repro("make")
    assert push_stage_inputs("use") == []
    lock = (cpu / "dvc.lock").read_text()
    monkeypatch.chdir(gpu)
    with pytest.raises(StageFailed, match=r"no DVC remote is configured.*dvc remote add"):
        receive_stage_inputs("use", "a: 1\n", lock)
