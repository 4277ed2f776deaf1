"""Library steps the Prefect flows call: DVC stages through DVC's Python API, and params edits.

Nothing here imports Prefect: every step is usable and tested on its own; flows/ only sequences
them, adds retries, logs and artifacts.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError


class StageFailed(TuneloopError):
    """A DVC stage exited non-zero; the message carries the stage's own error."""


@dataclass
class StageRun:
    """What `dvc repro <stage>` did."""

    stage: str
    ran: list[str]  # stages that actually executed (empty: everything was a cache hit)
    seconds: float


def repro(stage: str, root: str | Path = ".", force: bool = False) -> StageRun:
    """`dvc repro <stage>` (and what it depends on) via DVC's Python API.

    Unchanged stages are cache hits, so a run is reproducible with `dvc repro` alone and costs
    nothing when nothing changed. Stage commands run `python -m tuneloop`, so this interpreter's
    folder goes first on PATH while they run.
    """
    from dvc.exceptions import ReproductionError
    from dvc.repo import Repo

    from tuneloop.ingest import quiet_dvc

    started = time.perf_counter()
    try:
        with quiet_dvc(), _interpreter_first_on_path(), Repo(str(root)) as repo:
            stages = repo.reproduce(stage, force=force, single_item=force)
    except ReproductionError as exc:
        cause = exc.__cause__ or exc
        raise StageFailed(f"DVC stage '{stage}' failed: {cause}. Run `dvc repro {stage}` to see its output.") from None
    ran = [s.addressing for s in stages]
    return StageRun(stage=stage, ran=ran, seconds=time.perf_counter() - started)


@contextmanager
def _interpreter_first_on_path() -> Iterator[None]:
    """Stage commands run `python -m tuneloop`: this interpreter's folder goes first on PATH while DVC
    runs them, and PATH is restored afterwards (nothing changes the environment for the rest of the process)."""
    here, before = str(Path(sys.executable).parent), os.environ.get("PATH", "")
    os.environ["PATH"] = f"{here}{os.pathsep}{before}"
    try:
        yield
    finally:
        os.environ["PATH"] = before


def apply_overrides(overrides: list[str], params_path: str | Path = "params.yaml") -> None:
    """Write `section.key=value` overrides into params.yaml (comments kept), as `dvc exp run -S` does.

    DVC stages read params.yaml, so an override must live there to reach them and to be
    recorded in dvc.lock. The result is validated first; an invalid override changes nothing.
    """
    if not overrides:
        return
    from dvc.utils.serialize import modify_yaml

    from tuneloop.config import apply_override, load_params

    load_params(params_path, overrides)  # raises ConfigError naming the key before anything is written
    with modify_yaml(str(params_path)) as data:
        for item in overrides:
            apply_override(data, item)


def load_flow(path: str | Path, name: str) -> Any:
    """The flow object `name` of a flows/ file (flows/ is not a package: loaded from its path).

    Raises:
        TuneloopError: the file is not there (run from the project root).
    """
    import importlib.util

    file = Path(path)
    if not file.is_file():
        raise TuneloopError(f"{file}: not found. Run from the project root (where flows/ is).")
    spec = importlib.util.spec_from_file_location(f"tuneloop_flows_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return getattr(module, name)
