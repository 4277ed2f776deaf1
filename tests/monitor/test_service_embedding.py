"""The service logs each prediction's projected embedding (prediction log schema v3)."""

from __future__ import annotations

import os

import numpy as np

from tests.serve.conftest import served  # noqa: F401  (fixture)
from tests.serve.test_service_asgi import client  # noqa: F401  (fixture)


def test_classify_logs_a_unit_embedding_per_text(client, served):  # noqa: F811
    from tuneloop.predlog import read_window

    answers = client.post("/classify", json={"texts": ["the food was great", "awful service"]}).json()
    ids = [a["request_id"] for a in answers]
    assert client.post("/feedback", json={"request_id": ids[0], "label": "pos"}).status_code == 200  # flushes
    frame = read_window(os.environ["TUNELOOP_DB_URL"]).set_index("request_id")
    for request_id in ids:
        vector = np.frombuffer(frame.loc[request_id, "embedding"], dtype="<f4")
        assert vector.shape == (32,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-4
