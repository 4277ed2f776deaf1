"""The BentoML service: classify texts with the champion model from the store.

Which model: `TUNELOOP_MODEL_TAG` when set, else the registry's champion, else the newest
`tuneloop-classifier` in the store (inside a built Bento that is the one model packed with it).
Settings come from the `serve:` section of params.yaml (`TUNELOOP_PARAMS` names another file);
in a Bento they are baked in as Bento arguments by `tuneloop package`. The API key is a secret
and stays an environment variable (`TUNELOOP_API_KEY`).

Every prediction goes to the prediction log (tuneloop.serve.predlog: SQLite `predictions.db` by
default, `TUNELOOP_DB_URL` for PostgreSQL), written off the request path and flushed on shutdown.
Run with `tuneloop serve`, `bentoml serve tuneloop.serve.service:TextClassifier`, or
`bentoml serve BENTO_TAG` after `tuneloop package`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import bentoml

from tuneloop.config import ServeParams
from tuneloop.registry import MODEL_NAME
from tuneloop.serve.guard import Guard, Limits


def model_tag() -> str:
    """The model this service loads (resolved once, when BentoML imports the service)."""
    if os.environ.get("TUNELOOP_MODEL_TAG"):
        return os.environ["TUNELOOP_MODEL_TAG"]
    from tuneloop.registry import champion_tag

    return champion_tag() or f"{MODEL_NAME}:latest"


def serve_settings() -> ServeParams:
    """Bento arguments when given (a built Bento, or `--arg`), else params.yaml's `serve:` section."""
    arguments = vars(bentoml.use_arguments())
    if arguments:
        return ServeParams.model_validate(arguments)
    from tuneloop.config import load_params

    return load_params(os.environ.get("TUNELOOP_PARAMS", "params.yaml")).serve


SETTINGS = serve_settings()
EXAMPLE = ["I lost my card yesterday", "where is my parcel?"]


@bentoml.service(name="tuneloop_classifier", traffic={"timeout": 30})
class TextClassifier:
    """Loads the model once per worker; `classify` batches concurrent requests adaptively."""

    model = bentoml.models.BentoModel(model_tag())

    def __init__(self) -> None:
        from tuneloop.model import load_classifier
        from tuneloop.serve.predlog import PredictionLog

        self.clf = load_classifier(self.model.path)
        self.tag = str(self.model.tag)
        self.predictions = PredictionLog(store_text=SETTINGS.store_text, flush_interval_s=SETTINGS.log_flush_s)

    @bentoml.on_shutdown
    def _close_log(self) -> None:
        """Graceful stop (SIGTERM): write every buffered prediction before the worker exits."""
        self.predictions.close()

    @bentoml.api(batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
    def classify(self, texts: list[str] = EXAMPLE) -> list[dict[str, Any]]:  # noqa: B006 (example input)
        """Label, confidence and the top-k labels for each text, with a request id for feedback."""
        from tuneloop.model import predict_proba
        from tuneloop.serve.predlog import Prediction, new_request_id

        started = time.perf_counter()
        probs = predict_proba(self.clf, list(texts), batch_size=SETTINGS.max_batch_size)
        latency_ms = (time.perf_counter() - started) * 1000
        out = []
        for text, row in zip(texts, probs):
            top = row.argsort()[::-1][: SETTINGS.top_k]
            result = {"label": self.clf.labels[top[0]], "confidence": float(row[top[0]]),
                      "top_k": [{"label": self.clf.labels[k], "score": float(row[k])} for k in top],
                      "model": self.tag, "request_id": new_request_id()}
            self.predictions.log(Prediction(request_id=result["request_id"], text=text, predicted=result["label"],
                                            confidence=result["confidence"], top_k=result["top_k"],
                                            model_tag=self.tag, latency_ms=latency_ms))
            out.append(result)
        return out

    @bentoml.api
    def feedback(self, request_id: str, label: str) -> dict[str, str]:
        """Record the true label of an earlier prediction (joins on request_id in the log)."""
        from bentoml.exceptions import InvalidArgument, NotFound

        from tuneloop.serve.predlog import UnknownRequest

        if label not in self.clf.labels:
            raise InvalidArgument(f"label {label!r} is not one of this model's labels: {', '.join(self.clf.labels)}")
        try:
            self.predictions.record_feedback(request_id, label)
        except UnknownRequest as exc:
            raise NotFound(f"{exc}; send the request_id that /classify returned") from None
        return {"request_id": request_id, "label": label, "status": "recorded"}

    @bentoml.api(route="/metadata")
    def metadata(self) -> dict[str, Any]:
        """Model tag, label set, metrics and data version of the served model."""
        meta = self.clf.meta
        return {"model": self.tag, "labels": self.clf.labels, "val_metrics": meta.get("val_metrics", {}),
                "data_version": meta.get("data", {}).get("id"), "base_model": meta.get("base_model"),
                "trained_at": meta.get("created_at"), "git_revision": meta.get("git_revision")}


TextClassifier.add_asgi_middleware(Guard, limits=Limits(
    api_key=os.environ.get("TUNELOOP_API_KEY") or None, max_body_bytes=SETTINGS.max_body_bytes,
    max_texts=SETTINGS.max_texts_per_request, max_chars=SETTINGS.max_chars_per_text, overlong=SETTINGS.overlong))
