"""The baseline every fine-tuned model must beat: TF-IDF features and a linear classifier.

Evaluate fits it on the challenger's own training split and scores it on the same test rows, so
the gate can refuse a transformer that loses to a model trained in seconds (a tokenizer that
cannot read the data, too few steps, a broken base model). Words are the features where words are
separated by spaces; character 1-3-grams where they are not (Chinese, Japanese, Thai, ...), which
is what reaches 0.82 accuracy on the Toutiao titles where the word analyzer sees one "word" per title.
scikit-learn only: no torch import.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tuneloop.errors import DataError
from tuneloop.tabular import LABEL, TEXT, read_labeled

log = logging.getLogger(__name__)

Analyzer = Literal["word", "char"]

# Scripts written without spaces between words: CJK ideographs (and extensions), kana, Thai, Lao,
# Khmer, Myanmar, Tibetan. Hangul is left out: Korean separates words with spaces.
UNSPACED = re.compile(
    "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002fa1f\u3040-\u30ff\u31f0-\u31ff"
    "\u0e00-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\u0f00-\u0fff]"
)
UNSPACED_SHARE = 0.3  # of non-space characters: above it, words are not what spaces delimit


def unspaced_share(texts: list[str]) -> float:
    """Share of non-space characters that belong to scripts written without spaces between words."""
    chars = sum(len(t) - t.count(" ") for t in texts)
    return sum(len(UNSPACED.findall(t)) for t in texts) / chars if chars else 0.0


def choose_analyzer(texts: list[str], setting: str = "auto") -> Analyzer:
    """`evaluate.baseline`: word or char n-grams; auto picks char where words are not space-separated."""
    if setting in ("word", "char"):
        return setting  # type: ignore[return-value]
    return "char" if unspaced_share(texts) > UNSPACED_SHARE else "word"


@dataclass
class BaselineResult:
    """The baseline's predictions on the test rows and how it was made."""

    predicted: np.ndarray  # label strings, one per test row
    analyzer: Analyzer
    train_path: str
    train_rows: int
    fit_seconds: float


def fit_predict(train: list[str], labels: list[str], test: list[str], analyzer: Analyzer, seed: int) -> np.ndarray:
    """TF-IDF (sublinear tf) + LinearSVC fitted on `train`, predicting `test`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    # Word 1-2-grams; char 1-3-grams within the text (the measured recipe on Toutiao).
    ngrams = (1, 2) if analyzer == "word" else (1, 3)
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, max_features=500_000)
    model = make_pipeline(vectorizer, LinearSVC(C=1.0, random_state=seed))
    model.fit(train, labels)
    return np.asarray(model.predict(test), dtype=object)


def score_baseline(train_path: str | Path, test_texts: list[str], setting: str, seed: int) -> BaselineResult:
    """Fit the baseline on the labeled file `train_path` and predict `test_texts`.

    Raises:
        DataError: the training file cannot be read or holds fewer than two classes.
    """
    frame = read_labeled(train_path)
    if frame[LABEL].nunique() < 2:
        raise DataError(
            f"{train_path}: the baseline needs at least two classes to fit, found {frame[LABEL].nunique()}. "
            "Pass the challenger's training split with --train."
        )
    texts = frame[TEXT].tolist()
    analyzer = choose_analyzer(texts, setting)
    started = time.perf_counter()
    predicted = fit_predict(texts, frame[LABEL].tolist(), test_texts, analyzer, seed)
    seconds = time.perf_counter() - started
    log.info("baseline: TF-IDF %s n-grams + LinearSVC, %d rows of %s, %.1fs", analyzer, len(frame), train_path, seconds)
    return BaselineResult(predicted, analyzer, str(train_path), len(frame), seconds)  # unrounded: 72 rows fit in ms


def training_file(model_dir: str | Path, test_path: str | Path, explicit: str | Path | None) -> Path | None:
    """The split the baseline learns from: `explicit`, else the training file the model's tuneloop.json
    names (when it is still there), else train.csv beside the test file; None when there is none."""
    import json

    if explicit is not None:
        return Path(explicit)
    meta_path = Path(model_dir) / "tuneloop.json"
    try:
        recorded = json.loads(meta_path.read_text(encoding="utf-8")).get("data", {}).get("train", {}).get("path")
    except (OSError, ValueError, AttributeError):
        recorded = None
    for candidate in (recorded, Path(test_path).with_name("train.csv")):
        if candidate and Path(candidate).is_file() and Path(candidate).resolve() != Path(test_path).resolve():
            return Path(candidate)
    return None
