"""Model registry on BentoML's model store, one registry model per task.

A task is one classifier (intent routing, sentiment, ...): `task.name` in params.yaml. Its models
are the store entries named `tuneloop-<task>`; it has its own champion pointer, history, Bento and
service, so one platform runs several side by side.

Every trained model becomes a store entry (`bentoml.models.create`) holding the model dir and
metadata: evaluation metrics, gate verdict, params, DVC data version, git revision, base model,
created time. Its `stage` label is challenger, champion or archived.

Which model is a task's champion is decided by one pointer file beside the store
(`$BENTOML_HOME/tuneloop/<task>/champion.json`), replaced atomically (write + rename) under a file
lock; the `stage` labels are derived from the pointer and the promotion history and rewritten under
the same lock. A crash between the two steps therefore never leaves zero or two champions: the
pointer names exactly one, and the next registry call repairs the labels. Concurrent promotions
serialise on the lock. Reading the registry creates nothing.
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
from tuneloop.errors import TuneloopError, first_line
from tuneloop.model import META_FILE
from tuneloop.provenance import read_run_facts, utc_now

log = logging.getLogger(__name__)

PREFIX = "tuneloop-"
DEFAULT_TASK = "classifier"  # params.yaml's task.name out of the box
MODEL_NAME = f"{PREFIX}{DEFAULT_TASK}"


class RegistryError(TuneloopError):
    """A registry operation cannot be done as asked (unknown tag, nothing to roll back to, ...)."""


def model_name(task: str) -> str:
    """The registry (BentoML model) name of a task's models."""
    return f"{PREFIX}{task}"


def task_of(tag: str) -> str:
    """The task a full tag `tuneloop-<task>:<version>` belongs to."""
    name = tag.split(":", 1)[0]
    if not name.startswith(PREFIX):
        raise RegistryError(f"model {tag} is not a tuneloop model (names start with '{PREFIX}').")
    return name[len(PREFIX) :]


def full_tag(tag: str, task: str = DEFAULT_TASK) -> str:
    """`name:version` as given, or `version` alone completed with the task's model name.

    Raises:
        RegistryError: not a valid BentoML tag (e.g. `a:b:c`).
    """
    from bentoml import Tag

    candidate = tag.strip() if ":" in tag else f"{model_name(task)}:{tag.strip()}"
    try:
        parsed = Tag.from_taglike(candidate)
    except Exception as exc:  # BentoML raises ValueError or its own InvalidArgument
        raise RegistryError(
            f"invalid model tag {tag!r} ({exc}): expected NAME:VERSION or VERSION, "
            "as `tuneloop models list` prints them."
        ) from None
    return str(parsed)


def bentoml_home() -> Path:
    """BentoML's home folder (BENTOML_HOME, default ~/bentoml), where the model store lives."""
    return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))


def _state_dir(task: str) -> Path:
    from tuneloop.config import check_task_name

    return bentoml_home() / "tuneloop" / check_task_name(task)


@contextmanager
def _locked(task: str) -> Iterator[None]:
    from filelock import FileLock

    directory = _state_dir(task)
    directory.mkdir(parents=True, exist_ok=True)  # writers only: reading never creates folders
    with FileLock(str(directory / "registry.lock"), timeout=120):
        yield


def _read_state(task: str) -> dict[str, Any]:
    path = _state_dir(task) / "champion.json"
    if not path.is_file():
        return {"champion": None, "history": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(state, dict) and isinstance(state.get("history"), list) and "champion" in state):
            raise ValueError('expected {"champion": ..., "history": [...]}')
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(
            f"{path}: damaged champion pointer ({first_line(exc)}). Restore it from a "
            "backup, or delete it to start the task with no champion (the models stay in the "
            "store; `tuneloop models promote TAG` picks one again)."
        ) from None
    return state


def _write_state(task: str, state: dict[str, Any]) -> None:
    directory = _state_dir(task)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".champion.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the pointer is no secret
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

    @property
    def task(self) -> str:
        return task_of(self.tag)


def _entry(model: Any) -> Entry:
    return Entry(
        tag=str(model.tag),
        stage=model.info.labels.get("stage", "challenger"),
        created=model.info.creation_time.strftime("%Y-%m-%d %H:%M:%S"),
        metadata=dict(model.info.metadata),
        path=Path(model.path),
    )


def _models(task: str | None) -> list[Any]:
    """The store's tuneloop models: one task's, or every task's (None)."""
    import bentoml

    from tuneloop.config import is_task_name

    def every_task(name: str) -> bool:  # `tuneloop-<not a task name>`: put in the store by something else
        return name.startswith(PREFIX) and is_task_name(name[len(PREFIX) :])

    wanted = (lambda name: name == model_name(task)) if task else every_task
    return [m for m in bentoml.models.list() if wanted(m.tag.name)]


def tasks() -> list[str]:
    """Every task with a model in the store or a champion pointer beside it."""
    from tuneloop.config import is_task_name

    pointers = bentoml_home() / "tuneloop"
    with_pointer = {p.parent.name for p in pointers.glob("*/champion.json")} if pointers.is_dir() else set()
    with_pointer = {name for name in with_pointer if is_task_name(name)}
    return sorted({task_of(str(m.tag)) for m in _models(None)} | with_pointer)


def entries(task: str | None = None) -> list[Entry]:
    """A task's models (every task's when None), newest first, with stage labels reconciled to the pointer."""
    for name in [task] if task else tasks():
        if (_state_dir(name) / "champion.json").is_file():  # no pointer yet: nothing to reconcile, nothing to create
            with _locked(name):
                _reconcile(name, _read_state(name))
    return sorted((_entry(m) for m in _models(task)), key=lambda e: e.created, reverse=True)


def get(tag: str, task: str = DEFAULT_TASK) -> Entry:
    """One entry by tag (`name:version`, or just the version of `task`'s model)."""
    import bentoml
    from bentoml.exceptions import NotFound

    full = full_tag(tag, task)
    try:
        return _entry(bentoml.models.get(full))
    except NotFound:
        raise RegistryError(
            f"model {full} is not in the store ({bentoml_home() / 'models'}). `tuneloop models list` shows what is."
        ) from None


def champion_tag(task: str = DEFAULT_TASK) -> str | None:
    """The task's champion tag from the pointer alone (no store lookup), or None before its first promotion."""
    return _read_state(task)["champion"]


def champion(task: str = DEFAULT_TASK) -> Entry | None:
    """The task's current champion, or None before its first promotion."""
    tag = champion_tag(task)
    return get(tag) if tag else None


def resolve(tag: str | None, task: str = DEFAULT_TASK, purpose: str = "use") -> Entry:
    """The tag given, else the task's champion, else an error saying what to do."""
    if tag:
        return get(tag, task)
    current = champion(task)
    if current is None:
        raise RegistryError(
            f"task '{task}' has no champion to {purpose} yet: run `tuneloop pipeline run`, "
            "promote a model (`tuneloop models promote TAG`) or pass --model TAG."
        )
    return current


def find_by_weights(digest: str, task: str = DEFAULT_TASK) -> Entry | None:
    """The task's entry holding exactly these weights (SHA-256 of the safetensors files), if any."""
    for model in _models(task):
        if model.info.metadata.get("weights_sha256") == digest:
            return _entry(model)
    return None


def register(
    model_dir: str | Path,
    *,
    task: str = DEFAULT_TASK,
    metrics: dict[str, Any] | None = None,
    gate: dict[str, Any] | None = None,
    reference: Path | None = None,
    variants: Path | None = None,
    served: dict[str, Any] | None = None,
) -> Entry:
    """Save a model dir into the task's registry as a challenger; an identical model is not saved twice.

    `metrics` are the evaluation's headline numbers (`EvalReport.summary()`), `served` what the evaluation
    scored as the served variant (`EvalReport.served`: backend, recheck margin, agreement; the service warns
    when it runs another), `gate` the verdict,
    `reference` the monitoring reference (tuneloop.monitor.reference), stored in the entry as
    reference.parquet with its SHA-256 in the metadata; `variants` the ONNX variants
    (tuneloop.compress.onnx.export), stored as onnx/ with each file's SHA-256 in the metadata.
    """
    import bentoml

    from tuneloop.compress import VARIANTS_DIR

    model_dir = Path(model_dir)
    meta = _model_meta(model_dir) | read_run_facts(model_dir)
    digest = weights_digest(model_dir)
    known = find_by_weights(digest, task)
    if known is not None:
        log.info("model already registered as %s", known.tag)
        return known
    metadata = _metadata(meta, task, metrics, gate, digest)
    if served:
        metadata["served"] = _no_nulls({k: served.get(k) for k in SERVED_KEYS})
    labels = {
        "stage": "challenger",
        "task": task,
        "data_version": str(meta.get("data", {}).get("id")),
        "weights": digest[:16],
    }
    metadata.update(_reference_metadata(reference))
    metadata.update(_variants_metadata(variants))
    with bentoml.models.create(model_name(task), labels=labels, metadata=metadata) as model:
        shutil.copytree(model_dir, model.path, dirs_exist_ok=True)
        if reference is not None:
            shutil.copyfile(reference, Path(model.path) / REFERENCE_FILE)
        if variants is not None:
            shutil.copytree(variants, Path(model.path) / VARIANTS_DIR, dirs_exist_ok=True)
    log.info("registered %s", model.tag)
    return get(str(model.tag))


def _metadata(
    meta: dict[str, Any], task: str, metrics: dict[str, Any] | None, gate: dict[str, Any] | None, digest: str
) -> dict[str, Any]:
    """The entry's metadata: evaluation headline, gate verdict and the model's own provenance."""
    return _no_nulls(
        {
            "task": task,
            "metrics": {
                k: v for k, v in (metrics or {}).items() if isinstance(v, float | int) and k != "report_version"
            },
            "val_metrics": meta.get("val_metrics", {}),
            "gate": {"passed": gate["passed"], "failed_checks": gate["failed_checks"]} if gate else {},
            "params": meta.get("params", {}),
            "data_version": meta.get("data", {}).get("id"),
            "data": meta.get("data", {}),
            "git_revision": meta.get("git_revision") or "unknown",
            "base_model": meta.get("base_model"),
            "labels": meta.get("labels", []),
            "trained_at": meta.get("created_at"),
            "production_train_rows": meta.get("production_train_rows", 0),
            "distillation": meta.get("distillation"),  # tuneloop distill: its teacher, layers, temperature
            "registered_at": utc_now(),
            "weights_sha256": digest,
        }
    )


def _model_meta(model_dir: Path) -> dict[str, Any]:
    path = model_dir / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path}: not found. Register a folder written by `tuneloop train`.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: damaged ({first_line(exc)}). Re-run `tuneloop train`.") from None
    if not isinstance(meta, dict):
        raise RegistryError(f"{path}: expected a JSON object. Re-run `tuneloop train`.")
    return meta


# what the evaluation scored as the served variant: the service compares its own with it
SERVED_KEYS = ("backend", "int8_recheck_margin", "agreement", "macro_f1")


# ---- monitoring reference (issue 12): stored beside the weights, content-hashed
REFERENCE_FILE = "reference.parquet"


def _reference_metadata(reference: Path | None) -> dict[str, Any]:
    if reference is None:
        return {}
    if not Path(reference).is_file():
        raise RegistryError(f"{reference}: monitoring reference not found (build it with `tuneloop monitor reference`)")
    return {"reference": REFERENCE_FILE, "reference_sha256": provenance.file_digest(reference)}


# ---- ONNX variants (issue 15): stored as onnx/, each file's SHA-256 in the metadata, checked when served


def _variants_metadata(variants: Path | None) -> dict[str, Any]:
    if variants is None:
        return {}
    from tuneloop.compress import MANIFEST

    manifest = json.loads((Path(variants) / MANIFEST).read_text(encoding="utf-8"))
    return {"variants": {b: {"sha256": v["sha256"]} for b, v in manifest["variants"].items()}}


def _no_nulls(value: Any) -> Any:
    """BentoML metadata takes no None: drop null entries (absent means unknown)."""
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value if v is not None]
    return value


def _record(state: dict[str, Any], action: str, tag: str, reason: str, forced: bool) -> None:
    state["history"].append(
        {
            "action": action,
            "tag": tag,
            "previous": state["champion"],
            "reason": reason,
            "forced": forced,
            "at": utc_now(),
        }
    )
    state["champion"] = tag


def promote(tag: str, *, reason: str, forced: bool = False) -> Entry:
    """Make `tag` its task's champion (the previous one is archived); recorded in the history."""
    entry = get(tag)
    task = entry.task
    with _locked(task):
        state = _read_state(task)
        if state["champion"] == entry.tag:
            log.info("%s is already the champion", entry.tag)
            return entry
        _record(state, "promote", entry.tag, reason, forced)
        _write_state(task, state)
        _reconcile(task, state)
    return get(entry.tag)


def rollback(task: str = DEFAULT_TASK, *, reason: str) -> Entry:
    """Put the task's previous champion back (the current one is archived); recorded in the history."""
    with _locked(task):
        state = _read_state(task)
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
                f"nothing to roll back to: task '{task}' has no previous champion. "
                "`tuneloop models list` shows the history of stages."
            )
        entry = get(previous)  # still in the store, before the pointer names it
        _record(state, "rollback", entry.tag, reason, False)
        _write_state(task, state)
        _reconcile(task, state)
    return get(entry.tag)


def history(task: str = DEFAULT_TASK) -> list[dict[str, Any]]:
    """Every promotion and rollback of the task, oldest first."""
    return list(_read_state(task)["history"])


def relabel(task: str = DEFAULT_TASK) -> None:
    """Rewrite the task's stage labels from this store's pointer: a model imported from elsewhere
    (`tuneloop models pull`) arrives with the stage it had on the machine that pushed it."""
    with _locked(task):
        _reconcile(task, _read_state(task))


def _reconcile(task: str, state: dict[str, Any]) -> None:
    """Rewrite the task's `stage` labels to agree with the pointer (caller holds the lock)."""
    former = {h["tag"] for h in state["history"]} | {h["previous"] for h in state["history"] if h["previous"]}
    for model in _models(task):
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
