"""The BentoML service: classify texts with the champion model from the store.

Which model: `TUNELOOP_MODEL_TAG` when set, else the registry's champion, else the newest
`tuneloop-classifier` in the store (inside a built Bento that is the one model packed with it).
`bentoml serve tuneloop.serve.service:TextClassifier` or `tuneloop package` + `bentoml serve TAG`.
"""

from __future__ import annotations

import os
import uuid
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

        self.clf = load_classifier(self.model.path)
        self.tag = str(self.model.tag)

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=25)
    def classify(self, texts: list[str] = EXAMPLE) -> list[dict[str, Any]]:  # noqa: B006 (example input)
        """Label, confidence and the top 3 labels for each text."""
        from tuneloop.model import predict_proba

        probs = predict_proba(self.clf, list(texts), batch_size=32)
        out = []
        for row in probs:
            top = row.argsort()[::-1][:3]
            out.append({"label": self.clf.labels[top[0]], "confidence": float(row[top[0]]),
                        "top_k": [{"label": self.clf.labels[k], "score": float(row[k])} for k in top],
                        "model": self.tag, "request_id": uuid.uuid4().hex})
        return out
