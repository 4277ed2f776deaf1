"""The shared model store: registry entries and each task's champion pointer on S3-compatible storage,
so a serving machine can pull the champion it did not train (`tuneloop models push / pull`).

Layout under `store.url` (s3://BUCKET/PREFIX):

    <task>/models/<version>.tar          BentoML's own export of the entry (weights, tokenizer, monitoring
                                         reference, ONNX variants, model.yaml with the metadata)
    <task>/models/<version>.json         its manifest: the tag and the SHA-256 of every file; written after
                                         the archive, so a manifest means a complete upload
    <task>/champion.json                 which tag is the task's champion; written when the champion is pushed

BentoML 1.4 exports and imports through fsspec (`fsspec.url_to_fs` on the s3:// URL; s3fs does the S3
part), so the endpoint of an S3-compatible server reaches the filesystem BentoML opens only through
fsspec's configuration (`fsspec.config.conf`), set for the duration of one push or pull. Credentials
come from botocore's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance
role), never from params.yaml.

Pushing and pulling are idempotent: a tag already in the store (or here) with the same content is not
copied again, and one with other content is refused. A pulled entry is checked file by file against its
manifest before it counts; a mismatch removes it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop import provenance, registry
from tuneloop.errors import TuneloopError, first_line
from tuneloop.provenance import utc_now

log = logging.getLogger(__name__)

MODEL_YAML = "model.yaml"  # BentoML's entry descriptor: its stage label differs per machine, so it is not hashed
MANIFEST_FORMAT = 1
# BentoML's default .bentomodel is an xz tarball: MiniLM's 90.9 MB of weights took 60.8 s to pack for 9.6% less
# (gzip 6.8 s, 8.5% less; plain tar 0.14 s; 2 busy cores). Float weights barely compress, so a plain tar is
# faster end to end on any link above ~1.2 MB/s.
ARCHIVE = "tar"


class StoreError(TuneloopError):
    """The shared store cannot be reached or read as asked (no URL, no credentials, no bucket, bad tag...)."""


@dataclass(frozen=True)
class Store:
    """Where the shared store is: `store.url` and `store.endpoint_url` from params.yaml."""

    url: str
    endpoint_url: str | None = None

    @property
    def bucket(self) -> str:
        return self.url.removeprefix("s3://").split("/", 1)[0]

    def key(self, *parts: str) -> str:
        """The s3:// URL of an object under the store's prefix."""
        return "/".join([self.url.rstrip("/"), *parts])

    def where(self) -> str:
        return f"{self.url} (endpoint {self.endpoint_url})" if self.endpoint_url else self.url


def from_params(store: Any) -> Store:
    """The store params.yaml's `store:` section names (tuneloop.config.StoreParams).

    Raises:
        StoreError: `store.url` is not set.
    """
    if store.url is None:
        raise StoreError(
            "no shared store configured: set store.url in params.yaml to s3://BUCKET/PREFIX (and "
            "store.endpoint_url for an S3-compatible server), or pass --set store.url=s3://BUCKET/PREFIX."
        )
    return Store(url=store.url, endpoint_url=store.endpoint_url)


@dataclass(frozen=True)
class Moved:
    """What a push or pull did: the tag, whether bytes moved, and whether it is now the champion there."""

    tag: str
    copied: bool
    champion: bool


def content_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file of a registry entry by relative path (model.yaml aside: its labels are local)."""
    return {
        p.relative_to(path).as_posix(): provenance.file_digest(p)
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.relative_to(path).as_posix() != MODEL_YAML
    }


def push(tag: str | None, task: str, store: Store) -> Moved:
    """Export one registry entry (default: the task's champion) to the store; pushing the champion also
    publishes it as the store's champion of its task."""
    entry = _local_entry(tag, task)
    files = content_digest(entry.path)
    is_champion = entry.tag == registry.champion_tag(entry.task)
    with _s3(store) as fs:
        manifest_key = _model_key(store, entry.tag, "json")
        stored = _read_json(fs, manifest_key)
        copied = stored is None
        if stored is None:
            import bentoml

            bentoml.models.export_model(entry.tag, _model_key(store, entry.tag, ARCHIVE), ARCHIVE)
            manifest = {"format": MANIFEST_FORMAT, "tag": entry.tag, "files": files, "pushed_at": utc_now()}
            _write_json(fs, manifest_key, manifest)  # last: a manifest means the archive is complete
        elif stored.get("files") != files:
            raise StoreError(
                f"{manifest_key} holds other content under {entry.tag} ({_differing(stored.get('files'), files)}): "
                "the store's copy is not this model. Delete that manifest and its .tar to push again."
            )
        if is_champion:
            _publish_champion(fs, store, entry.tag, entry.task)
    log.info("pushed %s to %s%s", entry.tag, store.url, "" if copied else " (already there)")
    return Moved(entry.tag, copied, is_champion)


def pull(tag: str | None, task: str, store: Store) -> Moved:
    """Import one entry from the store (default: the store's champion of the task, which then becomes the
    champion here too), checked file by file against its manifest."""
    with _s3(store) as fs:
        wanted = _store_champion(fs, store, task) if tag is None else registry.full_tag(tag, task)
        manifest_key = _model_key(store, wanted, "json")
        manifest = _read_required(
            fs,
            manifest_key,
            f"model {wanted} is not in the shared store {store.where()} (no {manifest_key}): push "
            "it with `tuneloop models push TAG` on the machine that has it.",
        )
        files = manifest.get("files")
        if manifest.get("tag") != wanted or not isinstance(files, dict):
            raise StoreError(f"{manifest_key}: damaged manifest (not one for {wanted}). Push {wanted} again.")
        copied = _import_checked(store, wanted, manifest_key, files)
    entry = registry.get(wanted)
    if tag is None:
        registry.promote(entry.tag, reason=f"champion of the shared store {store.url} (tuneloop models pull)")
    else:
        registry.relabel(entry.task)  # it arrives with the stage it had where it was pushed
    log.info("pulled %s from %s%s", entry.tag, store.url, "" if copied else " (already here)")
    return Moved(entry.tag, copied, tag is None)


def _local_entry(tag: str | None, task: str) -> registry.Entry:
    if tag is not None:
        return registry.get(tag, task)
    current = registry.champion(task)
    if current is None:
        raise StoreError(
            f"task '{task}' has no champion to push: name a model (`tuneloop models push TAG`, tags from "
            "`tuneloop models list`) or promote one first (`tuneloop models promote TAG`)."
        )
    return current


def _import_checked(store: Store, tag: str, manifest_key: str, files: dict[str, str]) -> bool:
    """Import `tag` from the store unless it is here already; either way its files must match the manifest."""
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        here: Path | None = Path(bentoml.models.get(tag).path)
    except NotFound:
        here = None
    if here is not None:
        local = content_digest(here)
        if local != files:
            raise StoreError(
                f"model {tag} is here already with other content than the store's ({manifest_key}: "
                f"{_differing(files, local)}). `tuneloop models show {tag}` shows the local one."
            )
        return False
    archive = _model_key(store, tag, ARCHIVE)
    try:
        imported = bentoml.models.import_model(archive, ARCHIVE)
    except (BentoMLException, ValueError) as exc:  # not an archive, unsafe members, no model.yaml, tag taken
        raise StoreError(f"{archive}: cannot import ({first_line(exc)}). Push {tag} again.") from None
    got = content_digest(Path(imported.path))
    if str(imported.tag) != tag or got != files:
        bentoml.models.delete(imported.tag)
        what = f"it holds {imported.tag}" if str(imported.tag) != tag else _differing(files, got)
        raise StoreError(
            f"{archive} does not match its manifest {manifest_key} ({what}): removed again. Push {tag} again "
            "from the machine that has it."
        )
    return True


def _model_key(store: Store, tag: str, extension: str) -> str:
    """The URL of a model's archive (ARCHIVE) or manifest (json) in the store."""
    return store.key(registry.task_of(tag), "models", f"{tag.split(':', 1)[1]}.{extension}")


def _store_champion(fs: Any, store: Store, task: str) -> str:
    key = _champion_key(store, task)
    pointer = _read_required(
        fs,
        key,
        f"the shared store {store.where()} has no champion for task '{task}' (no {key}): push it with "
        "`tuneloop models push` on the machine where it was promoted, or pull a TAG.",
    )
    tag = pointer.get("champion")
    if not isinstance(tag, str) or tag.split(":", 1)[0] != registry.model_name(task):
        raise StoreError(f"{key}: damaged champion pointer (expected a {registry.model_name(task)}:VERSION tag).")
    return registry.full_tag(tag, task)


def _champion_key(store: Store, task: str) -> str:
    return store.key(task, "champion.json")


def _publish_champion(fs: Any, store: Store, tag: str, task: str) -> None:
    key = _champion_key(store, task)
    previous = (_read_json(fs, key) or {}).get("champion")
    if previous != tag:
        _write_json(fs, key, {"champion": tag, "previous": previous, "pushed_at": utc_now()})


def _read_json(fs: Any, url: str) -> dict[str, Any] | None:
    """A small JSON object from the store, or None when there is no such key."""
    try:
        raw = fs.cat_file(url)
    except FileNotFoundError as exc:
        if _error_code(exc) == "NoSuchBucket":
            raise
        return None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict):
        raise StoreError(f"{url}: not a JSON object (damaged). Push the model again to rewrite it.")
    return value


def _read_required(fs: Any, url: str, missing: str) -> dict[str, Any]:
    """`_read_json`, where a missing key is the StoreError `missing`."""
    value = _read_json(fs, url)
    if value is None:
        raise StoreError(missing)
    return value


def _write_json(fs: Any, url: str, value: dict[str, Any]) -> None:
    fs.pipe_file(url, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))  # one PUT: readers see old or new


def _differing(expected: Any, got: dict[str, str]) -> str:
    expected = expected if isinstance(expected, dict) else {}
    names = sorted(n for n in expected.keys() | got.keys() if expected.get(n) != got.get(n))
    return f"{len(names)} file(s) differ: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"


@contextmanager
def _s3(store: Store) -> Iterator[Any]:
    """An S3 filesystem on the store, with the same settings for those BentoML opens from s3:// URLs;
    every failure of the storage becomes one StoreError naming the setting to fix."""
    import fsspec

    # A fresh filesystem per push/pull: an instance reads its credentials and endpoint when made, so a
    # cached one would keep another store's (in a long-lived process, or the tests).
    settings: dict[str, dict[str, Any]] = {
        "s3": {"skip_instance_cache": True},
        "filecache": {"skip_instance_cache": True},
    }
    if store.endpoint_url:
        settings["s3"]["endpoint_url"] = store.endpoint_url
    saved = {name: fsspec.config.conf.get(name) for name in settings}
    for name, values in settings.items():
        fsspec.config.conf[name] = {**(saved[name] or {}), **values}
    try:
        with _translated(store):
            yield fsspec.filesystem("s3")
    finally:
        for name, values in saved.items():
            if values is None:
                fsspec.config.conf.pop(name, None)
            else:
                fsspec.config.conf[name] = values


@contextmanager
def _translated(store: Store) -> Iterator[None]:
    """Storage errors as one line naming what to fix (botocore and s3fs raise a zoo of types)."""
    from botocore.exceptions import BotoCoreError, NoCredentialsError, PartialCredentialsError

    endpoint = f"store.endpoint_url {store.endpoint_url}" if store.endpoint_url else "AWS S3 (store.endpoint_url null)"
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise StoreError(
            f"no credentials for the shared store {store.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment; credentials never go in params.yaml."
        ) from None
    except PermissionError as exc:
        raise StoreError(
            f"the shared store {store.where()} refused access ({first_line(exc)}): check the credentials in "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and that they may read and write that bucket."
        ) from None
    except FileNotFoundError as exc:
        if _error_code(exc) != "NoSuchBucket":
            raise StoreError(f"the shared store {store.where()}: {first_line(exc)} not found.") from None
        raise StoreError(
            f"bucket '{store.bucket}' of store.url {store.url} does not exist on {endpoint}: create it "
            f"(aws s3 mb s3://{store.bucket}) or fix store.url in params.yaml."
        ) from None
    except BotoCoreError as exc:  # connection refused, DNS, timeouts, bad endpoint
        raise StoreError(
            f"cannot reach the shared store {store.url} at {endpoint} ({first_line(exc)}): check "
            "store.endpoint_url in params.yaml and that the server runs."
        ) from None
    except OSError as exc:  # anything else s3fs maps from an S3 error code
        raise StoreError(f"the shared store {store.where()} failed: {first_line(exc)}.") from None


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an s3fs exception (it keeps botocore's ClientError as the cause)."""
    cause = exc.__cause__
    response = getattr(cause, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None
