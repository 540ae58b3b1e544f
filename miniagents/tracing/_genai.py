"""The span of one model request, after the OpenTelemetry GenAI semantic conventions (imports ``opentelemetry``).

Only the request options, the response fields of the resolved message and (when the user opted in) the
conversation text are recorded: never headers, URLs (only the host and port) or keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import anyio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from miniagents.llms._common import is_reasoning_message, message_role, tool_calls_of
from miniagents.llms._parts import DocumentPart, ImagePart, message_parts

if TYPE_CHECKING:
    from miniagents._messages import Message
    from miniagents.llms._common import LLMOptions

__all__ = ["OpenChatSpan", "OpenToolSpan", "record_failure"]

CANCELLED_EVENT = "miniagents.request.cancelled"
TOOL_CANCELLED_EVENT = "miniagents.tool.cancelled"


def _server(url: str) -> dict[str, Any]:
    """``server.address`` / ``server.port`` of *url* (never the rest of it: it may carry credentials)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return {}
    if not host:
        return {}
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return {"server.address": host, "server.port": port}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        return text


def _parts(message: Message) -> tuple[str, list[dict[str, Any]]]:
    role = message_role(message)
    content = str(message)
    if role == "tool":
        part: dict[str, Any] = {
            "type": "tool_call_response",
            "id": str(message.get("tool_call_id", "")),
            "response": content,
        }
        return role, [part]
    parts: list[dict[str, Any]] = []
    reasoning = message.get("reasoning") if role == "assistant" else None
    if isinstance(reasoning, str) and reasoning:
        parts.append({"type": "reasoning", "content": reasoning})
    if content:
        parts.append({"type": "text", "content": content})
    items = message_parts(message)
    if items:
        parts.extend(_content_part(item) for item in items)
    if role == "assistant":
        for call in tool_calls_of(message):
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.id,
                    "name": call.name,
                    "arguments": _arguments(call.arguments),
                }
            )
    return role, parts


def _content_part(item: Any) -> dict[str, Any]:
    """The conventions' part for an item of a message's ``parts``: bytes are never recorded, only their size.

    Text is a ``text`` part; an image or document by URL a ``uri`` part; bytes and plain-text documents a
    ``blob`` part with ``mime_type``, ``modality`` and ``size`` (bytes, or characters of a text document) but
    no ``content``, so span attributes never carry the data.
    """
    if isinstance(item, str):
        return {"type": "text", "content": item}
    if isinstance(item, (ImagePart, DocumentPart)):
        modality = "image" if isinstance(item, ImagePart) else "document"
        part: dict[str, Any] = {"modality": modality}
        if item.media_type is not None:
            part["mime_type"] = item.media_type
        if item.url is not None:
            return {"type": "uri", **part, "uri": item.url}
        size = len(item.data) if item.data is not None else len(item.get("text") or "")
        return {"type": "blob", **part, "size": size}
    return {"type": type(item).__name__}


def _usage(usage: Any) -> dict[str, int]:
    """Input/output token counts from OpenAI (``prompt_tokens``...) or Anthropic (``input_tokens``...) usage."""
    if not isinstance(usage, Mapping):
        return {}

    def count(*keys: str) -> int | None:
        values = [usage.get(k) for k in keys]
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        return sum(ints) if ints else None

    result: dict[str, int] = {}
    # Anthropic reports cached prompt tokens apart; the conventions count them as input tokens.
    input_tokens = count("prompt_tokens") if "prompt_tokens" in usage else None
    if input_tokens is None:
        input_tokens = count("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    output_tokens = count("completion_tokens") if "completion_tokens" in usage else count("output_tokens")
    if input_tokens is not None:
        result["gen_ai.usage.input_tokens"] = input_tokens
    if output_tokens is not None:
        result["gen_ai.usage.output_tokens"] = output_tokens
    return result


def record_failure(span: Span, error: BaseException) -> None:
    """Record *error* on *span* the conventions' way: exception event, ``error.type``, ``ERROR`` status."""
    span.record_exception(error)
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class _EndedOnce:
    """What the request and tool spans share: the first failure is recorded, the span is ended exactly once.

    Leaving the block with a cancellation adds the subclass's cancellation event (not an error); with any other
    exception, records it as the failure.
    """

    __slots__ = ("_ended", "_failed", "span")

    span: Span
    _ended: bool
    _failed: bool
    _cancelled_event: ClassVar[str]

    def _end(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        if exc is not None and not self._failed:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                self.span.add_event(self._cancelled_event)
            else:
                self.failed(exc)
        self._ended = True
        self.span.end()

    def failed(self, error: BaseException) -> None:
        """Record *error* (the first failure only): exception event, ``error.type``, ``ERROR`` status."""
        if self._failed or self._ended:
            return
        self._failed = True
        record_failure(self.span, error)


class OpenChatSpan(_EndedOnce):
    """A started ``chat {model}`` span; a context manager that ends it once (see ``ChatSpan``)."""

    __slots__ = ("_capture",)
    _cancelled_event = CANCELLED_EVENT

    def __init__(
        self,
        tracer: Tracer,
        capture_content: bool,
        provider: str,
        options: LLMOptions,
        url: str,
        headers: MutableMapping[str, str],
        conversation: Sequence[Message],
    ) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.request.model": options.model,
            **_server(url),
        }
        if options.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = options.max_tokens
        if options.temperature is not None:
            attributes["gen_ai.request.temperature"] = float(options.temperature)
        if options.top_p is not None:
            attributes["gen_ai.request.top_p"] = float(options.top_p)
        if options.stop:
            attributes["gen_ai.request.stop_sequences"] = list(options.stop)
        if options.output_type is not None and options.output_mode == "native":
            attributes["gen_ai.output.type"] = "json"  # the request asks for a JSON answer
        if capture_content:
            if options.system:
                attributes["gen_ai.system_instructions"] = _json(
                    [{"type": "text", "content": options.system}]
                )
            messages = []
            for message in conversation:
                if is_reasoning_message(message):
                    continue  # streamed reasoning is not sent: the request's messages are what is recorded
                role, parts = _parts(message)
                if parts:
                    messages.append({"role": role, "parts": parts})
            attributes["gen_ai.input.messages"] = _json(messages)
        self.span: Span = tracer.start_span(
            f"chat {options.model}", kind=SpanKind.CLIENT, attributes=attributes
        )
        self._capture = capture_content
        self._ended = False
        self._failed = False
        propagate.inject(headers, context=trace.set_span_in_context(self.span))

    def __enter__(self) -> OpenChatSpan:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._end(exc)

    def finished(self, message: Message) -> None:
        """Record the response fields of the turn's resolved *message*."""
        if self._ended:
            return
        attributes: dict[str, Any] = {}
        model = message.get("model")
        if isinstance(model, str) and model:
            attributes["gen_ai.response.model"] = model
        response_id = message.get("response_id")
        if isinstance(response_id, str) and response_id:
            attributes["gen_ai.response.id"] = response_id
        finish_reason = message.get("finish_reason")
        if isinstance(finish_reason, str) and finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [finish_reason]
        attributes.update(_usage(message.get("usage")))
        if self._capture:
            _, parts = _parts(message)
            output: dict[str, Any] = {"role": "assistant", "parts": parts}
            if isinstance(finish_reason, str) and finish_reason:
                output["finish_reason"] = finish_reason
            attributes["gen_ai.output.messages"] = _json([output])
        self.span.set_attributes(attributes)


class OpenToolSpan(_EndedOnce):
    """A started ``execute_tool {name}`` span; a context manager that makes it current and ends it once."""

    __slots__ = ("_capture", "_token")
    _cancelled_event = TOOL_CANCELLED_EVENT

    def __init__(
        self,
        tracer: Tracer,
        capture_content: bool,
        name: str,
        call_id: str,
        description: str | None,
        arguments: str,
    ) -> None:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "function",
        }
        if call_id:
            attributes["gen_ai.tool.call.id"] = call_id
        if description:
            attributes["gen_ai.tool.description"] = description
        if capture_content:
            attributes["gen_ai.tool.call.arguments"] = arguments
        self.span: Span = tracer.start_span(
            f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes
        )
        self._capture = capture_content
        self._ended = False
        self._failed = False
        self._token: Token[Context] | None = None

    def __enter__(self) -> OpenToolSpan:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        self._end(exc)

    def finished(self, result: str) -> None:
        """Record the tool's result text (only when content is captured)."""
        if self._capture and not self._ended:
            self.span.set_attribute("gen_ai.tool.call.result", result)
