"""Provenance: where a model or a report came from (file hashes, data version, git revision, time).

Train records it in the model's tuneloop.json (what the same data, code and params reproduce) and
run.json (RUN_FILE: which revision, when, how fast), the registry in each entry's metadata, monitoring in
its verdicts. Standard library and PyYAML only: no torch or transformers import to get a hash.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DATA_DVC = "data.dvc"  # the top-level .dvc file tracking data/raw (ARCHITECTURE.md)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # every timestamp tuneloop writes: UTC, second precision, ISO 8601
# A model dir's run facts (git revision, time stamp, run time, throughput): beside tuneloop.json, not in it,
# and excluded from DVC's hash of the folder (.dvcignore), so the same data, code and params train to the same
# DVC output and a fresh clone's `make demo` leaves dvc.lock as committed.
RUN_FILE = "run.json"


def utc_now() -> str:
    """Now, in the one timestamp format tuneloop writes."""
    return datetime.now(UTC).strftime(TIME_FORMAT)


def read_run_facts(model_dir: str | Path) -> dict[str, Any]:
    """A model dir's RUN_FILE; {} when it has none (checked out by DVC, or written before it existed) or it is
    damaged: run facts describe a run, they never decide anything."""
    try:
        facts = json.loads((Path(model_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of one file's bytes, streamed (md5 is what DVC 3 records for a single file)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def weights_digest(model_dir: str | Path) -> str:
    """SHA-256 over a model dir's *.safetensors files in name order: the model's identity.

    Raises:
        FileNotFoundError: the folder holds no safetensors weights (not a folder `tuneloop train` wrote).
    """
    weights = sorted(Path(model_dir).glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    digest = hashlib.sha256()
    for path in weights:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def raw_data_version(dvc_file: str | Path = DATA_DVC) -> str | None:
    """The md5 `data.dvc` records for the raw corpus, or None when there is no data.dvc."""
    import yaml

    path = Path(dvc_file)
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def data_version(paths: dict[str, Path]) -> dict[str, Any]:
    """md5 of each input file, the raw corpus version from data.dvc, and one short id over them."""
    version: dict[str, Any] = {name: {"path": str(p), "md5": file_digest(p, "md5")} for name, p in paths.items()}
    raw = raw_data_version()
    if raw is not None:
        version["raw_dvc_md5"] = raw
    combined = "".join(v["md5"] for v in version.values() if isinstance(v, dict))
    version["id"] = hashlib.md5(combined.encode()).hexdigest()[:12]
    return version


def git_revision(cwd: str | Path | None = None) -> str | None:
    """`git rev-parse HEAD`, with `+dirty` when the tree has uncommitted changes; None outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=cwd
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")
