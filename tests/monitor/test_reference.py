"""The reference: built from held-out rows, stored with the registry entry, content-hashed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuneloop.monitor import MonitorError
from tuneloop.monitor.reference import (
    DESCRIPTORS,
    embedding_columns,
    read_reference,
    reference_for,
    text_descriptors,
    write_reference,
)


def test_descriptors_count_chars_words_unknown_tokens_and_non_letters(tiny_classifier):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    frame = text_descriptors(["lost card", "🙏🙏 card!!", ""], tokenizer)
    assert frame["text_chars"].tolist() == [9, 9, 0]
    assert frame["word_count"].tolist() == [2, 2, 0]
    assert frame["unk_rate"][0] == 0 and frame["unk_rate"][1] > 0  # emoji are outside the vocabulary
    assert frame["non_letter_share"][0] == 0 and frame["non_letter_share"][1] == pytest.approx(4 / 9)


def test_reference_holds_every_column_and_its_settings(reference, reference_rows):
    assert len(reference) == len(reference_rows)
    for column in (*DESCRIPTORS, "true_label", "predicted", "confidence", "calibrated_confidence", "top_k"):
        assert reference[column].notna().all(), column
    vectors = reference[embedding_columns(32)].to_numpy()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)  # unit length, as the service logs
    settings = reference.attrs["tuneloop_reference"]
    assert settings["rows"] == len(reference) and set(settings["calibration"]) == {"slope", "intercept"}
    assert json.loads(reference["top_k"][0])[0]["label"] == reference["predicted"][0]


def test_reference_round_trips_and_is_stored_hashed_at_registration(reference, tiny_classifier, tmp_path, store):
    from tuneloop import registry
    from tuneloop.provenance import file_digest

    path = write_reference(reference, tmp_path / "reference.parquet")
    assert read_reference(path).attrs == reference.attrs
    entry = registry.register(tiny_classifier, reference=path)
    assert entry.metadata["reference_sha256"] == file_digest(path)
    assert (entry.path / "reference.parquet").is_file()
    assert len(reference_for(entry.tag)) == len(reference)
    (entry.path / "reference.parquet").write_bytes(b"edited")
    with pytest.raises(MonitorError, match="SHA-256"):
        reference_for(entry.tag)


def test_a_model_registered_without_reference_is_named_in_the_error(tiny_classifier, tmp_path, store):
    import shutil

    from tuneloop import registry

    other = tmp_path / "other"
    shutil.copytree(tiny_classifier, other)
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes() + b" ")  # another digest
    entry = registry.register(other)
    with pytest.raises(MonitorError, match="has no monitoring reference"):
        reference_for(entry.tag)
