"""Provider-independent token usage: :class:`Usage`, its normalisation from each provider, and :class:`UsageLimit`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["USAGE_FIELDS", "Usage", "UsageLimit", "usage_fields"]

#: The keys of the ``normalized_usage`` / ``total_usage`` message fields (:meth:`Usage.as_dict`).
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "requests",
)


def _count(raw: Mapping[str, Any] | None, key: str) -> int:
    """An integer count of *raw* (``0`` when it is missing or not a non-negative int)."""
    if raw is None:
        return 0
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def _nested(raw: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = raw.get(key)
    return value if isinstance(value, Mapping) else None


@attrs.frozen(kw_only=True)
class Usage:
    """Token usage in one provider-independent shape; ``a + b`` adds two of them (``sum(usages)`` works too).

    Attributes:
        input_tokens: every prompt token, cached ones included (OpenAI ``prompt_tokens``; Anthropic
            ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``).
        output_tokens: every generated token, reasoning included (OpenAI ``completion_tokens``; Anthropic
            ``output_tokens``).
        cache_read_tokens: the part of ``input_tokens`` read from the prompt cache (OpenAI
            ``prompt_tokens_details.cached_tokens``; Anthropic ``cache_read_input_tokens``).
        cache_write_tokens: the part of ``input_tokens`` written to the prompt cache (Anthropic
            ``cache_creation_input_tokens``; OpenAI reports none).
        reasoning_tokens: the part of ``output_tokens`` spent reasoning, when the provider reports it (OpenAI
            ``completion_tokens_details.reasoning_tokens``; Anthropic counts thinking in ``output_tokens`` only).
        requests: how many model responses this usage covers (1 for one turn).

    A count the provider did not report is ``0``.  Messages hold usage as plain ``dict`` fields
    (:meth:`as_dict`), so they persist and compare like any other field; :meth:`of` reads them back.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        """``input_tokens + output_tokens``."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            requests=self.requests + other.requests,
        )

    def __radd__(self, other: Any) -> Usage:
        # ``sum(usages)`` starts from 0.
        if other == 0:
            return self
        if isinstance(other, Usage):
            return other + self
        return NotImplemented

    def as_dict(self) -> dict[str, int]:
        """The usage as the ``dict`` stored in messages (keys :data:`USAGE_FIELDS`, ``total_tokens`` included)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "requests": self.requests,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Usage:
        """The inverse of :meth:`as_dict` (``total_tokens`` is derived; unknown keys are ignored)."""
        return cls(
            input_tokens=_count(data, "input_tokens"),
            output_tokens=_count(data, "output_tokens"),
            cache_read_tokens=_count(data, "cache_read_tokens"),
            cache_write_tokens=_count(data, "cache_write_tokens"),
            reasoning_tokens=_count(data, "reasoning_tokens"),
            requests=_count(data, "requests"),
        )

    @classmethod
    def from_provider(cls, raw: Mapping[str, Any] | None, *, provider: str | None = None) -> Usage:
        """Normalise the ``usage`` object of one response (``requests=1``) as reported by *provider*.

        The shape decides: Chat Completions (``prompt_tokens`` / ``completion_tokens`` and their ``*_details``,
        DeepSeek's ``prompt_cache_hit_tokens``), Anthropic (``provider="anthropic"`` or any
        ``cache_*_input_tokens`` key: ``input_tokens`` excludes the cached tokens) and the OpenAI Responses
        API (``input_tokens`` / ``output_tokens`` with ``input_tokens_details`` / ``output_tokens_details``).
        A missing or malformed *raw* gives zero tokens.
        """
        if not isinstance(raw, Mapping):
            return cls(requests=1)
        if "prompt_tokens" in raw or "completion_tokens" in raw:
            prompt_details = _nested(raw, "prompt_tokens_details")
            cached = _count(prompt_details, "cached_tokens") or _count(raw, "prompt_cache_hit_tokens")
            return cls(
                input_tokens=_count(raw, "prompt_tokens"),
                output_tokens=_count(raw, "completion_tokens"),
                cache_read_tokens=cached,
                reasoning_tokens=_count(_nested(raw, "completion_tokens_details"), "reasoning_tokens"),
                requests=1,
            )
        anthropic = provider == "anthropic" or any(
            key in raw for key in ("cache_read_input_tokens", "cache_creation_input_tokens")
        )
        if anthropic:
            read = _count(raw, "cache_read_input_tokens")
            write = _count(raw, "cache_creation_input_tokens")
            return cls(
                input_tokens=_count(raw, "input_tokens") + read + write,
                output_tokens=_count(raw, "output_tokens"),
                cache_read_tokens=read,
                cache_write_tokens=write,
                requests=1,
            )
        return cls(
            input_tokens=_count(raw, "input_tokens"),
            output_tokens=_count(raw, "output_tokens"),
            cache_read_tokens=_count(_nested(raw, "input_tokens_details"), "cached_tokens"),
            reasoning_tokens=_count(_nested(raw, "output_tokens_details"), "reasoning_tokens"),
            requests=1,
        )

    @classmethod
    def of(cls, message: Any, *, total: bool = False) -> Usage:
        """The usage of an LLM agent's assistant message: its turn's, or with *total* the call's so far.

        Reads the ``normalized_usage`` (``total_usage``) field; a message without it (one from before these
        fields existed) is normalised from its raw ``usage`` and ``provider`` fields, and one with neither is
        one request of unknown tokens if it is an assistant message, else no usage at all.
        """
        get = getattr(message, "get", None)
        if get is None:
            raise TypeError(f"Usage.of() takes a message, got {type(message).__name__}")
        stored = get("total_usage" if total else "normalized_usage")
        if isinstance(stored, Mapping):
            return cls.from_dict(stored)
        raw = get("usage")
        if isinstance(raw, Mapping):
            return cls.from_provider(raw, provider=get("provider"))
        return cls(requests=1) if get("role") == "assistant" else cls()


def _positive_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"UsageLimit.{attribute.name} must be an int >= 1 or None, got {value!r}")


@attrs.frozen(kw_only=True)
class UsageLimit:
    """A budget for one LLM agent call (its whole tool loop), given as ``usage_limit=``.

    Every limit is optional.  Token limits compare against the call's running :class:`Usage` (as reported by
    the provider; a server that reports none counts zero), ``requests`` against the number of model
    responses.  The limit is checked when the model asks for another round (tool calls): if the usage so far
    has *reached* any limit (``>=``), no further request is sent, the requested tools are not run, and the
    call fails with :class:`~miniagents.llms.UsageLimitExceededError`.  Everything already replied stays
    replied; a final answer is never withheld (its tokens were already spent).
    """

    total_tokens: int | None = attrs.field(default=None, validator=_positive_or_none)
    input_tokens: int | None = attrs.field(default=None, validator=_positive_or_none)
    output_tokens: int | None = attrs.field(default=None, validator=_positive_or_none)
    requests: int | None = attrs.field(default=None, validator=_positive_or_none)

    def reached(self, usage: Usage) -> tuple[str, int, int] | None:
        """The first limit *usage* has reached, as ``(name, used, limit)``, or ``None``."""
        for name in ("total_tokens", "input_tokens", "output_tokens", "requests"):
            limit = getattr(self, name)
            used = getattr(usage, name)
            if limit is not None and used >= limit:
                return name, used, limit
        return None


def usage_fields(raw: Any, provider: str, before: Usage) -> dict[str, dict[str, int]]:
    """Return the usage fields of one turn's message.

    ``normalized_usage`` is the turn's usage, ``total_usage`` *before* plus the turn's: the call's running total.
    """
    turn = Usage.from_provider(raw if isinstance(raw, Mapping) else None, provider=provider)
    return {"normalized_usage": turn.as_dict(), "total_usage": (before + turn).as_dict()}
