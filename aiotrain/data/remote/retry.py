"""Retrying object-store requests: which failures are transient, and how long to wait between tries.

A request that fails with a timeout, a dropped or reset connection, HTTP 429 or a 5xx is tried
again after a delay drawn with full jitter (uniform between 0 and ``base * 2**attempt``, capped),
at most ``attempts`` times in all; anything else (a missing object, a refused credential, a
malformed request) is final at once. Full jitter keeps many ranks that failed together from
retrying together (the AWS architecture blog's "exponential backoff and jitter").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = ["Retry", "is_transient"]

# the status a client library put in its message ("... status code: 503 Service Unavailable")
_STATUS = re.compile(r"\b(?:status(?: code)?:?\s*|HTTP/\d(?:\.\d)?\s+)([1-5]\d\d)\b", re.IGNORECASE)
_TRANSIENT_WORDS = ("timed out", "timeout", "connection reset", "connection closed", "broken pipe",
                    "connection refused", "error sending request", "incomplete message",
                    "unexpected eof", "connection aborted", "error decoding response body")


@dataclass(frozen=True)
class Retry:
    """How a request is retried: ``attempts`` tries in all (1 = no retry), the ``n``-th retry
    waiting a uniform random time in ``[0, min(cap_s, base_s * 2**n)]``; each try may take at
    most ``timeout_s`` (a stalled response counts as a transient failure)."""

    attempts: int = 6
    base_s: float = 0.1
    cap_s: float = 5.0
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Retry.attempts must be at least 1, got {self.attempts}")
        if self.base_s < 0 or self.cap_s < 0 or self.timeout_s <= 0:
            raise ValueError(f"Retry delays must be non-negative and timeout_s positive: {self}")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based), full jitter."""
        ceiling = min(self.cap_s, self.base_s * (2 ** min(retry, 32)))
        return (rng or random).uniform(0.0, ceiling)


def is_transient(exc: BaseException) -> bool:
    """True for a failure worth trying again: timeouts, dropped connections, 429 and 5xx."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    text = str(exc)
    status = _STATUS.search(text)
    if status is not None:
        code = int(status.group(1))
        return code in (408, 429) or code >= 500
    lowered = text.lower()
    if any(word in lowered for word in ("not found", "permission", "unauthenticated", "forbidden",
                                        "invalid", "unknown configuration")):
        return False
    return any(word in lowered for word in _TRANSIENT_WORDS)
