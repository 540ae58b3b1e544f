"""OpenTelemetry tracing of agent calls and LLM requests (``pip install 'miniagents[otel]'``).

Turn it on with ``MiniAgents(tracing=...)``:

- ``None`` (the default): traced when ``opentelemetry`` is imported and a real tracer provider is configured
  globally (``trace.set_tracer_provider(...)``) when the context is entered; otherwise nothing is done at all.
- ``False``: never traced (not even inside a traced call of an outer context).  ``True``: traced with the
  global tracer provider.
- a ``TracerProvider``: traced with it (the global provider is not used).
- :class:`TracingOptions`: a provider and whether prompts and completions are captured.

**Agent calls.**  Every call gets one span (kind ``INTERNAL``) named after the agent's alias.  Its parent is
the span of the call that started it (``AgentCall.parent``), whichever task started it: the agent function, a
``ctx.start_soon`` child, a ``reply_out_of_order`` pump or a tool execution.  A call started outside any agent
is a child of the span current where it was started, so a span around ``inquire()`` becomes its parent.  The
call's span is the current span in the call's task, so spans the agent creates (LLM requests, your own) nest
under it.  Attributes:

``miniagents.agent.alias``, ``miniagents.call.id``, ``miniagents.call.parent_id`` (absent for a root call),
``miniagents.run.id`` (``MiniAgents.run_id``: matches the persisted ``CallRecord``)
    set when the span starts;
``miniagents.call.input_messages``, ``miniagents.call.reply_messages``, ``miniagents.call.outcome``
    (``"completed"``, ``"failed"`` or ``"cancelled"``) set when it ends.

A failed call records the exception (``record_exception``), sets ``error.type`` to the exception's class name
and the status to ``ERROR``.  A cancelled call is not an error: its status stays unset and it gets the event
``miniagents.call.cancelled``.  Every span is ended exactly once, when the call's reply sequence is complete.

**LLM requests** (``openai_agent``, ``anthropic_agent``, ``local_agent``) get one span each (kind ``CLIENT``,
named ``chat {model}``) following the OpenTelemetry GenAI semantic conventions: ``gen_ai.operation.name``
(``"chat"``), ``gen_ai.provider.name`` (``"openai"`` / ``"anthropic"``; also as the older ``gen_ai.system``),
``gen_ai.request.model``, ``gen_ai.request.max_tokens`` / ``temperature`` / ``top_p`` / ``stop_sequences`` when
set, ``server.address`` / ``server.port``, then ``gen_ai.response.model``, ``gen_ai.response.id``,
``gen_ai.response.finish_reasons``, ``gen_ai.usage.input_tokens`` / ``output_tokens``.  A failed request sets
``error.type`` (the :class:`~miniagents.llms.LLMError` subclass name) and the ``ERROR`` status.  The span covers
the retries.  The W3C trace context of this span goes out with the HTTP request (``traceparent``, injected by
the globally configured propagator).

**Tool executions.**  A tool an LLM agent runs for the model (a function or a ``Tool``; an agent tool has its
call's span instead) gets one span (kind ``INTERNAL``, named ``execute_tool {name}``, current while the tool
runs) under the LLM agent's call: ``gen_ai.operation.name`` (``"execute_tool"``), ``gen_ai.tool.name``,
``gen_ai.tool.call.id``, ``gen_ai.tool.type`` (``"function"``), ``gen_ai.tool.description``.  A failed tool (the
model gets the error as the tool result) sets ``error.type`` and the ``ERROR`` status; a cancelled one gets the
event ``miniagents.tool.cancelled``.  With content capture, ``gen_ai.tool.call.arguments`` (the JSON the model
sent) and ``gen_ai.tool.call.result`` (the text sent back) are recorded too.

Prompt and completion content is **not** recorded unless you opt in: ``TracingOptions(capture_message_content
=True)`` or the standard environment variable ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.  It
then goes into ``gen_ai.system_instructions``, ``gen_ai.input.messages`` and ``gen_ai.output.messages`` (JSON
strings in the conventions' ``parts`` format).  Request headers, URLs and API keys are never recorded.  Image
and document parts of a message are ``uri`` parts (their URL) or ``blob`` parts with ``mime_type``, ``modality``
and ``size`` but no ``content``: their bytes never go into a span.

Without a tracer provider or with ``tracing=False`` the runtime does no OpenTelemetry work: calls pay one check
of a tuple of observers, LLM requests and each turn's tool round one read of a context variable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from miniagents._publish import publish
from miniagents.tracing._options import CAPTURE_CONTENT_ENV, TracingOptions

if TYPE_CHECKING:
    from miniagents._observe import CallObserver

__all__ = ["CAPTURE_CONTENT_ENV", "TracingOptions", "tracing_observer"]


def tracing_observer(tracing: Any) -> CallObserver | None:
    """The call observer that traces a context, for its ``MiniAgents(tracing=...)`` option (see the module doc).

    Returns ``None`` when nothing is to be traced: ``tracing`` is ``False``, or ``None`` while no real tracer
    provider is configured (OpenTelemetry absent, or only its default no-op/proxy provider).

    Raises:
        ImportError: tracing was asked for explicitly but ``opentelemetry-api`` is not installed.
        TypeError: *tracing* is none of the accepted values.

    """
    if tracing is False:
        return None
    if not (tracing is None or tracing is True or isinstance(tracing, TracingOptions)) and not hasattr(
        tracing, "get_tracer"
    ):
        raise TypeError(
            "MiniAgents(tracing=...) takes None, True, False, an OpenTelemetry TracerProvider or "
            f"miniagents.tracing.TracingOptions, not {type(tracing).__name__}"
        )
    try:
        from miniagents.tracing._observer import TracingObserver, global_provider_is_configured
    except ImportError as error:
        if not (error.name or "").startswith("opentelemetry"):
            raise
        if tracing is None:
            return None
        raise ImportError(
            "MiniAgents(tracing=...) needs OpenTelemetry: pip install 'miniagents[otel]'"
        ) from error
    if tracing is None:
        if not global_provider_is_configured():
            return None
        options = TracingOptions()
    elif tracing is True:
        options = TracingOptions()
    elif isinstance(tracing, TracingOptions):
        options = tracing
    else:
        options = TracingOptions(tracer_provider=tracing)
    return TracingObserver(options)


publish(globals())  # the public names report this module (see miniagents._publish)
