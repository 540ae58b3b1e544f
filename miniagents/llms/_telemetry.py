"""The LLM layer's tracing hook: what a model request or a tool run asks of tracing.  No OpenTelemetry here.

The LLM layer does not import the tracing plug-in; the plug-in's observer (``miniagents.tracing``) sets
:data:`active_tracing` in the task of every call it traces (``call_running``), so the agent function, its child
tasks and the LLM requests it makes see it.  Code that would create a span reads it once; ``None`` means "not
traced" and nothing else happens.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from miniagents._messages import Message
    from miniagents.llms._common import LLMOptions

__all__ = ["NO_SPAN", "NO_TOOL_SPAN", "ChatSpan", "ToolSpan", "Tracing", "active_tracing", "chat_span"]


class ChatSpan(Protocol):
    """The span of one model request, used as a context manager around the request.

    Leaving the block with an exception records it (cancellation is recorded as such, not as an error); the
    span ends exactly once, when the block is left.
    """

    def __enter__(self) -> ChatSpan:
        """Return the span itself."""

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Record *exc* (if any) and end the span."""

    def failed(self, error: BaseException) -> None:
        """Record a failure that is not raised through the block (the first one recorded wins)."""

    def finished(self, message: Message) -> None:
        """Record the response: model, id, finish reason, token usage (and content when captured)."""


class ToolSpan(Protocol):
    """The span of one tool execution (``execute_tool``), used as a context manager around the tool's code.

    The span is the current span inside the block.  Leaving the block with an exception records it
    (cancellation as such, not as an error); the span ends exactly once, when the block is left.
    """

    def __enter__(self) -> ToolSpan:
        """Make the span current; return it."""

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Record *exc* (if any) and end the span."""

    def failed(self, error: BaseException) -> None:
        """Record a failure that is not raised through the block (the first one recorded wins)."""

    def finished(self, result: str) -> None:
        """Record the tool's result (only when content is captured)."""


class Tracing(Protocol):
    """What the tracing observer offers to the code running inside a traced call."""

    def chat_span(
        self,
        provider: str,
        options: LLMOptions,
        url: str,
        headers: MutableMapping[str, str],
        conversation: Sequence[Message],
    ) -> ChatSpan:
        """Start the span of one model request and inject its trace context into *headers*."""

    def tool_span(self, name: str, call_id: str, description: str | None, arguments: str) -> ToolSpan:
        """Start the span of one tool execution (a child of the current span)."""


class _NoSpan:
    """The span of an untraced request: every method does nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def failed(self, error: BaseException) -> None:
        """Do nothing."""

    def finished(self, message: Any) -> None:
        """Do nothing."""


#: The span used when tracing is off.
NO_SPAN: ChatSpan = _NoSpan()
#: The tool span used when tracing is off.
NO_TOOL_SPAN: ToolSpan = _NoSpan()

#: The tracing of the current call (set by the tracing observer in the call's task), ``None`` when untraced.
active_tracing: ContextVar[Tracing | None] = ContextVar("miniagents_active_tracing", default=None)


def chat_span(
    provider: str,
    options: LLMOptions,
    url: str,
    headers: MutableMapping[str, str],
    conversation: Sequence[Message],
) -> ChatSpan:
    """The span of one model request: :data:`NO_SPAN` unless the current call is traced.

    When it is traced, the W3C trace context of the new span is added to *headers* (``traceparent``, through
    the configured OpenTelemetry propagator).
    """
    tracing = active_tracing.get()
    if tracing is None:
        return NO_SPAN
    return tracing.chat_span(provider, options, url, headers, conversation)
