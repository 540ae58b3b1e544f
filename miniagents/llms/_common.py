"""What both providers share: options, the shape of one model turn, and message helpers."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import attrs
import httpx

from miniagents._limits import RateLimiter
from miniagents.llms._output import OUTPUT_MODES, output_schema
from miniagents.llms._parts import cache_control_value
from miniagents.llms._retry import RetryPolicy
from miniagents.llms._sse import ServerSentEvent
from miniagents.llms._tools import Tool
from miniagents.llms._usage import UsageLimit

__all__ = [
    "OPTION_NAMES",
    "REASONING_ROLE",
    "LLMOptions",
    "ProviderSpec",
    "ReasoningDecoder",
    "StreamDecoder",
    "ToolCallRecord",
    "check_options",
    "endpoint_url",
    "message_role",
    "parse_options",
]

#: The ``role`` of the streamed reasoning messages (``reply_reasoning=True``); never sent back to a model.
REASONING_ROLE = "reasoning"

#: The text of the user turn inserted when a conversation would otherwise not start with one (Anthropic).
PLACEHOLDER_USER_TURN = "(conversation start)"


@attrs.frozen
class ToolCallRecord:
    """One tool call requested by the model; ``arguments`` is the JSON text the model produced."""

    id: str
    name: str
    arguments: str

    def as_field(self) -> dict[str, str]:
        """Return the call as stored in the ``tool_calls`` field of an assistant message."""
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


class StreamDecoder(Protocol):
    """Turns a provider's SSE events into text tokens, tool calls and the final message fields."""

    @property
    def finished(self) -> bool:
        """Whether the terminal event arrived (later events are ignored)."""

    def feed(self, event: ServerSentEvent) -> list[str]:
        """Consume one event; return the text tokens it carries.  Raises the provider's error events."""

    def result(self) -> tuple[dict[str, Any], list[ToolCallRecord]]:
        """Return the message fields and tool calls; raise ``TruncatedStreamError`` if the stream was cut."""


class ReasoningDecoder(Protocol):
    """A decoder that also streams the model's reasoning (an optional extension of :class:`StreamDecoder`).

    The loop calls :meth:`take_reasoning` after each :meth:`StreamDecoder.feed`; the reasoning tokens of an
    event come before its text tokens.  The decoder's :meth:`StreamDecoder.result` puts the whole reasoning
    (the tokens joined) in the ``reasoning`` field.
    """

    def take_reasoning(self) -> list[str]:
        """Return (and forget) the reasoning tokens decoded since the last call."""


class ProviderSpec(Protocol):
    """One provider's request building and stream decoding."""

    name: str
    api_key_env: str
    base_url_env: str
    default_base_url: str

    def request(
        self, options: LLMOptions, history: Sequence[Any], tools: Sequence[Tool], api_key: str, base_url: str
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Return ``(url, headers, json_body)`` of a streaming request."""

    def decoder(self, options: LLMOptions, request_id: str | None) -> StreamDecoder:
        """Return a fresh decoder for one response stream."""


_UNSET: Any = object()


@attrs.frozen(kw_only=True)
class LLMOptions:
    """The keyword options of ``openai_agent`` / ``anthropic_agent`` (validated once per call)."""

    model: str
    system: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[Any, ...] = ()
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    max_tool_rounds: int = 10
    reply_tool_messages: bool = True
    api_key: str | None = attrs.field(default=None, repr=False)
    base_url: str | None = None
    http_client: httpx.AsyncClient | None = None
    timeout: float | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    max_retries: int = 2
    retry_policy: RetryPolicy | Mapping[str, Any] | None = None
    extra_body: Mapping[str, Any] | None = None
    extra_headers: Mapping[str, str] | None = attrs.field(default=None, repr=False)
    anthropic_version: str = "2023-06-01"
    rate_limiter: RateLimiter | None = None
    api: str = "chat_completions"
    output_type: Any = None
    output_mode: str = "tool"
    output_retries: int = 1
    cache_system: bool | Mapping[str, Any] | None = None
    cache_tools: bool | Mapping[str, Any] | None = None
    thinking: int | Mapping[str, Any] | None = None
    reply_reasoning: bool = False
    usage_limit: UsageLimit | None = None

    def retry(self) -> RetryPolicy:
        """The retry policy: ``retry_policy`` if given, else the default with ``max_retries``."""
        if isinstance(self.retry_policy, RetryPolicy):
            return self.retry_policy
        if self.retry_policy is not None:
            return RetryPolicy(**{"max_retries": self.max_retries, **dict(self.retry_policy)})
        return RetryPolicy(max_retries=self.max_retries)


#: The values of the ``api`` option of ``openai_agent``: the OpenAI API its requests go to.
OPENAI_APIS = ("chat_completions", "responses")

#: The names of the keyword options (the fields of :class:`LLMOptions`).
OPTION_NAMES = frozenset(a.name for a in attrs.fields(LLMOptions))


def unknown_names_message(agent: str, unknown: Sequence[str], known: Iterable[str], what: str) -> str:
    """Return the error message for *unknown* names: each with a "did you mean" suggestion when one is close.

    Without any close match the known names are listed.
    """
    known = sorted(known)
    parts = []
    suggested = False
    for name in sorted(unknown):
        match = difflib.get_close_matches(name, known, n=1)
        suggested = suggested or bool(match)
        parts.append(f"{name!r} (did you mean {match[0]!r}?)" if match else repr(name))
    plural = "s" if len(parts) > 1 else ""
    message = f"agent {agent!r} got unknown {what}{plural} {', '.join(parts)}"
    if not suggested:
        message += f"; the {what}s are: {', '.join(known)}"
    return message


def check_options(agent: str, options: Mapping[str, Any]) -> None:
    """Check the names and the values of some options of an LLM agent (a fork's defaults, one call's kwargs).

    Only what is given is checked: a missing ``model`` is not an error here (the call's merged options are
    checked by :func:`parse_options`).  This is the ``kwargs_validator`` of the LLM agents, so mistakes raise at
    ``fork()`` / ``inquire()`` / ``initiate_call()``, before any call starts.

    Raises:
        TypeError: an unknown option (the message names the agent and suggests the closest option), or a
            value of the wrong type.
        ValueError: a value out of range.

    """
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(unknown_names_message(agent, unknown, OPTION_NAMES, "option"))
    if "model" in options:
        _check_model(agent, options["model"])
    _check_values(agent, options)


def parse_options(agent: str, options: Mapping[str, Any]) -> LLMOptions:
    """Validate the keyword options of one LLM agent call (its merged options) and return them.

    Raises:
        TypeError: an unknown option, a missing ``model`` or a value of the wrong type (the messages name the
            agent alias *agent*).
        ValueError: a value out of range.

    """
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise TypeError(unknown_names_message(agent, unknown, OPTION_NAMES, "option"))
    _check_model(agent, options.get("model"))
    _check_values(agent, options)
    values = dict(options)
    stop = values.get("stop")
    if stop is None:
        values["stop"] = ()
    elif isinstance(stop, str):
        values["stop"] = (stop,)
    else:
        values["stop"] = tuple(stop)
    tools = values.get("tools")
    values["tools"] = () if tools is None else tuple(tools)
    limit = values.get("usage_limit")
    if isinstance(limit, int):
        values["usage_limit"] = UsageLimit(total_tokens=limit)
    return LLMOptions(**values)


def _check_model(agent: str, model: Any) -> None:
    if not isinstance(model, str) or not model:
        raise TypeError(f"agent {agent!r} needs model=<model name> (a non-empty str), got {model!r}")


def _check_values(agent: str, values: Mapping[str, Any]) -> None:
    for name in ("max_tool_rounds", "max_retries"):
        value = values.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"agent {agent!r}: {name} must be an int >= 0, got {value!r}")
    for name in ("timeout", "connect_timeout", "read_timeout"):
        value = values.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"agent {agent!r}: {name} must be a positive number of seconds, got {value!r}")
    client = values.get("http_client")
    if client is not None and not isinstance(client, httpx.AsyncClient):
        raise TypeError(
            f"agent {agent!r}: http_client must be an httpx.AsyncClient, got {type(client).__name__}"
        )
    for name in ("api_key", "base_url"):
        value = values.get(name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"agent {agent!r}: {name} must be a str, got {type(value).__name__}")
    limiter = values.get("rate_limiter")
    if limiter is not None and not isinstance(limiter, RateLimiter):
        raise TypeError(
            f"agent {agent!r}: rate_limiter must be a miniagents.RateLimiter, got {type(limiter).__name__}"
        )
    policy = values.get("retry_policy")
    if policy is not None and not isinstance(policy, (RetryPolicy, Mapping)):
        raise TypeError(f"agent {agent!r}: retry_policy must be a RetryPolicy or a mapping of its fields")
    api = values.get("api")
    if api is not None and api not in OPENAI_APIS:
        raise ValueError(
            f"agent {agent!r}: api must be one of {', '.join(map(repr, OPENAI_APIS))}, got {api!r}"
        )
    if api == "responses" and values.get("stop"):
        raise ValueError(
            f"agent {agent!r}: stop is not supported by the OpenAI Responses API (api='responses'); "
            "leave it out or use api='chat_completions'"
        )
    _check_output(agent, values)
    _check_cache_options(agent, values)
    _check_reasoning_and_usage(agent, values)


def _check_output(agent: str, values: Mapping[str, Any]) -> None:
    """Check ``output_type`` (it must have a JSON schema), ``output_mode`` and ``output_retries``."""
    if values.get("output_type") is not None:
        output_schema(agent, values["output_type"])
    mode = values.get("output_mode")
    if mode is not None and mode not in OUTPUT_MODES:
        raise ValueError(f"agent {agent!r}: output_mode must be 'tool' or 'native', got {mode!r}")
    retries = values.get("output_retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise ValueError(f"agent {agent!r}: output_retries must be an int >= 0, got {retries!r}")


def _check_cache_options(agent: str, values: Mapping[str, Any]) -> None:
    """Check ``cache_system`` / ``cache_tools`` (Anthropic prompt-caching breakpoints)."""
    for name in ("cache_system", "cache_tools"):
        if values.get(name) is not None:
            try:
                cache_control_value(values[name], name)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"agent {agent!r}: {exc}") from None


def _check_reasoning_and_usage(agent: str, values: Mapping[str, Any]) -> None:
    thinking = values.get("thinking")
    if thinking is not None:
        if isinstance(thinking, bool) or not isinstance(thinking, (int, Mapping)):
            raise TypeError(
                f"agent {agent!r}: thinking must be a budget of thinking tokens (an int, e.g. 2048) or the "
                f"API's thinking object (a mapping), got {thinking!r:.80}"
            )
        if isinstance(thinking, int) and thinking < 1:
            raise ValueError(f"agent {agent!r}: thinking must be a budget of tokens >= 1, got {thinking!r}")
    reply_reasoning = values.get("reply_reasoning")
    if reply_reasoning is not None and not isinstance(reply_reasoning, bool):
        raise TypeError(f"agent {agent!r}: reply_reasoning must be a bool, got {reply_reasoning!r:.80}")
    limit = values.get("usage_limit")
    if limit is None or isinstance(limit, UsageLimit):
        return
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(
            f"agent {agent!r}: usage_limit must be a miniagents.llms.UsageLimit or an int (total tokens), "
            f"got {type(limit).__name__}"
        )
    if limit < 1:
        raise ValueError(f"agent {agent!r}: usage_limit must be >= 1 total tokens, got {limit!r}")


def resolve_api_key(options: LLMOptions, spec: ProviderSpec) -> str:
    """Return the API key from the options or the provider's environment variable (may be empty)."""
    return options.api_key if options.api_key is not None else os.environ.get(spec.api_key_env, "")


def resolve_base_url(options: LLMOptions, spec: ProviderSpec) -> str:
    """Return the base URL from the options, the environment, or the provider default (no trailing slash)."""
    url = options.base_url or os.environ.get(spec.base_url_env) or spec.default_base_url
    base, question, query = url.partition("?")
    return f"{base.rstrip('/')}{question}{query}"


def endpoint_url(base_url: str, path: str) -> str:
    """Return *base_url* with *path* appended to its path, keeping its query.

    An Azure-style ``https://host/openai/deployments/d?api-version=2024-10-21`` gives
    ``https://host/openai/deployments/d/chat/completions?api-version=2024-10-21`` (not a path inside the query).
    """
    base, question, query = base_url.partition("?")
    url = f"{base.rstrip('/')}/{path.lstrip('/')}"
    return f"{url}?{query}" if question else url


def is_reasoning_message(message: Any) -> bool:
    """Whether *message* is a streamed reasoning message (``role="reasoning"``): left out of requests.

    Its text is also in the ``reasoning`` field of the assistant message of its turn, and the provider's own
    record of it (Anthropic thinking blocks) in that message's ``thinking_blocks``.
    """
    return message_role(message) == REASONING_ROLE


def message_role(message: Any) -> str:
    """The conversation role of a message: its ``role`` field, else ``"user"``."""
    role = message.get("role") if hasattr(message, "get") else None
    return role if isinstance(role, str) and role else "user"


def tool_calls_of(message: Any) -> list[ToolCallRecord]:
    """The tool calls stored in an assistant message's ``tool_calls`` field."""
    raw = message.get("tool_calls") if hasattr(message, "get") else None
    calls: list[ToolCallRecord] = []
    for item in raw or ():
        if isinstance(item, Mapping):
            arguments = item.get("arguments", "{}")
            calls.append(
                ToolCallRecord(
                    id=str(item.get("id", "")),
                    name=str(item.get("name", "")),
                    arguments=arguments if isinstance(arguments, str) else _dumps(arguments),
                )
            )
    return calls


def _dumps(value: Any) -> str:
    import json

    def default(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return dict(obj)
        if isinstance(obj, (tuple, frozenset)):
            return list(obj)
        raise TypeError(type(obj).__name__)

    return json.dumps(value, default=default, ensure_ascii=False)
