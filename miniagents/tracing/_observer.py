"""The call observer that gives every agent call an OpenTelemetry span (imports ``opentelemetry``)."""

from __future__ import annotations

import weakref
from collections.abc import MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, SpanKind

import miniagents
from miniagents._scope import current_context
from miniagents.llms._telemetry import NO_SPAN, NO_TOOL_SPAN, ChatSpan, ToolSpan, active_tracing
from miniagents.tracing._genai import OpenChatSpan, OpenToolSpan, record_failure

if TYPE_CHECKING:
    from miniagents import AgentCall, MiniAgents
    from miniagents._messages import Message
    from miniagents._records import CallOutcome
    from miniagents.llms._common import LLMOptions
    from miniagents.tracing._options import TracingOptions

__all__ = ["TracingObserver", "global_provider_is_configured"]

TRACER_NAME = "miniagents"

ALIAS = "miniagents.agent.alias"
CALL_ID = "miniagents.call.id"
PARENT_CALL_ID = "miniagents.call.parent_id"
RUN_ID = "miniagents.run.id"
INPUT_MESSAGES = "miniagents.call.input_messages"
REPLY_MESSAGES = "miniagents.call.reply_messages"
OUTCOME = "miniagents.call.outcome"
CANCELLED_EVENT = "miniagents.call.cancelled"

#: The span of every traced call that is still referenced (a finished call may still have children starting).
_call_spans: weakref.WeakKeyDictionary[AgentCall, Span] = weakref.WeakKeyDictionary()


def global_provider_is_configured() -> bool:
    """Whether a real tracer provider was set globally (not the default proxy or the no-op one)."""
    return not isinstance(trace.get_tracer_provider(), (ProxyTracerProvider, NoOpTracerProvider))


class TracingObserver:
    """Gives each call a span (see :mod:`miniagents.tracing`); also creates the spans of LLM requests."""

    __slots__ = ("capture_content", "tracer")

    def __init__(self, options: TracingOptions) -> None:
        provider = options.tracer_provider
        if provider is None:
            self.tracer = trace.get_tracer(TRACER_NAME, miniagents.__version__)
        else:
            self.tracer = provider.get_tracer(TRACER_NAME, miniagents.__version__)
        self.capture_content = options.captures_content()

    def call_started(self, call: AgentCall) -> Span:
        """Start the call's span: a child of the parent call's span, else of the starter's current span."""
        parent = call.parent
        parent_span = None if parent is None else _call_spans.get(parent)
        attributes: dict[str, Any] = {
            ALIAS: call.agent.alias,
            CALL_ID: call.call_id,
            RUN_ID: call.context.run_id,
        }
        if parent is not None:
            attributes[PARENT_CALL_ID] = parent.call_id
        span = self.tracer.start_span(
            call.agent.alias,
            context=None if parent_span is None else trace.set_span_in_context(parent_span),
            kind=SpanKind.INTERNAL,
            attributes=attributes,
        )
        _call_spans[call] = span
        return span

    def call_running(self, call: AgentCall, span: Span) -> None:
        """Make the call's span current in the call's task (it is seen by everything the call runs).

        Not detached: the context of the call's task ends with the task.
        """
        otel_context.attach(trace.set_span_in_context(span))
        active_tracing.set(self)

    def call_finished(
        self, call: AgentCall, span: Span, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        """Record the message counts and the outcome, then end the span."""
        stats = call.statistics()
        span.set_attributes(
            {
                INPUT_MESSAGES: stats.input_messages,
                REPLY_MESSAGES: stats.reply_messages,
                OUTCOME: outcome,
            }
        )
        if outcome == "failed" and error is not None:
            record_failure(span, error)
        elif outcome == "cancelled":
            span.add_event(CANCELLED_EVENT)
        span.end()

    def chat_span(
        self,
        provider: str,
        options: LLMOptions,
        url: str,
        headers: MutableMapping[str, str],
        conversation: Sequence[Message],
    ) -> ChatSpan:
        """Start the span of one model request (a child of the current span) and inject its context.

        :data:`NO_SPAN` when the current context is not traced by this observer: a ``MiniAgents`` context
        entered inside a traced call inherits the call's context variables, not its tracing.
        """
        if not self._traces_current_context():
            return NO_SPAN
        return OpenChatSpan(self.tracer, self.capture_content, provider, options, url, headers, conversation)

    def tool_span(self, name: str, call_id: str, description: str | None, arguments: str) -> ToolSpan:
        """Start the ``execute_tool`` span of one tool execution (a child of the current span)."""
        if not self._traces_current_context():
            return NO_TOOL_SPAN
        return OpenToolSpan(self.tracer, self.capture_content, name, call_id, description, arguments)

    def _traces_current_context(self) -> bool:
        context = cast("MiniAgents | None", current_context.get())  # the ContextLike is the MiniAgents
        return context is not None and any(observer is self for observer in context.observers)
