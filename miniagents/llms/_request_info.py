"""What an LLM request tells a :class:`~miniagents.RateLimiter`: :class:`LLMRequestInfo` (the key's input)."""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

import attrs

__all__ = ["LLMRequestInfo", "api_key_fingerprint"]


def api_key_fingerprint(api_key: str) -> str:
    """Return a short, stable fingerprint of *api_key* (16 hex digits of its SHA-256); never the key itself."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


@attrs.frozen
class LLMRequestInfo:
    """What an LLM agent tells the limiter about a request, to pick its key (see ``miniagents.RateLimiter(key=)``).

    Attributes:
        provider: ``"openai"`` or ``"anthropic"``.
        model: the requested model.
        base_url: the API base URL.
        api_key_fingerprint: :func:`api_key_fingerprint` of the API key (``""`` when there is no key).

    """

    provider: str
    model: str
    base_url: str
    api_key_fingerprint: str

    @property
    def default_key(self) -> Hashable:
        """The key when the limiter has no ``key`` function: ``(provider, model)``."""
        return (self.provider, self.model)
