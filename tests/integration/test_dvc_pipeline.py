"""Real DVC: data.dvc tracks the import, a push/pull round trip restores identical bytes, and the
validate -> prepare stages are cached per params key."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, labeled_csv, write


def dvc(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_is_tracked_and_survives_push_and_pull(project, cli):
    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "400").exit_code == 0
    result = cli("data", "import", "build/demo.csv")
    assert result.exit_code == 0, result.output
    raw = project / "data" / "raw" / "corpus.csv"
    tracked = yaml.safe_load((project / "data.dvc").read_text())
    assert tracked["outs"][0]["path"] == "data/raw" and tracked["outs"][0]["nfiles"] == 1
    before = sha(raw)
    dvc("push", "data.dvc")
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data" / "raw")
    dvc("pull", "data.dvc")
    assert sha(raw) == before


def test_the_committed_lock_records_what_make_demo_makes_in_its_data_stages(project, cli):
    """`make demo`'s validate and prepare (no training: the same bytes on any CPU) write the outputs the committed
    dvc.lock records. Once the lock's validation-report outs were left from older code (only deps were brought in
    step), so a new user's `make demo` left dvc.lock modified on every machine."""
    makefile = (REPO / "Makefile").read_text()
    assert "--rows $(DEMO_ROWS) --seed 42" in makefile and "DEMO_ROWS ?= 2000" in makefile  # what make demo runs
    assert cli("data", "demo", "--out", "build/demo.csv", "--rows", "2000", "--seed", "42").exit_code == 0
    assert cli("data", "import", "build/demo.csv").exit_code == 0
    dvc("repro", "prepare")
    committed = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    made = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for stage in ("validate", "prepare"):
        assert made[stage]["deps"] == committed[stage]["deps"], f"{stage}: inputs differ from the committed lock"
        assert made[stage]["outs"] == committed[stage]["outs"], f"{stage}: run `make demo` and commit dvc.lock"


def test_repro_caches_and_reruns_only_what_a_param_touches(project, cli):
    write(project / "in.csv", labeled_csv(20, ("a", "b", "c")))
    assert cli("data", "import", "in.csv").exit_code == 0
    first = dvc("repro", "prepare")
    assert "Running stage 'validate'" in first and "Running stage 'prepare'" in first
    train = pd_read(project / "data/prepared/train.csv")
    assert (
        len(train) + len(pd_read(project / "data/prepared/val.csv")) + len(pd_read(project / "data/prepared/test.csv"))
        == 60
    )

    again = dvc("repro", "prepare")
    assert "Running stage" not in again  # nothing changed, nothing ran

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["prepare"]["val_fraction"] = 0.3
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    changed = dvc("repro", "prepare")
    assert "Running stage 'prepare'" in changed
    assert "Running stage 'validate'" not in changed
    assert len(pd_read(project / "data/prepared/val.csv")) == 18


def test_failed_validation_stops_the_pipeline(project, cli):
    write(project / "in.csv", labeled_csv(20, ("a", "b")) + "tiny class,c\n")
    assert cli("data", "import", "in.csv").exit_code == 0
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare"], capture_output=True, text=True)
    assert done.returncode != 0
    assert "class 'c' has 1 rows" in done.stdout + done.stderr
    assert not (project / "data" / "prepared").exists()


def pd_read(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def test_editing_a_module_a_stage_imports_reruns_that_stage(project, cli):
    """tabular.py is read by every stage but named by none of the old dvc.yaml deps of validate's module."""
    (project / "src" / "tuneloop").unlink()  # a private copy of the sources: this test edits one
    shutil.copytree(
        Path(__file__).resolve().parents[2] / "src" / "tuneloop",
        project / "src" / "tuneloop",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    write(project / "in.csv", labeled_csv(20, ("a", "b", "c")))
    assert cli("data", "import", "in.csv").exit_code == 0
    dvc("repro", "prepare")
    assert "changed" not in dvc("status", "validate")
    with open(project / "src" / "tuneloop" / "tabular.py", "a", encoding="utf-8") as handle:
        handle.write("\n# an edit to a module validate imports\n")
    status = dvc("status", "validate", "prepare")
    assert "validate:" in status and "modified:" in status and "src/tuneloop/tabular.py" in status
    assert "prepare:" in status  # prepare reads tabular.py too
    again = dvc("repro", "prepare")
    assert "Running stage 'validate'" in again


def test_a_stage_while_another_dvc_command_holds_the_lock_is_a_clear_failure(project, cli):
    """A second pipeline run (or `dvc push`) in the same folder: DVC's LockError used to escape the flow and end
    `tuneloop pipeline run` in a traceback."""
    import zc.lockfile

    from tuneloop.pipeline import StageFailed, repro

    write(project / "in.csv", labeled_csv(20, ("a", "b", "c")))
    assert cli("data", "import", "in.csv").exit_code == 0
    held = zc.lockfile.LockFile(str(project / ".dvc" / "tmp" / "lock"))
    try:
        with pytest.raises(StageFailed, match=r"another DVC command holds this project's lock .*own clone"):
            repro("validate", project)
    finally:
        held.close()
    assert repro("validate", project).ran == ["validate"]  # and once it is free, the stage runs
