"""Shared fixtures: an isolated project folder and an in-process CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TUNELOOP_SHARED_DATA", REPO.parent / "shared" / "data"))

# Offline, quiet, no telemetry: set before any library under test is imported.
for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GX_ANALYTICS_ENABLED": "False",
                   "DVC_NO_ANALYTICS": "1", "BENTOML_DO_NOT_TRACK": "true",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(key, value)
# Stages run through `dvc repro` call `python -m tuneloop`: this interpreter must be first on PATH.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


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
    from typer.testing import CliRunner

    from tuneloop.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # an unexpected crash: let pytest show it
    return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh git + DVC project with the repository's params.yaml and dvc.yaml; cwd inside it."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    remote = tmp_path / "remote"
    (root / ".dvc" / "config").write_text(
        f"[core]\n    remote = local\n    analytics = false\n['remote \"local\"']\n    url = {remote}\n"
    )
    # dvc.yaml lists src/tuneloop files as deps; point them at the real sources.
    (root / "src").mkdir()
    (root / "src" / "tuneloop").symlink_to(REPO / "src" / "tuneloop")
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
