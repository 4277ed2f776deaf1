"""Monitoring fixtures: a tiny tuneloop classifier over the demo's ten intents (random weights,
no training), its reference, and prediction-log windows written the way the service writes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tuneloop.config import load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def reference_rows():
    from tuneloop.demo import generate

    return generate(400, seed=11)


@pytest.fixture(scope="session")
def reference(tiny_classifier: Path, reference_rows):
    from tuneloop.monitor.reference import build_reference

    return build_reference(tiny_classifier, reference_rows, backend="torch")


@pytest.fixture
def monitor_params():
    return load_params(REPO / "params.yaml").monitor


@pytest.fixture
def windows(tiny_classifier, tmp_path):
    """Two windows of the tiny model's logged predictions: demo traffic with feedback on half, and length drift."""
    from tuneloop.demo import generate
    from tuneloop.predlog import read_window

    url = f"sqlite:///{tmp_path}/log.db"
    log_predictions(url, tiny_classifier, "m:ref", generate(300, seed=5), feedback_share=0.5)
    log_predictions(url, tiny_classifier, "m:long", generate(300, seed=6, drift="length"))
    return {tag: read_window(url, model_tag=tag) for tag in ("m:ref", "m:long")}


@pytest.fixture
def params(monitor_params):
    # The tiny model is random: its accuracy says nothing, so the estimate must not decide here.
    return monitor_params.model_copy(update={"min_estimated_accuracy": 0.0})


def log_predictions(url: str, model_dir: Path, tag: str, frame, feedback_share: float = 0.0, start=None) -> None:
    """Classify `frame.text` with the model and log each prediction (with its embedding) as the
    service does; a share of rows gets its true label as feedback."""
    from tuneloop.model import load_classifier, predict_with_embedding
    from tuneloop.monitor.reference import top_k_lists
    from tuneloop.predlog import Prediction, PredictionLog, new_request_id

    clf = load_classifier(model_dir)
    texts = frame["text"].tolist()
    probs, embeddings = predict_with_embedding(clf, texts)
    start = start or datetime.now(UTC) - timedelta(hours=1)
    plog = PredictionLog(url, flush_interval_s=60)
    ids = []
    for i, (text, row, emb, top) in enumerate(zip(texts, probs, embeddings, top_k_lists(probs, clf.labels))):
        ids.append(new_request_id() + f"{i:06d}")
        plog.log(
            Prediction(
                request_id=ids[-1],
                text=text,
                predicted=top[0]["label"],
                confidence=float(row.max()),
                top_k=top,
                model_tag=tag,
                latency_ms=1.0,
                created_at=start + timedelta(seconds=i),
                embedding=emb.astype("<f4").tobytes(),
            )
        )
    plog.flush()
    labeled = int(len(ids) * feedback_share)
    if labeled:
        plog.record_feedback_many(list(zip(ids[:labeled], frame["label"].tolist()[:labeled])))
    plog.close()
