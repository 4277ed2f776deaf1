"""Issue 9 point 6: the prediction log's text digest is keyed (HMAC) when TUNELOOP_TEXT_HASH_KEY is
set, and with store_text off nothing of the text is kept but that digest."""

from __future__ import annotations

import hashlib
import hmac

from tuneloop.predlog import TEXT_HASH_KEY_ENV, Prediction, PredictionLog, new_request_id, text_digest


def _logged(tmp_path, monkeypatch, key: str | None, text: str) -> dict:
    if key is None:
        monkeypatch.delenv(TEXT_HASH_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(TEXT_HASH_KEY_ENV, key)
    plog = PredictionLog(f"sqlite:///{tmp_path / f'{key}.db'}", store_text=False, flush_interval_s=3600)
    plog.log(Prediction(new_request_id(), text, "pos", 0.9, [], "m:1", 1.0))
    rows = plog.joined()
    plog.close()
    return rows[0]


def test_text_digest_is_an_hmac_under_the_key(tmp_path, monkeypatch):
    keyed = _logged(tmp_path, monkeypatch, "k" * 32, "yes")
    assert keyed["text"] is None
    assert keyed["text_sha256"] == hmac.new(b"k" * 32, b"yes", hashlib.sha256).hexdigest()
    assert keyed["text_sha256"] != hashlib.sha256(b"yes").hexdigest()  # a guess no longer confirms it


def test_without_a_key_the_digest_is_sha256_and_a_warning_says_so(tmp_path, monkeypatch, caplog):
    plain = _logged(tmp_path, monkeypatch, None, "yes")
    assert plain["text_sha256"] == hashlib.sha256(b"yes").hexdigest()
    assert TEXT_HASH_KEY_ENV in caplog.text and "unkeyed" in caplog.text


def test_a_lone_surrogate_does_not_fail_the_flush(tmp_path, monkeypatch):
    assert len(text_digest("\ud800", None)) == 64
    assert _logged(tmp_path, monkeypatch, "k", "ok \ud800")["text_sha256"] == text_digest("ok \ud800", b"k")
