"""Model registry on BentoML's model store.

Every trained model becomes a store entry (`bentoml.models.create`) holding the model dir and
metadata: evaluation metrics, gate verdict, params, DVC data version, git revision, base model,
created time. Its `stage` label is challenger, champion or archived.

Which model is champion is decided by one pointer file beside the store, replaced atomically
(write + rename) under a file lock; the `stage` labels are derived from the pointer and the
promotion history and rewritten under the same lock. A crash between the two steps therefore
never leaves zero or two champions: the pointer names exactly one, and the next registry call
repairs the labels. Concurrent promotions serialise on the lock.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop import provenance
from tuneloop.errors import TuneloopError
from tuneloop.model import META_FILE
from tuneloop.provenance import utc_now

log = logging.getLogger(__name__)

MODEL_NAME = "tuneloop-classifier"


class RegistryError(TuneloopError):
    """A registry operation cannot be done as asked (unknown tag, nothing to roll back to, ...)."""


def bentoml_home() -> Path:
    """BentoML's home folder (BENTOML_HOME, default ~/bentoml), where the model store lives."""
    return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))


def _state_dir() -> Path:
    path = bentoml_home() / "tuneloop"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked() -> Iterator[None]:
    from filelock import FileLock

    with FileLock(str(_state_dir() / "registry.lock"), timeout=120):
        yield


def _read_state() -> dict[str, Any]:
    path = _state_dir() / "champion.json"
    return json.loads(path.read_text()) if path.is_file() else {"champion": None, "history": []}


def _write_state(state: dict[str, Any]) -> None:
    directory = _state_dir()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".champion.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / "champion.json")  # the one atomic switch of a promotion


def weights_digest(model_dir: Path) -> str:
    """sha256 of the weights: the same model registered twice is one entry."""
    try:
        return provenance.weights_digest(model_dir)
    except FileNotFoundError:
        raise RegistryError(
            f"{model_dir}: no *.safetensors weights. Register a folder written by `tuneloop train`."
        ) from None


@dataclass
class Entry:
    """A registry entry as `tuneloop models list` shows it."""

    tag: str
    stage: str
    created: str
    metadata: dict[str, Any]
    path: Path


def _entry(model: Any) -> Entry:
    return Entry(
        tag=str(model.tag),
        stage=model.info.labels.get("stage", "challenger"),
        created=model.info.creation_time.strftime("%Y-%m-%d %H:%M:%S"),
        metadata=dict(model.info.metadata),
        path=Path(model.path),
    )


def entries() -> list[Entry]:
    """Every tuneloop model in the store, newest first, with labels reconciled to the pointer."""
    import bentoml

    with _locked():
        _reconcile(_read_state())
        models = [m for m in bentoml.models.list() if m.tag.name == MODEL_NAME]
    return sorted((_entry(m) for m in models), key=lambda e: e.created, reverse=True)


def get(tag: str) -> Entry:
    """One entry by tag (`name:version`, or just the version)."""
    import bentoml
    from bentoml.exceptions import NotFound

    full = tag if ":" in tag else f"{MODEL_NAME}:{tag}"
    try:
        return _entry(bentoml.models.get(full))
    except NotFound:
        raise RegistryError(
            f"model {tag} is not in the store ({bentoml_home() / 'models'}). `tuneloop models list` shows what is."
        ) from None


def champion_tag() -> str | None:
    """The champion's tag from the pointer alone (no store lookup), or None before the first promotion."""
    return _read_state()["champion"]


def champion() -> Entry | None:
    """The current champion, or None before the first promotion."""
    tag = champion_tag()
    return get(tag) if tag else None


def register(
    model_dir: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
    reference: Path | None = None,
) -> Entry:
    """Save a model dir into the store as a challenger; an identical model is not saved twice.

    `reference`: the monitoring reference (tuneloop.monitor.reference), stored in the entry as
    reference.parquet with its SHA-256 in the metadata.
    """
    import bentoml

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    digest = weights_digest(model_dir)
    for model in bentoml.models.list():
        if model.tag.name == MODEL_NAME and model.info.labels.get("weights") == digest[:16]:
            log.info("model already registered as %s", model.tag)
            return _entry(model)
    headline = {
        k: metrics[k]
        for k in ("accuracy", "macro_f1", "weighted_f1", "ece", "log_loss", "roc_auc_ovr")
        if metrics and metrics.get(k) is not None
    }
    metadata = {
        "metrics": headline,
        "val_metrics": meta.get("val_metrics", {}),
        "gate": {"passed": gate["passed"], "failed_checks": gate["failed_checks"]} if gate else {},
        "params": meta.get("params", {}),
        "data_version": meta.get("data", {}).get("id"),
        "data": meta.get("data", {}),
        "git_revision": meta.get("git_revision") or "unknown",
        "base_model": meta.get("base_model"),
        "labels": meta.get("labels", []),
        "trained_at": meta.get("created_at"),
        "registered_at": utc_now(),
        "weights_sha256": digest,
    }
    metadata = _no_nulls(metadata)
    metadata.update(_reference_metadata(reference))
    labels = {"stage": "challenger", "data_version": str(meta.get("data", {}).get("id")), "weights": digest[:16]}
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as model:
        shutil.copytree(model_dir, model.path, dirs_exist_ok=True)
        if reference is not None:
            shutil.copyfile(reference, Path(model.path) / REFERENCE_FILE)
    log.info("registered %s", model.tag)
    return get(str(model.tag))


# ---- monitoring reference (issue 12): stored beside the weights, content-hashed
REFERENCE_FILE = "reference.parquet"


def _reference_metadata(reference: Path | None) -> dict[str, Any]:
    if reference is None:
        return {}
    if not Path(reference).is_file():
        raise RegistryError(f"{reference}: monitoring reference not found (build it with `tuneloop monitor reference`)")
    return {"reference": REFERENCE_FILE, "reference_sha256": provenance.file_digest(reference)}


def _no_nulls(value: Any) -> Any:
    """BentoML metadata takes no None: drop null entries (absent means unknown)."""
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value if v is not None]
    return value


def promote(tag: str, *, reason: str, forced: bool = False) -> Entry:
    """Make `tag` the champion (the previous one is archived); recorded in the history."""
    entry = get(tag)
    with _locked():
        state = _read_state()
        if state["champion"] == entry.tag:
            log.info("%s is already the champion", entry.tag)
            return entry
        state["history"].append(
            {
                "action": "promote",
                "tag": entry.tag,
                "previous": state["champion"],
                "reason": reason,
                "forced": forced,
                "at": utc_now(),
            }
        )
        state["champion"] = entry.tag
        _write_state(state)
        _reconcile(state)
    return get(entry.tag)


def rollback(*, reason: str) -> Entry:
    """Put the previous champion back (the current one is archived); recorded in the history."""
    with _locked():
        state = _read_state()
        current = state["champion"]
        # The champion the current one was promoted over (a rollback entry would point forward again).
        previous = next(
            (
                h["previous"]
                for h in reversed(state["history"])
                if h["action"] == "promote" and h["tag"] == current and h["previous"]
            ),
            None,
        )
        if current is None or previous is None:
            raise RegistryError(
                "nothing to roll back to: there is no previous champion. "
                "`tuneloop models list` shows the history of stages."
            )
        entry = get(previous)  # still in the store, before the pointer names it
        state["history"].append(
            {
                "action": "rollback",
                "tag": entry.tag,
                "previous": current,
                "reason": reason,
                "forced": False,
                "at": utc_now(),
            }
        )
        state["champion"] = entry.tag
        _write_state(state)
        _reconcile(state)
    return get(entry.tag)


def history() -> list[dict[str, Any]]:
    """Every promotion and rollback, oldest first."""
    return list(_read_state()["history"])


def _reconcile(state: dict[str, Any]) -> None:
    """Rewrite `stage` labels to agree with the pointer (caller holds the lock)."""
    import bentoml

    former = {h["tag"] for h in state["history"]} | {h["previous"] for h in state["history"] if h["previous"]}
    for model in bentoml.models.list():
        if model.tag.name != MODEL_NAME:
            continue
        tag = str(model.tag)
        stage = "champion" if tag == state["champion"] else "archived" if tag in former else "challenger"
        if model.info.labels.get("stage") != stage:
            _set_label(model, "stage", stage)


def _set_label(model: Any, key: str, value: str) -> None:
    """Rewrite one label in the entry's model.yaml, atomically."""
    from bentoml._internal.models.model import MODEL_YAML_FILENAME, ModelInfo

    info = model.info
    updated = ModelInfo(
        tag=info.tag,
        module=info.module,
        signatures=info.signatures,
        labels={**info.labels, key: value},
        options=info.options,
        metadata=info.metadata,
        context=info.context,
        api_version=info.api_version,
        creation_time=info.creation_time,
    )
    target = Path(model.path) / MODEL_YAML_FILENAME
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".model.", suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        updated.dump(handle)
    os.replace(tmp, target)
