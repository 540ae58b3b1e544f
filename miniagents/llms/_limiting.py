"""The LLM agents' side of rate limiting: which limiters apply to a request, its token estimate, usage settling."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from miniagents import MiniAgents, RateLease, RateLimiter
from miniagents.llms._request_info import LLMRequestInfo, api_key_fingerprint
from miniagents.llms._retry import retry_after_seconds

__all__ = ["PAUSING_STATUSES", "RequestLimits", "request_limits", "usage_tokens"]

#: Statuses whose ``retry-after`` pauses every waiter on the key: rate limited, overloaded (Anthropic), unavailable.
PAUSING_STATUSES = frozenset({429, 503, 529})
_MAX_PAUSE = 60.0
#: Prompt size estimate: one token per this many bytes of the JSON request body.
_BYTES_PER_TOKEN = 4
_OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def usage_tokens(usage: Any) -> int | None:
    """The total tokens of a provider's ``usage`` field (OpenAI ``total_tokens``, else the sum of the counts)."""
    if not isinstance(usage, Mapping):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    counted = [
        value
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
        if isinstance(value := usage.get(name), int) and not isinstance(value, bool)
    ]
    return sum(counted) if counted else None


class RequestLimits:
    """The limiters (with their keys) one model request goes through, in a fixed order.

    Every HTTP attempt enters :meth:`attempt`, which holds one lease per limiter; the caller settles the usage
    of the successful attempt with :meth:`settle_usage`.
    """

    __slots__ = ("_failed", "_leases", "pairs", "prompt_tokens", "tokens")

    def __init__(self, pairs: list[tuple[RateLimiter, Hashable]], output_tokens: int) -> None:
        self.pairs = pairs
        self.prompt_tokens = 0
        self.tokens = output_tokens
        self._leases: list[RateLease] = []
        self._failed = False

    def estimate(self, body_bytes: int) -> None:
        """Add the prompt estimate (``body_bytes / 4``) to the reservation."""
        self.prompt_tokens = body_bytes // _BYTES_PER_TOKEN
        self.tokens += self.prompt_tokens

    @asynccontextmanager
    async def attempt(self) -> AsyncIterator[None]:
        """Hold one lease per limiter for one HTTP attempt (waiting in each queue in turn)."""
        leases: list[RateLease] = []
        self._leases = leases
        self._failed = False
        try:
            for limiter, key in self.pairs:
                lease = limiter.acquire(key, tokens=self.tokens)
                await lease.__aenter__()
                leases.append(lease)
        except BaseException:
            # Stopped while waiting in a later limiter's queue: nothing was sent, so the limiters that had
            # granted already get the request and its tokens back.
            for lease in leases:
                lease.release(unused=True)
            raise
        try:
            yield
        except BaseException:
            for lease in leases:
                lease.release(failed=True)
            raise
        for lease in leases:
            lease.release(failed=self._failed)

    def accepted(self) -> None:
        """The provider answered 2xx: confirm the leases (ends a probe) and count the prompt as used."""
        for lease in self._leases:
            lease.note_used(self.prompt_tokens)
            lease.confirm()

    def rejected(self, status: int | None, headers: Mapping[str, str]) -> bool:
        """The attempt failed (no usage); pause the keys on a 429/503/529 with ``retry-after``.

        Returns whether the keys were paused (the retry then waits in the limiter instead of sleeping).
        """
        self._failed = True
        if status not in PAUSING_STATUSES:
            return False
        seconds = retry_after_seconds(headers)
        if seconds is None or not 0 < seconds <= _MAX_PAUSE:
            return False
        for limiter, key in self.pairs:
            limiter.pause(key, seconds)
        return True

    def settle_usage(self, usage: Any) -> None:
        """Settle the current attempt's leases to the reported usage (kept as reserved when there is none)."""
        tokens = usage_tokens(usage)
        if tokens is None:
            return
        for lease in self._leases:
            if lease.granted:
                lease.settle(tokens)


def request_limits(
    agent_limiter: RateLimiter | None,
    *,
    provider: str,
    model: str,
    base_url: str,
    api_key: str,
    body: Mapping[str, Any],
) -> RequestLimits | None:
    """The limits of one request: the agent's ``rate_limiter`` option, then the context's (both when both are set).

    ``None`` when neither is set.  The reservation starts with the requested maximum output (``max_tokens`` /
    ``max_completion_tokens`` / ``max_output_tokens`` of the body, 0 when absent);
    :meth:`RequestLimits.estimate` adds the prompt.
    """
    context = MiniAgents.current().rate_limiter
    limiters = [lim for lim in (agent_limiter, context) if lim is not None]
    if len(limiters) == 2 and limiters[0] is limiters[1]:
        limiters.pop()
    if not limiters:
        return None
    info = LLMRequestInfo(
        provider=provider,
        model=model,
        base_url=base_url,
        api_key_fingerprint=api_key_fingerprint(api_key) if api_key else "",
    )
    output = 0
    for name in _OUTPUT_FIELDS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            output = value
            break
    return RequestLimits([(limiter, limiter.key(info)) for limiter in limiters], output)
