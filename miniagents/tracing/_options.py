"""How a context traces: :class:`TracingOptions` (a leaf of the tracing plug-in: no OpenTelemetry import)."""

from __future__ import annotations

import os
from typing import Any

import attrs

__all__ = ["CAPTURE_CONTENT_ENV", "TracingOptions"]

#: The standard environment variable that opts in to recording prompts and completions.
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


@attrs.frozen(kw_only=True)
class TracingOptions:
    """How a :class:`~miniagents.MiniAgents` context traces, for ``MiniAgents(tracing=TracingOptions(...))``.

    Attributes:
        tracer_provider: the OpenTelemetry ``TracerProvider`` to use; ``None`` uses the global one.
        capture_message_content: record prompts and completions on LLM spans; ``None`` (the default) follows
            ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (``true`` to opt in).

    """

    tracer_provider: Any = None
    capture_message_content: bool | None = None

    def captures_content(self) -> bool:
        """Whether prompts and completions are recorded (the option, else the environment variable)."""
        if self.capture_message_content is not None:
            return self.capture_message_content
        return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"
