"""Drifted traffic for demos, tests and benches: demo texts (or a file) mixed with a share of
drifted rows, replayed against a running service, with feedback labels for a share of them.

Drift kinds: the demo corpus's own (`vocabulary`, `label-mix`, `length`) and `new-intents`: texts
of intents the model never saw (labels outside its label set), which only the drift signals and
feedback can reveal, since the model still answers with one of its own labels.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.monitor import MonitorError

if TYPE_CHECKING:
    import pandas as pd

KINDS = ("none", "vocabulary", "label-mix", "length", "new-intents")

NEW_INTENTS: dict[str, list[str]] = {
    "open_account": [
        "how do I open a new account",
        "I want to open a savings account for my {who}",
        "can I open a joint account online?",
        "what documents do I need to open an account",
        "is it possible to open a {kind} account with you",
        "I'd like to become a customer, how do I sign up for an account",
        "how long does it take to open an account for my {who}",
    ],
    "exchange_rate": [
        "what is your exchange rate for {currency}",
        "how much is {amount} in {currency}",
        "do you charge a fee to convert to {currency}?",
        "the {currency} rate you gave me was terrible",
        "why did I get such a bad rate changing money to {currency}",
        "can I buy {currency} before my trip and at what rate",
    ],
    "loan_application": [
        "I'd like to apply for a loan of {amount}",
        "what's the interest rate on a personal loan",
        "can I borrow {amount} to buy a car",
        "is my mortgage application approved yet",
        "how do I apply for a {kind} loan",
        "what do I need to qualify for a loan of {amount}",
    ],
    "close_account": [
        "please close my account permanently",
        "I want to delete all my data and close the account",
        "how do I shut down my {who}'s account",
        "I'm moving to another bank, close my {kind} account",
        "close my account and send me the remaining balance",
        "I no longer want to bank with you, please close everything",
    ],
}
NEW_SLOTS = {
    "who": ["son", "daughter", "wife", "husband", "business", "mother", "partner"],
    "currency": ["yen", "euros", "pesos", "rupees", "Swiss francs", "dollars", "pounds"],
    "amount": ["£5000", "$12,000", "20k euros", "$800", "£250", "$3,500"],
    "kind": ["savings", "current", "student", "business", "joint"],
}


def new_intent_rows(rows: int, seed: int) -> pd.DataFrame:
    """Messages from intents outside the demo's ten, labeled with their (new) intent, written in the demo
    corpus's channel styles (openers, closers, typos, lower case): only the intent is new."""
    import pandas as pd

    from tuneloop.demo import CHANNEL_WEIGHTS, CHANNELS, styled

    rng = random.Random(seed)
    records = []
    for _ in range(rows):
        label = rng.choice(list(NEW_INTENTS))
        text = rng.choice(NEW_INTENTS[label])
        for slot, options in NEW_SLOTS.items():
            text = text.replace("{" + slot + "}", rng.choice(options))
        records.append({"text": styled(text, rng.choices(CHANNELS, CHANNEL_WEIGHTS)[0], rng), "label": label})
    return pd.DataFrame.from_records(records, columns=["text", "label"])


def drifted_rows(kind: str, rows: int, share: float, seed: int) -> pd.DataFrame:
    """`rows` demo messages (text, label) of which a `share` is drifted by `kind`, shuffled."""
    import pandas as pd

    from tuneloop.demo import generate

    if kind not in KINDS:
        raise MonitorError(f"--drift {kind!r}: choose one of {', '.join(KINDS)}")
    if not 0 <= share <= 1:
        raise MonitorError(f"--share {share}: a share between 0 and 1")
    n_drift = 0 if kind == "none" else round(rows * share)
    base = generate(rows - n_drift, seed=seed)[["text", "label"]]
    if n_drift == 0:
        return base
    if kind == "new-intents":
        drift = new_intent_rows(n_drift, seed + 1)
    else:
        drift = generate(n_drift, seed=seed + 1, drift=kind)[["text", "label"]]  # type: ignore[arg-type]
    return pd.concat([base, drift]).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def replay(
    url: str,
    frame: pd.DataFrame,
    *,
    feedback: float,
    batch: int = 16,
    api_key: str | None = None,
    seed: int = 0,
    new_labels_out: str | Path | None = None,
) -> dict[str, Any]:
    """POST the texts to `url`/classify in batches, then feedback labels for a `feedback` share of them.

    Labels the served model does not know (new intents) cannot go through /feedback; with
    `new_labels_out` they are written there as an annotator's file (`request_id,label`) for
    `tuneloop feedback import FILE --new-labels`.

    Raises:
        MonitorError: the service is unreachable or refuses a request (status and body named).
    """
    import httpx

    if not url.startswith(("http://", "https://")):
        raise MonitorError(f"--url {url!r}: not an http(s) address. Give the service's, e.g. http://127.0.0.1:3000")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    sent: list[tuple[str, str]] = []
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as client:
        for start in range(0, len(frame), batch):
            part = frame.iloc[start : start + batch]
            answers = _post(client, "/classify", {"texts": part["text"].tolist()})
            sent += [(a["request_id"], label) for a, label in zip(answers, part["label"])]
        chosen = random.Random(seed).sample(sent, round(len(sent) * feedback))
        # /feedback accepts only the served model's labels: new intents' labels cannot be sent there.
        known = set(_get(client, "/metadata")["labels"])
        accepted = [(r, label) for r, label in chosen if label in known]
        for start in range(0, len(accepted), 200):
            items = [{"request_id": r, "label": label} for r, label in accepted[start : start + 200]]
            _post(client, "/feedback", {"items": items})
    unknown = [(r, label) for r, label in chosen if label not in known]
    if new_labels_out is not None:
        import pandas as pd

        from tuneloop.tabular import write_csv_atomic

        write_csv_atomic(pd.DataFrame(unknown, columns=["request_id", "label"]), new_labels_out)
    return {"predictions": len(sent), "feedback": len(accepted), "feedback_unknown_label": len(unknown)}


def _get(client: Any, path: str) -> Any:
    return _post(client, path, None)


def _post(client: Any, path: str, body: dict[str, Any] | None) -> Any:
    """POST `body` (GET when None) and return the JSON answer, or name the failure."""
    import httpx

    try:
        response = client.get(path) if body is None else client.post(path, json=body)
    except httpx.HTTPError as exc:
        cause = str(exc).rstrip(".")
        raise MonitorError(f"{client.base_url}{path}: {cause}. Is the service running (`tuneloop serve`)?") from None
    if response.status_code != 200:
        raise MonitorError(f"{client.base_url}{path} answered {response.status_code}: {response.text[:300]}")
    return response.json()
