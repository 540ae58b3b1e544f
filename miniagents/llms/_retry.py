"""When and how long to wait before retrying an LLM request (the official clients' policy)."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping

import attrs

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "retry_after_seconds", "should_retry_status"]

#: Statuses retried by default: request timeout, conflict (lock contention), rate limit, any 5xx, incl. 529.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
_MAX_HONOURED_RETRY_AFTER = 60.0


def retry_after_seconds(headers: Mapping[str, str], *, now: Callable[[], float] = time.time) -> float | None:
    """Return the server's requested delay from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date).

    Returns ``None`` when neither header holds a usable value.  Header names are matched case-insensitively.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return float(raw_ms) / 1000.0
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None
        return None
    return when.timestamp() - now()


def should_retry_status(status: int, headers: Mapping[str, str], *, error_code: str | None = None) -> bool:
    """Whether a failed response is worth another attempt.

    ``x-should-retry: true|false`` from the server decides when present; otherwise 408, 409, 429 and every
    status >= 500 are retried — except a 429 whose code is ``insufficient_quota`` (retrying cannot help).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    hint = lowered.get("x-should-retry", "").strip().lower()
    if hint == "true":
        return True
    if hint == "false":
        return False
    if error_code == "insufficient_quota":
        return False
    return status in RETRYABLE_STATUSES or status >= 500


@attrs.frozen
class RetryPolicy:
    """Retries with exponential backoff and jitter.

    Attempt ``n`` (0-based count of retries already made) waits the server's ``retry-after-ms`` /
    ``retry-after`` when it is in ``(0, 60]`` seconds, otherwise ``min(initial_delay * 2**n, max_delay) *
    (1 - jitter * random())``.  Only the initial response of a request is ever retried, never a stream that
    already started.
    """

    max_retries: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    initial_delay: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    max_delay: float = attrs.field(default=8.0, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(default=0.25, validator=[attrs.validators.ge(0), attrs.validators.le(1)])

    def delay(
        self,
        retries_done: int,
        headers: Mapping[str, str] | None = None,
        *,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait before retry number ``retries_done + 1``."""
        if headers:
            requested = retry_after_seconds(headers)
            if requested is not None and 0 < requested <= _MAX_HONOURED_RETRY_AFTER:
                return requested
        base = min(self.initial_delay * (2.0**retries_done), self.max_delay)
        return base * (1.0 - self.jitter * rand())
