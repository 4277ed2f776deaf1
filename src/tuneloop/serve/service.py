"""The BentoML service: classify texts with the champion model from the store.

Which model: `TUNELOOP_MODEL_TAG` when set, else the registry's champion, else the newest
`tuneloop-classifier` in the store (inside a built Bento that is the one model packed with it).
`bentoml serve tuneloop.serve.service:TextClassifier` or `tuneloop package` + `bentoml serve TAG`.

Every prediction goes to the prediction log (tuneloop.serve.predlog: SQLite `predictions.db` by
default, `TUNELOOP_DB_URL` for PostgreSQL), written off the request path and flushed on shutdown;
`TUNELOOP_LOG_STORE_TEXT=false` keeps only a hash of each text.
"""

from __future__ import annotations

import os
import time
from typing import Any

import bentoml

from tuneloop.registry import MODEL_NAME


def model_tag() -> str:
    """The model this service loads (resolved once, when BentoML imports the service)."""
    if os.environ.get("TUNELOOP_MODEL_TAG"):
        return os.environ["TUNELOOP_MODEL_TAG"]
    from tuneloop.registry import _read_state

    return _read_state().get("champion") or f"{MODEL_NAME}:latest"


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
        store_text = os.environ.get("TUNELOOP_LOG_STORE_TEXT", "true").lower() not in ("0", "false", "no")
        flush_s = float(os.environ.get("TUNELOOP_LOG_FLUSH_S", "1.0"))
        self.predictions = PredictionLog(store_text=store_text, flush_interval_s=flush_s)

    @bentoml.on_shutdown
    def _close_log(self) -> None:
        """Graceful stop (SIGTERM): write every buffered prediction before the worker exits."""
        self.predictions.close()

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=25)
    def classify(self, texts: list[str] = EXAMPLE) -> list[dict[str, Any]]:  # noqa: B006 (example input)
        """Label, confidence and the top 3 labels for each text."""
        from tuneloop.model import predict_proba
        from tuneloop.serve.predlog import Prediction, new_request_id

        started = time.perf_counter()
        probs = predict_proba(self.clf, list(texts), batch_size=32)
        latency_ms = (time.perf_counter() - started) * 1000
        out = []
        for text, row in zip(texts, probs):
            top = row.argsort()[::-1][:3]
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


from tuneloop.serve.guard import Guard  # noqa: E402  (after the class: the middleware wraps its app)

TextClassifier.add_asgi_middleware(Guard)
