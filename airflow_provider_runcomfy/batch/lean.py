"""What the batch keeps of a remote answer: what the manifest needs, never RunComfy's whole answer.

A ``/result`` can carry megabytes of ``output`` (metadata, inline data, hundreds of URLs);
kept whole it would go through every trigger event (a metadata-DB row) and every
checkpoint (re-read by every worker part). Per item the batch keeps the status, the
request id, the output URLs up to a cap, the cost, RunComfy's timestamps and a cut,
credential-free error text. Every remote text goes through ``redact_text`` first:
signed URLs quoted in an error are credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_runcomfy.client.redact import redact_text

#: The most characters of an error text the ledger, the manifest and an event keep.
MAX_ERROR_CHARS = 500
#: The most output URLs kept per item (the rest are counted, and the item says so).
MAX_OUTPUT_URLS = 16
#: An output URL longer than this is not a URL the batch copies: the item fails on it.
MAX_URL_CHARS = 4096
#: The fields of an outcome the batch keeps.
_KEPT = ("status", "request_id", "created_at", "finished_at", "error_kind")


def clip(text: Any, limit: int = MAX_ERROR_CHARS) -> str:
    """A remote text made safe to keep: credentials masked, cut to ``limit`` characters."""
    clean = redact_text(str(text))
    if len(clean) <= limit:
        return clean
    suffix = " … (cut)"
    return clean[: limit - len(suffix)] + suffix


def slim_outcome(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``Outcome.to_event()`` a batch item keeps (bounded whatever RunComfy answered)."""
    slim: dict[str, Any] = {k: outcome[k] for k in _KEPT if outcome.get(k) not in (None, "")}
    for name in ("created_at", "finished_at"):
        if name in slim:
            slim[name] = str(slim[name])[:64]
    urls = [_url(url) for url in outcome.get("outputs") or []]
    slim["outputs"] = urls[:MAX_OUTPUT_URLS]
    if len(urls) > MAX_OUTPUT_URLS:
        slim["outputs_dropped"] = len(urls) - MAX_OUTPUT_URLS
    if outcome.get("message"):
        slim["message"] = clip(outcome["message"])
    cost = outcome.get("cost_usd")
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        slim["cost_usd"] = float(cost)
    if outcome.get("key") is not None:
        slim["key"] = str(outcome["key"])
    return {k: v for k, v in slim.items() if v not in (None, "", [])}


def _url(url: Any) -> str:
    text = str(url)
    if len(text) <= MAX_URL_CHARS:
        return text
    # Kept as a marker the copy refuses (the item fails), not as megabytes in every event.
    return f"invalid-url:longer than {MAX_URL_CHARS} characters ({len(text)})"
