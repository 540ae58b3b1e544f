"""Anthropic Messages: request mapping and stream decoding."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from miniagents.llms._common import (
    PLACEHOLDER_USER_TURN,
    LLMOptions,
    ToolCallRecord,
    is_reasoning_message,
    message_role,
    thaw,
    tool_calls_of,
)
from miniagents.llms._exceptions import LLMError, MalformedResponseError, TruncatedStreamError
from miniagents.llms._http import build_status_error
from miniagents.llms._sse import ServerSentEvent
from miniagents.llms._tools import Tool

__all__ = ["AnthropicDecoder", "AnthropicSpec"]

#: ``max_tokens`` is required by the Messages API; this is sent when the caller gives none.
DEFAULT_MAX_TOKENS = 4096
_NOT_JSON: Any = object()
#: The block type of the marker of an empty user message while the turns are built (never sent).
_BLANK_USER = "miniagents:blank_user_text"


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def anthropic_messages(
    options: LLMOptions, history: Sequence[Any], *, agent: str = "anthropic_agent"
) -> tuple[str | None, list[dict[str, Any]]]:
    """Map conversation messages to ``(system, messages)`` of the Messages API.

    ``system``/``developer`` messages join the top-level ``system`` (after the ``system`` option); LLM replies
    become assistant turns (their thinking blocks, text and ``tool_use`` blocks); tool results become
    ``tool_result`` blocks of a user turn; anything else is user text.  Consecutive turns of the same role
    are merged (``tool_result`` blocks first, as the API requires), empty and whitespace-only texts are dropped
    (the API rejects them), a final assistant (prefill) text loses its trailing whitespace (rejected too), and a
    placeholder user turn is inserted when the conversation would not start with a user turn.

    Streamed reasoning messages (``role="reasoning"``) are left out: the thinking of a turn goes back as the
    ``thinking_blocks`` of its assistant message (verbatim: ``thinking`` with its ``signature``,
    ``redacted_thinking`` with its ``data``), before its text and ``tool_use`` blocks, as the API requires
    when a tool loop continues with thinking enabled.

    A user message is never dropped silently, though: an empty or whitespace-only one is left out only when it
    is merged into a user turn that has other content.

    Raises:
        LLMError: a user turn is made only of empty or whitespace-only user messages (``inquire("")``); the
            message names the agent alias *agent* and the positions of those messages in *history*.  Nothing
            was sent: the API would reject the request.

    """
    system_parts = [options.system] if options.system and options.system.strip() else []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": list(blocks)})

    for position, message in enumerate(history):
        if is_reasoning_message(message):
            continue
        role = message_role(message)
        content = str(message)
        # The API rejects whitespace-only text ("text content blocks must contain non-whitespace text"):
        # such texts are dropped everywhere (a model reply that was only "\n\n" is common).
        has_text = bool(content.strip())
        if role in ("system", "developer"):
            if has_text:
                system_parts.append(content)
        elif role == "assistant":
            blocks: list[dict[str, Any]] = [dict(thaw(b)) for b in (message.get("thinking_blocks") or ())]
            if has_text:
                blocks.append({"type": "text", "text": content})
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c.arguments)}
                for c in tool_calls_of(message)
            )
            add("assistant", blocks)
        elif role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id", "")),
            }
            if has_text:
                block["content"] = content
            if message.get("is_error"):
                block["is_error"] = True
            add("user", [block])
        elif has_text:
            add("user", [{"type": "text", "text": content}])
        else:
            # Kept in place as a marker until the turns are merged: dropped only from a turn with content.
            add("user", [{"type": _BLANK_USER, "position": position, "text": content}])
    for turn in turns:
        if turn["role"] == "user":
            blocks = [b for b in turn["content"] if b.get("type") != _BLANK_USER]
            if not blocks:
                raise _empty_user_turn(agent, turn["content"])
            blocks.sort(key=lambda b: 0 if b.get("type") == "tool_result" else 1)
            turn["content"] = blocks
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_USER_TURN}]})
    last = turns[-1]
    if last["role"] == "assistant" and last["content"][-1].get("type") == "text":
        # A final assistant turn is a prefill the model continues; the API rejects one that ends in whitespace.
        last["content"][-1] = {**last["content"][-1], "text": last["content"][-1]["text"].rstrip()}
    system = "\n\n".join(system_parts) if system_parts else None
    return system, turns


def _empty_user_turn(agent: str, blanks: list[dict[str, Any]]) -> LLMError:
    positions = ", ".join(str(b["position"]) for b in blanks)
    texts = ", ".join(repr(b["text"]) for b in blanks)
    which = f"input messages {positions} are" if len(blanks) > 1 else f"input message {positions} is"
    return LLMError(
        f"agent {agent!r}: {which} a user turn with no text ({texts}) and the Anthropic API rejects text that "
        "is empty or only whitespace; nothing was sent (send some text, or no message at all)",
        provider="anthropic",
    )


def _thinking(option: Any) -> dict[str, Any] | None:
    """The request's ``thinking`` object: a budget ``N`` is ``{"type": "enabled", "budget_tokens": N}``."""
    if option is None:
        return None
    if isinstance(option, int):
        return {"type": "enabled", "budget_tokens": option}
    value = thaw(option)
    return value if isinstance(value, dict) else None


def _tool_choice(choice: Any) -> Any:
    if choice is None or hasattr(choice, "items"):
        return thaw(choice)
    if choice in ("auto", "any", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    return {"type": "tool", "name": str(choice)}


class AnthropicSpec:
    """The Anthropic Messages provider."""

    name = "anthropic"
    api_key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com"

    def __init__(self, *, agent: str = "anthropic_agent") -> None:
        #: The alias of the agent whose requests these are (named in input errors).
        self.agent = agent

    def request(
        self, options: LLMOptions, history: Sequence[Any], tools: Sequence[Tool], api_key: str, base_url: str
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Return the URL, headers and body of a streaming Messages request.

        Raises:
            LLMError: the conversation has a user turn with no text (see :func:`anthropic_messages`).

        """
        system, messages = anthropic_messages(options, history, agent=self.agent)
        thinking = _thinking(options.thinking)
        max_tokens = options.max_tokens
        if max_tokens is None:
            # max_tokens must exceed the thinking budget: the default leaves DEFAULT_MAX_TOKENS for the answer.
            budget = thinking.get("budget_tokens") if thinking else None
            max_tokens = DEFAULT_MAX_TOKENS + (budget if isinstance(budget, int) else 0)
        body: dict[str, Any] = {
            "model": options.model,
            "max_tokens": max_tokens,
            "messages": messages,
            "stream": True,
        }
        if thinking:
            body["thinking"] = thinking
        if system:
            body["system"] = system
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.top_p is not None:
            body["top_p"] = options.top_p
        if options.stop:
            body["stop_sequences"] = list(options.stop)
        if tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": thaw(t.parameters)}
                for t in tools
            ]
            choice = _tool_choice(options.tool_choice)
            if options.parallel_tool_calls is False:
                choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
            if choice is not None:
                body["tool_choice"] = choice
        if options.extra_body:
            body.update(thaw(options.extra_body))
        headers = {"anthropic-version": options.anthropic_version}
        if api_key:
            headers["x-api-key"] = api_key
        return f"{base_url}/v1/messages", headers, body

    def decoder(self, options: LLMOptions, request_id: str | None) -> AnthropicDecoder:
        """Return a decoder for one stream."""
        return AnthropicDecoder(model=options.model, request_id=request_id)


def _start_input(start: dict[str, Any]) -> str:
    value = start.get("input")
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) and value else "{}"


class _Block:
    __slots__ = ("data", "id", "kind", "name", "parts", "signature")

    def __init__(self, kind: str, start: dict[str, Any]) -> None:
        self.kind = kind
        self.id = str(start.get("id", ""))
        self.name = str(start.get("name", ""))
        self.parts: list[str] = []
        self.signature = str(start.get("signature", "") or "")
        self.data = start


class AnthropicDecoder:
    """Decode Messages stream events.

    Text comes from ``text_delta``; ``tool_use`` inputs are assembled from ``input_json_delta`` fragments per
    block index (an empty input means ``{}``); thinking blocks are kept (with their signature, and
    ``redacted_thinking`` blocks with their ``data``) so they can be sent back in a tool loop, and their
    ``thinking_delta`` texts stream as reasoning tokens (a thinking block after the first is preceded by a
    blank-line token), joined in the ``reasoning`` field.  ``ping`` and unknown events are ignored; an
    ``error`` event raises the typed error at once.  The stream is complete only after ``message_stop``.
    """

    def __init__(self, *, model: str, request_id: str | None) -> None:
        self._fields: dict[str, Any] = {"model": model}
        self._request_id = request_id
        self._blocks: dict[int, _Block] = {}
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._done = False
        self._reasoning: list[str] = []
        self._reasoning_taken = 0
        self._thinking_blocks = 0

    @property
    def finished(self) -> bool:
        """Whether ``message_stop`` arrived."""
        return self._done

    def feed(self, event: ServerSentEvent) -> list[str]:
        """Consume one event; return its text tokens."""
        if self._done:
            return []
        try:
            payload: Any = json.loads(event.data) if event.data else {}
        except ValueError:
            payload = _NOT_JSON
        if payload is _NOT_JSON:  # raised outside the except block: no __context__
            raise self._malformed(f"not JSON: {event.data[:200]!r}")
        if not isinstance(payload, dict):
            return []
        kind = event.event if event.event != "message" else payload.get("type", "")
        if kind == "error" or payload.get("type") == "error":
            raise build_status_error(
                None, {"request-id": self._request_id or ""}, event.data.encode(), provider="anthropic"
            )
        if kind == "message_start":
            message = self._object(payload, "message")
            if isinstance(message.get("id"), str) and message["id"]:
                self._fields["response_id"] = message["id"]
            if isinstance(message.get("model"), str) and message["model"]:
                self._fields["model"] = message["model"]
            if isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
        elif kind == "content_block_start":
            start = self._object(payload, "content_block")
            index = self._index(payload, default=len(self._blocks))
            self._blocks[index] = _Block(str(start.get("type", "")), start)
            if start.get("type") == "text" and isinstance(start.get("text"), str) and start["text"]:
                return [start["text"]]
            if start.get("type") == "thinking":
                if self._thinking_blocks:
                    self._reasoning.append("\n\n")
                self._thinking_blocks += 1
                initial = start.get("thinking")
                if isinstance(initial, str) and initial:
                    self._blocks[index].parts.append(initial)
                    self._reasoning.append(initial)
        elif kind == "content_block_delta":
            delta = self._object(payload, "delta")
            block = self._blocks.get(self._index(payload, default=-1))
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    return [text]
            elif block is None:
                return []
            elif delta_type == "input_json_delta":
                block.parts.append(str(delta.get("partial_json", "")))
            elif delta_type == "thinking_delta":
                thinking = delta.get("thinking")
                if isinstance(thinking, str) and thinking:
                    block.parts.append(thinking)
                    self._reasoning.append(thinking)
            elif delta_type == "signature_delta":
                block.signature += str(delta.get("signature", ""))
        elif kind == "message_delta":
            delta = self._object(payload, "delta")
            if isinstance(delta.get("stop_reason"), str) and delta["stop_reason"]:
                self._stop_reason = delta["stop_reason"]
            if delta.get("stop_sequence"):
                self._fields["stop_sequence"] = delta["stop_sequence"]
            if isinstance(payload.get("usage"), dict):
                self._usage.update({k: v for k, v in payload["usage"].items() if v is not None})
        elif kind == "message_stop":
            self._done = True
        return []

    def take_reasoning(self) -> list[str]:
        """Return the reasoning tokens decoded since the last call (see :class:`ReasoningDecoder`)."""
        fresh = self._reasoning[self._reasoning_taken :]
        self._reasoning_taken = len(self._reasoning)
        return fresh

    def _malformed(self, detail: str) -> MalformedResponseError:
        return MalformedResponseError(
            f"malformed stream event ({detail})", provider="anthropic", request_id=self._request_id
        )

    def _object(self, payload: dict[str, Any], key: str) -> dict[str, Any]:
        value = payload.get(key) or {}
        if not isinstance(value, dict):
            raise self._malformed(f"{key} is not an object: {value!r:.200}")
        return value

    def _index(self, payload: dict[str, Any], *, default: int) -> int:
        index = payload.get("index", default)
        if not isinstance(index, int):
            raise self._malformed(f"index is not an integer: {index!r:.200}")
        return index

    def result(self) -> tuple[dict[str, Any], list[ToolCallRecord]]:
        """Return the message fields and the tool calls; raise :class:`TruncatedStreamError` when cut short."""
        if not self._done:
            raise TruncatedStreamError(
                "the stream ended without message_stop", provider="anthropic", request_id=self._request_id
            )
        fields = dict(self._fields)
        fields["finish_reason"] = self._stop_reason
        if self._usage:
            fields["usage"] = dict(self._usage)
        calls: list[ToolCallRecord] = []
        thinking: list[dict[str, Any]] = []
        for _, block in sorted(self._blocks.items()):
            if block.kind == "tool_use":
                # The input normally streams as input_json_delta fragments (content_block_start has {});
                # a server may instead send the whole input in content_block_start and no deltas.
                arguments = "".join(block.parts).strip() or _start_input(block.data)
                calls.append(ToolCallRecord(id=block.id, name=block.name, arguments=arguments))
            elif block.kind == "thinking":
                thinking.append(
                    {"type": "thinking", "thinking": "".join(block.parts), "signature": block.signature}
                )
            elif block.kind == "redacted_thinking":
                thinking.append(dict(block.data))
        if thinking:
            fields["thinking_blocks"] = thinking
        if self._reasoning:
            fields["reasoning"] = "".join(self._reasoning)
        return fields, calls
