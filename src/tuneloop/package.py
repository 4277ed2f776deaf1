"""Packaging: build a Bento (service + champion model) from bentofile.yaml."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from tuneloop.errors import TuneloopError
from tuneloop.registry import task_of

log = logging.getLogger(__name__)


def source_digest(build_ctx: str | Path, bentofile: str | Path) -> str:
    """Digest of what a Bento packs besides the model: every Python file under the build context
    and the bentofile. A Bento built from older code is not reused."""
    digest = hashlib.sha256()
    root = Path(build_ctx)
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    if Path(bentofile).is_file():
        digest.update(Path(bentofile).read_bytes())
    return digest.hexdigest()[:12]


def bento_name(task: str) -> str:
    """Each task is its own Bento (and service): `tuneloop_<task>`."""
    return f"tuneloop_{task.replace('-', '_')}"


def build_bento(
    model_tag: str, serve: dict | None = None, bentofile: str | Path = "bentofile.yaml", build_ctx: str | Path = "src"
) -> str:
    """`bentoml build` with the service pinned to `model_tag`; returns the Bento tag.

    `serve` (params.yaml's `serve:` section) and the model tag are baked in as Bento arguments,
    so the Bento serves that model with the settings it was built with, whatever the champion
    is later. An existing Bento already built for this model, settings and service code is
    reused (labels record all three).
    """
    import bentoml

    if serve is None:
        from tuneloop.config import load_params

        serve = load_params().serve.model_dump()

    # Hashed whole, so Bentos built before the model tag was an argument are not reused.
    arguments = {**serve, "model_tag": model_tag}
    labels = {
        "owner": "tuneloop",
        "model": model_tag.replace(":", "_"),
        "serve": hashlib.md5(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:12],
        "code": source_digest(build_ctx, bentofile),
    }
    name = bento_name(task_of(model_tag))
    for bento in bentoml.bentos.list():
        if bento.tag.name == name and all(bento.info.labels.get(k) == v for k, v in labels.items()):
            log.info("Bento %s already packs %s with these serve settings and this code", bento.tag, model_tag)
            return str(bento.tag)
    if not Path(bentofile).is_file():
        raise TuneloopError(f"{bentofile}: not found. Run from the project root (where bentofile.yaml is).")
    # The service module takes its model from the `model_tag` argument, at build and when served.
    bento = bentoml.bentos.build_bentofile(
        str(bentofile), name=name, build_ctx=str(build_ctx), reload=True, args=arguments, labels=labels
    )
    log.info("built Bento %s with %s", bento.tag, model_tag)
    return str(bento.tag)
