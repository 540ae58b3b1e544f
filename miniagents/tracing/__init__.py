"""OpenTelemetry tracing of agent calls, LLM requests and tool executions (``pip install 'miniagents[otel]'``).

Turn it on with ``MiniAgents(tracing=...)``: ``None`` (the default) traces when a real tracer provider is
configured globally, ``True`` with the global provider, ``False`` never; a ``TracerProvider`` or
:class:`TracingOptions` (a provider, and whether prompts and completions are captured) name the provider.

Every agent call gets a span named after its agent, under the span of the call that started it; every model
request a ``chat {model}`` span with the OpenTelemetry GenAI attributes, whose trace context goes out with the
HTTP request (``traceparent``); every function tool an LLM agent runs an ``execute_tool {name}`` span.  Prompt
and completion content is recorded only on opt-in (:data:`CAPTURE_CONTENT_ENV` or ``TracingOptions``); request
headers, URLs (beyond host and port) and API keys never are.  When off, the runtime does no OpenTelemetry work.

The span names, their attributes and events, and when each is set: ``docs/tracing.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from miniagents._publish import publish
from miniagents.tracing._options import CAPTURE_CONTENT_ENV, TracingOptions

if TYPE_CHECKING:
    from miniagents._observe import CallObserver

__all__ = ["CAPTURE_CONTENT_ENV", "TracingOptions", "tracing_observer"]


def tracing_observer(tracing: Any) -> CallObserver | None:
    """The call observer that traces a context, for its ``MiniAgents(tracing=...)`` option (see docs/tracing.md).

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
