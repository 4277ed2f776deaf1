"""The BentoML service: classify texts with the champion model from the store.

Which model (`resolve`, the one place that decides): in a built Bento the model it was packed with;
otherwise `TUNELOOP_MODEL_TAG` when set (pinned), else the champion of params.yaml's task, which the
service then follows: each new champion is loaded, verified and switched in atomically while requests
in flight finish on the old one (`serve.follow_champion_s`). The service is named per task.
Settings come from the `serve:` section of params.yaml (`TUNELOOP_PARAMS` names another file);
in a Bento they are baked in as Bento arguments by `tuneloop package`. The API key is a secret
and stays an environment variable (`TUNELOOP_API_KEY`).

Every prediction goes to the prediction log (tuneloop.predlog: SQLite `predictions.db` by
default, `TUNELOOP_DB_URL` for PostgreSQL), written off the request path and flushed on shutdown.
Run with `tuneloop serve`, `bentoml serve tuneloop.serve.service:TextClassifier`, or
`bentoml serve BENTO_TAG` after `tuneloop package`.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import ContentType
from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from tuneloop.config import ServeParams
from tuneloop.errors import TuneloopError
from tuneloop.serve.admission import Admission, forget_learnt_waits
from tuneloop.serve.guard import Guard, Limits, feedback_pairs
from tuneloop.serve.tracing import app_factory

log = logging.getLogger(__name__)
FEEDBACK_RETRY_AFTER_S = 5  # a /feedback the log's database could not take: when to send it again


class ServiceError(TuneloopError):
    """The service cannot start: no model to serve, or the model does not load."""


@dataclass(frozen=True)
class Resolved:
    """What this service serves, decided once when BentoML imports the module."""

    tag: str  # the model loaded first
    task: str
    settings: ServeParams
    follow: bool  # switch to each new champion of the task (never for a Bento or a pinned tag)


def resolve() -> Resolved:
    """The one place the service decides its model and settings.

    Model: the one a built Bento was packed with (a Bento serves nothing else), else
    `TUNELOOP_MODEL_TAG` (pinned), else the champion of params.yaml's task (followed as it changes).
    Settings: Bento arguments when given (a built Bento, or `--arg`), else params.yaml's `serve:`
    (`TUNELOOP_PARAMS` names another file).

    Raises:
        ServiceError: the tag is not in the model store (the server then never starts, so it never reports ready).
    """
    from bentoml.exceptions import NotFound

    from tuneloop.config import load_params
    from tuneloop.registry import DEFAULT_TASK, champion_tag, full_tag, model_name, task_of

    arguments = dict(vars(bentoml.use_arguments()))  # `tuneloop package` bakes in settings and the model tag
    values = {k: v for k, v in arguments.items() if k != "model_tag"}
    params_file = Path(os.environ.get("TUNELOOP_PARAMS", "params.yaml"))
    params = load_params(params_file) if not values or params_file.is_file() else None
    settings = ServeParams.model_validate(values, strict=False) if values else params.serve  # type: ignore[union-attr]
    pinned = arguments.get("model_tag") or os.environ.get("TUNELOOP_MODEL_TAG")
    task = task_of(full_tag(pinned)) if pinned else params.task.name if params else DEFAULT_TASK
    tag = full_tag(pinned or champion_tag(task) or f"{model_name(task)}:latest", task)
    try:
        tag = str(bentoml.models.get(tag).tag)
    except NotFound:
        raise ServiceError(
            f"model {tag} is not in the BentoML model store: set TUNELOOP_MODEL_TAG to a tag from "
            "`tuneloop models list`, or promote one (`tuneloop models promote TAG`)."
        ) from None
    return Resolved(tag=tag, task=task, settings=settings, follow=not pinned and settings.follow_champion_s > 0)


RESOLVED = resolve()
SETTINGS = RESOLVED.settings


@dataclass(frozen=True)
class Loaded:
    """A model ready to serve: tag, the classifier in its served variant, its registry info, and why the variant
    it runs is not the one the gate judged (None when it is, or when the entry predates the record)."""

    tag: str
    clf: Any
    info: Any
    unjudged: str | None = None


def load_verified(tag: str) -> Loaded:
    """Load a registered model and prove it: weights' SHA-256 as registered, a finite, normalised smoke prediction.

    Raises:
        ServiceError: naming the model and what is wrong with it.
    """
    from tuneloop.compress import for_serving
    from tuneloop.model import ModelError, load_classifier, predict_proba
    from tuneloop.provenance import weights_digest

    stored = bentoml.models.get(tag)
    expected = stored.info.metadata.get("weights_sha256")
    if expected and weights_digest(Path(stored.path)) != expected:
        raise ServiceError(
            f"model {tag}: the weights' SHA-256 differs from the one recorded at registration; "
            "the files were damaged or edited. Serve another tag or re-register the model."
        )
    try:
        variants: Any = stored.info.metadata.get("variants", {})  # registry: {backend: {"sha256": ...}}
        variant_sha = variants.get(SETTINGS.backend, {}).get("sha256")
        clf = for_serving(
            load_classifier(stored.path),
            SETTINGS.backend,
            expected_sha256=variant_sha,
            recheck_margin=SETTINGS.int8_recheck_margin,
        )
        probs = predict_proba(clf, EXAMPLE)
    except (ModelError, OSError, RuntimeError, ValueError) as exc:
        raise ServiceError(
            f"model {tag} does not load or predict ({exc}); serve another tag or re-register it"
        ) from None
    if not (np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-3)):
        raise ServiceError(
            f"model {tag} predicts non-finite or unnormalised scores on a smoke test; "
            "its weights are damaged: serve another tag or re-register the model"
        )
    judged: Any = stored.info.metadata.get("served")
    why = unjudged(str(stored.tag), judged, clf)
    if why:
        log.warning(why)
    return Loaded(tag=str(stored.tag), clf=clf, info=stored.info, unjudged=why)


def unjudged(tag: str, judged: dict[str, Any] | None, clf: Any) -> str | None:
    """Why the variant this service runs is not the one evaluate scored and the gate judged (None when it is,
    or when the entry was registered before the registry recorded it)."""
    from tuneloop.compress import recheck_margin

    if not judged:
        return None
    runs = (clf.backend, recheck_margin(clf))
    scored = (judged.get("backend"), judged.get("int8_recheck_margin"))
    if runs == scored:
        return None
    return (
        f"model {tag}: evaluate scored and the gate judged backend {_variant(*scored)} (agreement "
        f"{judged.get('agreement')}), this service runs {_variant(*runs)}, which no evaluation of this model "
        f"has scored. Run the pipeline with serve.backend {runs[0]!r} to judge it, or set serve.backend back "
        f"to {scored[0]!r}."
    )


def _variant(backend: Any, margin: Any) -> str:
    return f"{backend} (int8 recheck margin {margin})" if margin else str(backend)


EXAMPLE = ["I lost my card yesterday", "where is my parcel?"]
# GET routes: BentoML APIs are POST only, so read-only endpoints live in a FastAPI app mounted beside them.
http = FastAPI(title="tuneloop", docs_url=None, redoc_url=None, openapi_url=None)


# The media type said once: without it BentoML derives it from the output's JSON schema on every response,
# which py-spy found taking 18% of a worker's GIL time at 32 clients (bench/serve_load.py).
Answers = Annotated[list[dict[str, Any]], ContentType("application/json")]


@bentoml.asgi_app(http, path="/")
@bentoml.service(name=f"tuneloop_{RESOLVED.task.replace('-', '_')}", traffic={"timeout": 30})
class TextClassifier:
    """Loads the model once per worker; `classify` batches concurrent requests adaptively."""

    model = bentoml.models.BentoModel(RESOLVED.tag)

    def __init__(self) -> None:
        """Load the model and prove it predicts; any failure stops the worker, so it never reports ready."""
        from tuneloop.predlog import PredictionLog

        self.current = load_verified(str(self.model.tag))  # one attribute, swapped whole when the champion changes
        from bentoml._internal.context import server_context

        from tuneloop.procs import cap_malloc_arenas, exit_with_parent, malloc_in_use
        from tuneloop.serve import logs

        self.predictions = PredictionLog(
            store_text=SETTINGS.store_text,
            flush_interval_s=SETTINGS.log_flush_s,
            spool_dir=SETTINGS.log_spool_dir,
            max_backlog=SETTINGS.log_max_backlog,
        )
        logs.install(private=not SETTINGS.store_text)
        if server_context.worker_index is not None:  # a `bentoml serve` worker, not an in-process app
            exit_with_parent()  # no worker outlives its server, even one killed with SIGKILL
            cap_malloc_arenas()  # before BentoML starts its inference threads: RSS grows slower (procs)
            logging.getLogger("tuneloop").setLevel(logging.INFO)  # BentoML's root is at WARNING: our few lines
            log.info("worker malloc: %s (serve.allocator)", malloc_in_use())
        # Move the ~430k objects of torch/transformers/BentoML out of the collector's reach: a full
        # collection over them took 211 ms and stalled every in-flight request at once (p99 386 ms
        # vs p95 145 ms under load); frozen, later collections only scan objects made per request.
        gc.collect()
        gc.freeze()
        self.ready = True
        if RESOLVED.follow:
            threading.Thread(target=self._follow_champion, name="follow-champion", daemon=True).start()

    def _follow_champion(self) -> None:
        """Load each new champion of the task, verify it (weights' SHA-256, smoke prediction), then switch in one
        assignment: requests already running finish on the model they started with. A model that fails to load
        leaves the current one serving, and is not tried again until the pointer moves."""
        from tuneloop.registry import champion_tag

        failed: str | None = None
        while True:
            time.sleep(SETTINGS.follow_champion_s)
            try:
                tag = champion_tag(RESOLVED.task)
            except TuneloopError as exc:  # a damaged pointer: keep serving, say why
                log.warning("champion pointer unreadable, still serving %s: %s", self.current.tag, exc)
                continue
            if tag is None or tag in (self.current.tag, failed):
                continue
            try:
                loaded = load_verified(tag)
            except ServiceError as exc:
                failed = tag
                log.error("new champion %s not served, still serving %s: %s", tag, self.current.tag, exc)
                continue
            previous, self.current = self.current.tag, loaded
            log.info("now serving champion %s (was %s)", tag, previous)

    def __is_ready__(self) -> bool:
        """`/readyz`: only once the model has loaded and passed the smoke prediction."""
        return getattr(self, "ready", False)

    @bentoml.on_shutdown
    def _close_log(self) -> None:
        """Graceful stop (SIGTERM): write every buffered prediction before the worker exits."""
        self.predictions.close()

    @bentoml.api(
        batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size, max_latency_ms=SETTINGS.max_latency_ms
    )
    def classify(self, texts: list[str] = EXAMPLE) -> Answers:
        """Label, confidence and the top-k labels for each text, with a request id for feedback."""
        from tuneloop.model import predict_with_embedding
        from tuneloop.predlog import Prediction, new_request_id

        started = time.perf_counter()
        # Sorted by length, sub-batches of forward_batch_size each padded only to its own longest text
        # (bench/serve_load.py, fp32: 193 vs 151 req/s for one pass of 32). The same pass yields the
        # projected embedding monitoring compares (bench/monitor_cost.py: logging it vs recomputing).
        current = self.current  # the model this batch runs on, whatever a switch does meanwhile
        probs, embeddings = predict_with_embedding(current.clf, list(texts), batch_size=SETTINGS.forward_batch_size)
        latency_ms = (time.perf_counter() - started) * 1000
        out = []
        for text, row, embedding in zip(texts, probs, embeddings):
            top = row.argsort()[::-1][: SETTINGS.top_k]
            result = {
                "label": current.clf.labels[top[0]],
                "confidence": float(row[top[0]]),
                "top_k": [{"label": current.clf.labels[k], "score": float(row[k])} for k in top],
                "model": current.tag,
                "request_id": new_request_id(),
            }
            self.predictions.log(
                Prediction(
                    request_id=result["request_id"],
                    text=text,
                    predicted=result["label"],
                    confidence=result["confidence"],
                    top_k=result["top_k"],
                    model_tag=current.tag,
                    latency_ms=latency_ms,
                    embedding=embedding.astype("<f4").tobytes(),
                )
            )
            out.append(result)
        return out

    @http.post("/feedback")
    def feedback(self, body: Any = Body(...)) -> JSONResponse:  # noqa: B008 (FastAPI idiom)
        """Record true labels of earlier predictions: `{"request_id", "label"}` or `{"items": [...]}`.

        All or nothing: a malformed body or unknown label (400) or request id (404) records none; while the
        log's database fails, a 503 with Retry-After (the cause goes to the server log, not to the client).
        A FastAPI route rather than a BentoML API so refusals are plain 4xx, not logged tracebacks.
        """
        from sqlalchemy.exc import SQLAlchemyError

        from tuneloop.errors import first_line
        from tuneloop.predlog import UnknownRequest

        try:
            pairs = feedback_pairs(body, self.current.clf.labels)
            self.predictions.record_feedback_many(pairs, source="api")
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except UnknownRequest as exc:
            return JSONResponse(
                {"error": f"{exc}; send the request_id that /classify returned (nothing was recorded)"}, status_code=404
            )
        except SQLAlchemyError as exc:
            log.warning("feedback not recorded: the prediction log's database failed: %s", first_line(exc))
            return JSONResponse(  # the guard answers its own text for every 503 (tuneloop.serve.guard)
                {"error": "the prediction log's database is not answering"},
                status_code=503,
                headers={"Retry-After": str(FEEDBACK_RETRY_AFTER_S)},
            )
        return JSONResponse({"recorded": len(pairs), "status": "recorded"})

    @http.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        """GET /metadata: model tag, label set, metrics, data version and when it was promoted."""
        from tuneloop.compress import recheck_margin
        from tuneloop.registry import champion_tag, history

        current = self.current
        stored = dict(current.info.metadata)
        judged: Any = stored.get("served")  # the variant evaluate scored (backend, margin, agreement)
        promotions = [h for h in history(RESOLVED.task) if h["tag"] == current.tag]
        return {
            "model": current.tag,
            "task": RESOLVED.task,
            "follows_champion": RESOLVED.follow,
            "labels": current.clf.labels,
            "backend": current.clf.backend,  # serve.backend, or its torch fallback (the log says why)
            "int8_recheck_margin": recheck_margin(current.clf),  # onnx-int8: close rows answered by fp32
            "judged": judged,
            "served_as_judged": None if not judged else current.unjudged is None,
            "stage": "champion" if champion_tag(RESOLVED.task) == current.tag else current.info.labels.get("stage"),
            "promoted_at": promotions[-1]["at"] if promotions else None,
            "metrics": stored.get("metrics", {}),
            "val_metrics": stored.get("val_metrics", {}),
            "gate": stored.get("gate", {}),
            "data_version": stored.get("data_version"),
            "base_model": stored.get("base_model"),
            "trained_at": stored.get("trained_at"),
            "git_revision": stored.get("git_revision"),
        }


def admit_first(service: Any, settings: ServeParams) -> None:
    """Put admission control in front of everything, BentoML's own middleware included.

    Middleware added with `add_asgi_middleware` runs *inside* BentoML's metrics, OpenTelemetry,
    access-log and timeout middleware: a refusal there cost the worker 0.63 ms of CPU (measured,
    bench/serve_overload.py), so clients retrying at once kept the event loop busy and starved the
    model (goodput 2% of capacity at 8x). BentoML's worker serves `service.to_asgi()`, so the
    service's class becomes a subclass whose `to_asgi` builds that app as BentoML's own `to_asgi`
    does (keeping its batchers in reach, for `forget_learnt_waits`) and wraps it in `Admission`.
    """
    base = type(service)

    class Admitted(base):  # type: ignore[valid-type,misc]
        __slots__ = ()  # attrs-slotted base: same layout, so the instance's class can be swapped

        def to_asgi(self, is_main: bool = True) -> Any:
            from _bentoml_impl.server.app import ServiceAppFactory

            self.inject_config()  # what bentoml.Service.to_asgi does, in this order (BentoML 1.4)
            factory = app_factory(ServiceAppFactory)(self, is_main=is_main)
            on_idle = functools.partial(forget_learnt_waits, list(factory.dispatchers.values()))
            return Admission(
                factory(),
                limit=settings.max_in_flight_batches * settings.max_batch_size,
                max_retry_after_s=settings.max_retry_after_s,
                hold_s=settings.refusal_hold_s,
                on_idle=on_idle,
            )

    service.__class__ = Admitted


admit_first(TextClassifier, SETTINGS)
TextClassifier.add_asgi_middleware(  # type: ignore[attr-defined]  # added by @bentoml.service
    Guard,
    limits=Limits(
        api_key=os.environ.get("TUNELOOP_API_KEY") or None,
        max_body_bytes=SETTINGS.max_body_bytes,
        max_texts=SETTINGS.max_texts_per_request,
        max_chars=SETTINGS.max_chars_per_text,
        overlong=SETTINGS.overlong,
        private=not SETTINGS.store_text,
    ),
)
