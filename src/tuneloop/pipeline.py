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
from tuneloop.provenance import RUN_FILE


class StageFailed(TuneloopError):
    """A DVC stage exited non-zero; the message carries the stage's own error."""


@dataclass
class StageRun:
    """What `dvc repro <stage>` did."""

    stage: str
    ran: list[str]  # stages that actually executed (empty: everything was a cache hit)
    seconds: float


def repro(stage: str, root: str | Path = ".", force: bool = False, upstream: bool = True) -> StageRun:
    """`dvc repro <stage>` (and, with `upstream`, what it depends on) via DVC's Python API.

    Unchanged stages are cache hits, so a run is reproducible with `dvc repro` alone and costs
    nothing when nothing changed. Stage commands run `python -m tuneloop`, so this interpreter's
    folder goes first on PATH while they run. `upstream=False` is `dvc repro --single-item`: a worker
    that received only this stage's inputs must not try to rebuild the stages before it.
    """
    from dvc.exceptions import ReproductionError
    from dvc.lock import LockError
    from dvc.repo import Repo

    from tuneloop.ingest import quiet_dvc

    started = time.perf_counter()
    try:
        with quiet_dvc(), _interpreter_first_on_path(), Repo(str(root)) as repo:
            stages = repo.reproduce(stage, force=force, single_item=force or not upstream)
    except ReproductionError as exc:
        cause = exc.__cause__ or exc
        raise StageFailed(f"DVC stage '{stage}' failed: {cause}. Run `dvc repro {stage}` to see its output.") from None
    except LockError:
        raise StageFailed(
            f"DVC stage '{stage}': another DVC command holds this project's lock (.dvc/tmp/lock): a second pipeline "
            "run, `dvc repro`, `dvc push` or `tuneloop data import` in the same folder. Run again when it ends; "
            "give concurrent runs their own clone of the project."
        ) from None
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


# One stage on another machine (the train stage on a GPU worker). What travels: the sender's params.yaml and
# dvc.lock as text (the receiver's checkout has the same code, not the same data versions), the stage's
# inputs and cached outputs through the shared DVC remote, and back its dvc.lock entry with the small
# uncached outputs (metrics, plots), which `dvc push` does not carry.


@dataclass
class Handback:
    """What a stage run elsewhere returns: its dvc.lock entry and its uncached outputs' text (path -> text)."""

    stage: str
    lock: dict[str, Any]
    files: dict[str, str]

    def rows(self) -> list[dict[str, str]]:
        """As table rows (path, content) for a Prefect table artifact: the lock entry first, as JSON."""
        import json

        head = {"path": f"dvc.lock:{self.stage}", "content": json.dumps(self.lock)}
        return [head, *({"path": path, "content": text} for path, text in self.files.items())]

    @classmethod
    def from_rows(cls, rows: list[dict[str, str]]) -> Handback:
        """The inverse of `rows`."""
        import json

        head, *files = rows
        stage = head["path"].removeprefix("dvc.lock:")
        return cls(stage=stage, lock=json.loads(head["content"]), files={r["path"]: r["content"] for r in files})


def workspace_id(root: str | Path = ".") -> str:
    """This machine and project folder: two workers with the same id share the workspace (nothing to copy)."""
    import socket

    return f"{socket.gethostname()}:{Path(root).resolve()}"


def push_stage_inputs(stage: str, root: str | Path = ".") -> list[str]:
    """Push the outputs of the stages `stage` depends on to the default DVC remote, so another machine can
    pull them. Returns those stages (nothing is pushed without a remote)."""
    from dvc.repo import Repo

    from tuneloop.ingest import quiet_dvc

    with quiet_dvc(), Repo(str(root)) as repo:
        upstream = _upstream(repo, stage)
        if upstream and repo.config["core"].get("remote"):
            repo.push(targets=upstream)
            return upstream
    return []


def receive_stage_inputs(stage: str, params_text: str, lock_text: str, root: str | Path = ".") -> list[str]:
    """On the receiving machine: take the sender's params.yaml and dvc.lock, then pull what `stage` depends
    on from the default DVC remote. Returns the upstream stages pulled.

    Raises:
        StageFailed: no DVC remote is configured here, so the inputs cannot arrive.
    """
    from dvc.repo import Repo

    from tuneloop.ingest import quiet_dvc
    from tuneloop.tabular import write_text_atomic

    base = Path(root)
    write_text_atomic(params_text, base / "params.yaml")
    write_text_atomic(lock_text, base / "dvc.lock")
    with quiet_dvc(), Repo(str(root)) as repo:
        if not repo.config["core"].get("remote"):
            raise StageFailed(
                f"stage '{stage}': its inputs are on another machine and no DVC remote is configured in "
                f"{base.resolve()}. Add one both machines reach: `dvc remote add -d team s3://...` (README, Scale-out)."
            )
        upstream = _upstream(repo, stage)
        if upstream:
            repo.pull(targets=upstream, force=True)
    return upstream


def hand_back(stage: str, root: str | Path = ".") -> Handback:
    """After `stage` ran here: push its cached outputs to the default DVC remote and return its dvc.lock
    entry with the text of its uncached outputs and of the run facts (provenance.RUN_FILE) in its cached
    folders, which .dvcignore keeps out of the remote, for `apply_handback` on the sending machine."""
    from dvc.repo import Repo
    from dvc.utils.serialize import load_yaml

    from tuneloop.ingest import quiet_dvc

    base = Path(root)
    with quiet_dvc(), Repo(str(root)) as repo:
        (found,) = repo.stage.collect(stage)
        repo.push(targets=[stage])
        uncached = [Path(out.def_path) for out in found.outs if not out.use_cache]
        facts = [Path(out.def_path) / RUN_FILE for out in found.outs if out.use_cache]
    texts = [f for p in uncached for f in _files(base / p)] + [base / f for f in facts if (base / f).is_file()]
    files = {f.relative_to(base).as_posix(): f.read_text(encoding="utf-8") for f in texts}
    lock = load_yaml(str(base / "dvc.lock"))["stages"][stage]
    return Handback(stage=stage, lock=_plain(lock), files=files)


def apply_handback(handback: Handback, root: str | Path = ".") -> None:
    """On the sending machine: write the stage's uncached outputs and dvc.lock entry, then pull its cached
    outputs from the default DVC remote; afterwards the stage is up to date here, as if it had run here."""
    from dvc.repo import Repo
    from dvc.utils.serialize import modify_yaml

    from tuneloop.ingest import quiet_dvc

    base = Path(root)
    facts = {name: text for name, text in handback.files.items() if Path(name).name == RUN_FILE}
    _write_texts({name: text for name, text in handback.files.items() if name not in facts}, base)
    with modify_yaml(str(base / "dvc.lock")) as lock:
        lock.setdefault("schema", "2.0")
        lock.setdefault("stages", {})[handback.stage] = handback.lock
    with quiet_dvc(), Repo(str(root)) as repo:
        repo.pull(targets=[handback.stage], force=True)
    _write_texts(facts, base)  # into the folders the pull checked out


def _write_texts(files: dict[str, str], base: Path) -> None:
    for name, text in files.items():
        target = base / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _files(path: Path) -> list[Path]:
    """A file, or every file under a folder (dvclive's plots), or nothing when it is not there."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def _upstream(repo: Any, stage: str) -> list[str]:
    """The stages whose outputs `stage` depends on directly (DVC's graph points from a stage to its deps')."""
    (found,) = repo.stage.collect(stage)
    return sorted(s.addressing for s in repo.index.graph.successors(found))


def _plain(value: Any) -> Any:
    """ruamel's commented mappings as plain dicts and lists (JSON-able, for a Prefect parameter or artifact)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
