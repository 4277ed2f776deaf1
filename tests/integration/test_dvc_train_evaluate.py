"""`dvc repro` runs validate -> prepare -> pretrain -> train -> evaluate on demo data (tiny random BERT), a second
repro does nothing, a forced one writes the same bytes, `dvc exp run -S` switching pre-training on re-runs only
pretrain, train and evaluate, and `dvc metrics show` and `dvc plots show` work."""

import csv
import io
import json
import subprocess
import sys

import yaml

from tests.conftest import TINY_TRAIN


def dvc(*args: str, cwd=None) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout + done.stderr


def test_full_pipeline_is_reproducible_and_cached(project, cli, tiny_model):
    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "300").exit_code == 0
    assert cli("data", "import", "build/demo.csv").exit_code == 0
    params = yaml.safe_load((project / "params.yaml").read_text())
    for item in [*TINY_TRAIN, "train.epochs=2"]:
        key, value = item.split("=")
        section, name = key.split(".")
        params[section][name] = yaml.safe_load(value)
    params["train"]["base_model"] = str(tiny_model)
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    first = dvc("repro")
    for stage in ("validate", "prepare", "pretrain", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((project / "reports/eval/metrics.json").read_text())
    per_class = json.loads((project / "reports/eval/per_class.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and "card_lost" in per_class
    meta = json.loads((project / "models/candidate/tuneloop.json").read_text())
    assert meta["data"]["train"]["path"] == "data/prepared/train.csv"
    assert json.loads((project / "models/candidate/run.json").read_text())["git_revision"]

    assert "Running stage" not in dvc("repro")  # nothing changed: every stage is a cache hit
    # Re-run from scratch (as a fresh clone without a DVC cache does): the same bytes, so dvc.lock is unchanged
    # (run times, time stamps and the git revision live in run.json, which .dvcignore keeps out of the hash).
    lock = (project / "dvc.lock").read_text()
    assert "Running stage 'train'" in dvc("repro", "-f", "train", "evaluate")
    assert (project / "dvc.lock").read_text() == lock
    assert json.loads((project / "models/pretrained/pretrain.json").read_text())["enabled"] is False

    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "baseline"], check=True
    )
    # An experiment that switches pre-training on (`dvc exp run -S`, applied to the workspace): the pretrain
    # stage runs and train re-runs from its checkpoint; validate and prepare do not.
    experiment = dvc("exp", "run", "-S", "pretrain.enabled=true", "-S", "pretrain.epochs=0.2", "-S", "pretrain.lr=1e-3")
    assert "Running stage 'pretrain'" in experiment and "Running stage 'train'" in experiment
    assert "Running stage 'prepare'" not in experiment and "Running stage 'validate'" not in experiment
    meta = json.loads((project / "models/candidate/tuneloop.json").read_text())
    assert meta["base_model"] == "models/pretrained" and meta["pretrained"]["steps"] > 0
    rows = list(csv.DictReader(io.StringIO(dvc("exp", "show", "--csv"))))
    by_rev = {row["rev"]: row["pretrain.enabled"] for row in rows}
    assert by_rev["workspace"] == "True" and "False" in by_rev.values()  # the experiment beside its baseline
    assert any(row["Experiment"] and row["pretrain.enabled"] == "True" for row in rows)  # recorded as one

    shown = dvc("metrics", "show", "--json")
    assert "macro_f1" in shown and "rows_kept" in shown
    dvc("plots", "show", "-o", "plots-html")
    assert (project / "plots-html" / "index.html").stat().st_size > 0
