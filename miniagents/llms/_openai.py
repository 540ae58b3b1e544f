"""OpenAI Chat Completions (and OpenAI-compatible servers): request mapping and stream decoding."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from miniagents._frozen import thaw
from miniagents.llms._common import (
    LLMOptions,
    ToolCallRecord,
    endpoint_url,
    is_reasoning_message,
    message_role,
    tool_calls_of,
)
from miniagents.llms._decoding import EventDecoder
from miniagents.llms._parts import DocumentPart, ImagePart, Part, checked_parts, data_url, part_error
from miniagents.llms._sse import ServerSentEvent
from miniagents.llms._tools import Tool

__all__ = ["OpenAIDecoder", "OpenAISpec"]

_loads = json.loads
_NOT_JSON: Any = object()
_PASS_THROUGH_ROLES = frozenset({"system", "developer", "user"})


def _tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, (dict,)) or hasattr(choice, "items"):
        return thaw(choice)
    if choice in ("auto", "none", "required"):
        return choice
    if choice == "any":
        return "required"
    return {"type": "function", "function": {"name": str(choice)}}


def openai_messages(
    options: LLMOptions, history: Sequence[Any], *, agent: str = "openai_agent"
) -> list[dict[str, Any]]:
    """Map conversation messages to Chat Completions ``messages``.

    LLM replies (``role="assistant"``) become assistant turns with their ``tool_calls``; tool results
    (``role="tool"``) become tool turns; ``system``/``developer`` messages keep their role; anything else is a
    user turn.  Every message is sent as given, an empty one too (the API accepts an empty ``content``).

    A user message with ``parts`` (or an image / document part given as a message) sends a content list: its
    content as a text part (when not empty), then each part in order (see :func:`openai_content_part`).

    Raises:
        LLMError: a part the API cannot take (a document by URL), parts on a message that is not a user turn,
            or a ``parts`` item of the wrong type; the message names the agent alias *agent*, the input
            message and the part.  Nothing was sent.

    Reasoning is never sent back: streamed reasoning messages (``role="reasoning"``) are left out and an
    assistant message's ``reasoning`` field is not mapped (Chat Completions has no field for it, and
    DeepSeek rejects a ``reasoning_content`` in the input).
    """
    messages: list[dict[str, Any]] = []
    if options.system:
        messages.append({"role": "system", "content": options.system})
    for position, message in enumerate(history):
        if is_reasoning_message(message):
            continue
        role = message_role(message)
        content = str(message)
        parts = checked_parts(
            message,
            "user" if role not in _NOT_USER_ROLES else role,
            agent=agent,
            provider="openai",
            position=position,
        )
        if parts:
            items: list[dict[str, Any]] = [{"type": "text", "text": content}] if content else []
            items.extend(
                openai_content_part(part, agent, position, index) for index, part in enumerate(parts)
            )
            messages.append({"role": "user", "content": items})
            continue
        if role == "assistant":
            calls = tool_calls_of(message)
            # A turn that only calls tools sends "" (not null): OpenAI accepts both, but llama-cpp-python
            # (and other compatible servers with a string-typed schema) answer null with an error.
            entry: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                entry["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ]
            messages.append(entry)
        elif role == "tool":
            messages.append(
                {"role": "tool", "tool_call_id": str(message.get("tool_call_id", "")), "content": content}
            )
        elif role in _PASS_THROUGH_ROLES and role != "user":
            messages.append({"role": role, "content": content})
        else:
            messages.append({"role": "user", "content": content})
    return messages


_NOT_USER_ROLES = frozenset({"assistant", "tool", "system", "developer"})


def openai_content_part(part: Part, agent: str, position: int, index: int) -> dict[str, Any]:
    """One Chat Completions content part for a ``parts`` item of input message *position*.

    A ``str`` is a text part; an image an ``image_url`` part (bytes as a ``data:`` URL, ``detail`` when
    given); a PDF a ``file`` part (``file_data`` a ``data:`` URL); a plain-text document a text part (Chat
    Completions takes no other file type).

    Raises:
        LLMError: a document by URL (the API takes file data or uploaded file ids only).

    """
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, ImagePart):
        url = part.url if part.url is not None else data_url(str(part.media_type), part.data or b"")
        image: dict[str, Any] = {"url": url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    assert isinstance(part, DocumentPart)
    text = part.plain_text
    if text is not None:
        return {"type": "text", "text": text}
    if part.data is None:
        raise part_error(
            agent,
            "openai",
            position,
            f"parts[{index}] ({part!r:.200})",
            "OpenAI Chat Completions cannot take a document by URL (only file data); download it and pass "
            "DocumentPart(data=...)",
        )
    return {
        "type": "file",
        "file": {
            "filename": part.filename or "document.pdf",
            "file_data": data_url("application/pdf", part.data),
        },
    }


class OpenAIFamily:
    """What OpenAI's two APIs share: the provider settings, the sampling options and the end of a request."""

    name = "openai"
    api_key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"

    def __init__(self, *, agent: str = "openai_agent") -> None:
        #: The alias of the agent whose requests these are (named in input errors).
        self.agent = agent

    @staticmethod
    def _sampling(options: LLMOptions, body: dict[str, Any]) -> None:
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.top_p is not None:
            body["top_p"] = options.top_p

    @staticmethod
    def _finish(
        options: LLMOptions,
        body: dict[str, Any],
        tools: list[dict[str, Any]],
        tool_choice: Callable[[Any], Any],
        api_key: str,
        url: str,
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Add the tools (and their choice), then ``extra_body`` (which wins), and the key's header."""
        if tools:
            body["tools"] = tools
            if options.tool_choice is not None:
                body["tool_choice"] = tool_choice(options.tool_choice)
            if options.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = options.parallel_tool_calls
        if options.extra_body:
            body.update(thaw(options.extra_body))
        # No key, no header: local OpenAI-compatible servers often need none (the server decides: 401).
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        return url, headers, body


class OpenAISpec(OpenAIFamily):
    """The OpenAI Chat Completions provider."""

    def request(
        self, options: LLMOptions, history: Sequence[Any], tools: Sequence[Tool], api_key: str, base_url: str
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Return the URL, headers and body of a streaming chat completion.

        Raises:
            LLMError: an input part the API cannot take (see :func:`openai_messages`).

        """
        body: dict[str, Any] = {
            "model": options.model,
            "messages": openai_messages(options, history, agent=self.agent),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        self._sampling(options, body)
        if options.max_tokens is not None:
            body["max_completion_tokens"] = options.max_tokens
        if options.stop:
            body["stop"] = list(options.stop)
        functions = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": thaw(t.parameters)},
            }
            for t in tools
        ]
        return self._finish(
            options, body, functions, _tool_choice, api_key, endpoint_url(base_url, "chat/completions")
        )

    def decoder(self, options: LLMOptions, request_id: str | None) -> OpenAIDecoder:
        """Return a decoder for one stream."""
        return OpenAIDecoder(model=options.model, request_id=request_id)


class _PartialCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class OpenAIDecoder(EventDecoder):
    """Decode ``chat.completion.chunk`` events.

    Text comes from ``delta.content`` (choice 0).  Tool-call fragments are assembled per ``index``: ``id`` and
    ``name`` are set once (servers that repeat them in every fragment are handled), ``arguments`` are
    concatenated.  The stream is complete only after a ``finish_reason`` and ``[DONE]``; an ``{"error": ...}``
    event raises the typed error at once.  Reasoning comes from ``delta.reasoning_content`` (DeepSeek, vLLM
    before 0.9, llama.cpp) or, when that is absent, ``delta.reasoning`` (newer vLLM, Ollama, OpenRouter):
    servers that send both with the same text are read once.
    """

    provider = "openai"
    terminal = "[DONE]"

    def __init__(self, *, model: str, request_id: str | None) -> None:
        super().__init__(model=model, request_id=request_id)
        self._calls: dict[int, _PartialCall] = {}
        self._refusal: list[str] = []
        self._finish_reason: str | None = None

    def feed(self, event: ServerSentEvent) -> list[str]:
        """Consume one event; return its text tokens."""
        if self._done:
            return []
        data = event.data
        if data[-1:] != "}" and data.strip() == "[DONE]":  # a chunk ends with "}": no strip() per token
            self._done = True
            return []
        try:
            chunk: Any = _loads(data)
        except ValueError:
            chunk = _NOT_JSON
        if chunk is _NOT_JSON:  # raised outside the except block: no __context__
            raise self._malformed(f"not JSON: {data[:200]!r}")
        if chunk.__class__ is not dict:
            return []
        if chunk.get("error"):
            raise self._error_event(data)
        fields = self._fields
        if chunk.get("id"):
            fields["response_id"] = chunk["id"]
        if chunk.get("model"):
            fields["model"] = chunk["model"]
        if chunk.get("system_fingerprint"):
            fields["system_fingerprint"] = chunk["system_fingerprint"]
        usage = chunk.get("usage")
        if usage.__class__ is dict:
            fields["usage"] = usage
        choices = chunk.get("choices") or []
        if choices.__class__ is not list:
            raise self._malformed(f"choices is not a list: {choices!r:.200}")
        tokens: list[str] = []
        for choice in choices:
            if choice.__class__ is not dict or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.__class__ is not dict:
                raise self._malformed(f"delta is not an object: {delta!r:.200}")
            content = delta.get("content")
            if len(delta) != 1 or content.__class__ is not str:
                self._other_delta(delta)  # reasoning, refusal, tool calls: not the one-token hot path
            if content.__class__ is str and content:
                tokens.append(content)
            finish_reason = choice.get("finish_reason")
            if finish_reason.__class__ is str and finish_reason:
                self._finish_reason = finish_reason
        return tokens

    def _other_delta(self, delta: dict[str, Any]) -> None:
        """What a delta holds besides its text: reasoning, a refusal, tool-call fragments."""
        reasoning = delta.get("reasoning_content")
        if not isinstance(reasoning, str) or not reasoning:
            reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._reasoning.append(reasoning)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._refusal.append(refusal)
        fragments = delta.get("tool_calls") or []
        if not isinstance(fragments, list):
            raise self._malformed(f"delta.tool_calls is not a list: {fragments!r:.200}")
        for fragment in fragments:
            self._tool_fragment(fragment)

    def _tool_fragment(self, fragment: Any) -> None:
        if not isinstance(fragment, dict):
            raise self._malformed(f"a tool call fragment is not an object: {fragment!r:.200}")
        index = fragment.get("index", len(self._calls))
        if not isinstance(index, int):
            raise self._malformed(f"tool call index is not an integer: {index!r:.200}")
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _PartialCall()
        if isinstance(fragment.get("id"), str) and fragment["id"] and not call.id:
            call.id = fragment["id"]
        function = fragment.get("function") or {}
        if not isinstance(function, dict):
            raise self._malformed(f"tool call function is not an object: {function!r:.200}")
        if isinstance(function.get("name"), str) and function["name"] and not call.name:
            call.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.arguments.append(arguments)

    def _missing(self) -> str | None:
        """A complete stream has a ``finish_reason`` and ``[DONE]``."""
        return "a finish_reason" if self._finish_reason is None else super()._missing()

    def _result(self) -> tuple[dict[str, Any], list[ToolCallRecord]]:
        fields = dict(self._fields)
        fields["finish_reason"] = self._finish_reason
        if self._refusal:
            fields["refusal"] = "".join(self._refusal)
        if self._reasoning:
            fields["reasoning"] = "".join(self._reasoning)
        calls = [
            ToolCallRecord(id=c.id or f"call_{i}", name=c.name, arguments="".join(c.arguments) or "{}")
            for i, c in sorted(self._calls.items())
        ]
        return fields, calls
