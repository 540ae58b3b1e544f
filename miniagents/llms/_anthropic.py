"""Anthropic Messages: request mapping and stream decoding."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from miniagents._frozen import thaw
from miniagents.llms._common import (
    PLACEHOLDER_USER_TURN,
    LLMOptions,
    ToolCallRecord,
    endpoint_url,
    is_reasoning_message,
    message_role,
    tool_calls_of,
)
from miniagents.llms._decoding import EventDecoder
from miniagents.llms._exceptions import LLMError
from miniagents.llms._parts import (
    DocumentPart,
    ImagePart,
    Part,
    base64_text,
    cache_control_value,
    checked_parts,
)
from miniagents.llms._sse import ServerSentEvent
from miniagents.llms._tools import Tool

__all__ = ["AnthropicDecoder", "AnthropicSpec", "anthropic_content_block", "check_cache_breakpoints"]

#: ``max_tokens`` is required by the Messages API; this is sent when the caller gives none.
DEFAULT_MAX_TOKENS = 4096
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
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
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

    A user message with ``parts`` (or a part given as a message) adds its content (when it has text), then a
    block per part in order (see :func:`anthropic_content_block`); blank text parts are left out.

    Prompt caching: a message with a ``cache_control`` field (``True`` or ``{"type": "ephemeral", "ttl":
    "1h"}``) puts that ``cache_control`` on the last block it adds (a ``system`` message: on its own system
    block); ``cache_system`` on the last system block.  With any breakpoint in the system, ``system`` is sent
    as a list of text blocks (the option first, then the system messages) instead of one joined string.

    Raises:
        LLMError: a user turn is made only of empty or whitespace-only user messages (``inquire("")``); the
            message names the agent alias *agent* and the positions of those messages in *history*.  Also: a
            ``parts`` problem (parts on a message that is not a user turn, an item of the wrong type), or a
            ``cache_control`` that is not a valid marker or is on a message that sends no block, naming the
            agent and the input message.  Nothing was sent: the API would reject the request.

    """
    system_parts: list[tuple[str, dict[str, Any] | None]] = (
        [(options.system, None)] if options.system and options.system.strip() else []
    )
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]], marker: dict[str, Any] | None = None) -> None:
        if marker is not None:
            real = [b for b in blocks if b.get("type") != _BLANK_USER]
            if not real:
                raise LLMError(
                    f"agent {agent!r}: input message {position} has cache_control but sends no content block "
                    "(its text is empty or only whitespace); nothing was sent",
                    provider="anthropic",
                )
            blocks[-1] = {**blocks[-1], "cache_control": marker}
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
        marker = _message_marker(message, agent, position)
        kind = role if role in ("system", "developer", "assistant", "tool") else "user"
        parts = checked_parts(message, kind, agent=agent, provider="anthropic", position=position)
        if parts:
            part_blocks: list[dict[str, Any]] = [{"type": "text", "text": content}] if has_text else []
            part_blocks.extend(
                anthropic_content_block(part) for part in parts if not isinstance(part, str) or part.strip()
            )
            if part_blocks:
                add("user", part_blocks, marker)
            else:
                add("user", [{"type": _BLANK_USER, "position": position, "text": content}], marker)
        elif role in ("system", "developer"):
            if has_text:
                system_parts.append((content, marker))
            elif marker is not None:
                add("system", [], marker)  # raises: a marker on a message that sends nothing
        elif role == "assistant":
            blocks: list[dict[str, Any]] = [dict(thaw(b)) for b in (message.get("thinking_blocks") or ())]
            if has_text:
                blocks.append({"type": "text", "text": content})
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c.arguments)}
                for c in tool_calls_of(message)
            )
            add("assistant", blocks, marker)
        elif role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id", "")),
            }
            if has_text:
                block["content"] = content
            if message.get("is_error"):
                block["is_error"] = True
            add("user", [block], marker)
        elif has_text:
            add("user", [{"type": "text", "text": content}], marker)
        else:
            # Kept in place as a marker until the turns are merged: dropped only from a turn with content.
            add("user", [{"type": _BLANK_USER, "position": position, "text": content}], marker)
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
    system: str | list[dict[str, Any]] | None = None
    if system_parts:
        system_marker = cache_control_value(options.cache_system, "cache_system")
        if system_marker is not None and system_parts[-1][1] is None:
            system_parts[-1] = (system_parts[-1][0], system_marker)
        if any(m is not None for _, m in system_parts):
            system = [
                {"type": "text", "text": text, **({"cache_control": m} if m is not None else {})}
                for text, m in system_parts
            ]
        else:
            system = "\n\n".join(text for text, _ in system_parts)
    return system, turns


def _message_marker(message: Any, agent: str, position: int) -> dict[str, Any] | None:
    value = message.get("cache_control") if hasattr(message, "get") else None
    try:
        return cache_control_value(value, "cache_control")
    except (TypeError, ValueError) as exc:
        error = str(exc)
    raise LLMError(
        f"agent {agent!r}: input message {position}: {error}; nothing was sent", provider="anthropic"
    )


def anthropic_content_block(part: Part) -> dict[str, Any]:
    """The Messages content block of a ``parts`` item.

    A ``str`` is a text block; an image an ``image`` block with a ``base64`` or ``url`` source; a document a
    ``document`` block with a ``base64`` (PDF bytes), ``url`` (PDF) or ``text`` (plain text) source and the
    ``filename`` as its ``title``.
    """
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if isinstance(part, ImagePart):
        if part.url is not None:
            return {"type": "image", "source": {"type": "url", "url": part.url}}
        return {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": part.media_type,
                "data": base64_text(part.data or b""),
            },
        }
    assert isinstance(part, DocumentPart)
    source: dict[str, Any]
    text = part.plain_text
    if part.url is not None:
        source = {"type": "url", "url": part.url}
    elif text is not None:
        source = {"type": "text", "media_type": "text/plain", "data": text}
    else:
        source = {"type": "base64", "media_type": "application/pdf", "data": base64_text(part.data or b"")}
    block: dict[str, Any] = {"type": "document", "source": source}
    if part.filename is not None:
        block["title"] = part.filename
    return block


#: Anthropic's limit of ``cache_control`` breakpoints in one request.
MAX_CACHE_BREAKPOINTS = 4


def check_cache_breakpoints(body: Mapping[str, Any], agent: str) -> None:
    """Check the ``cache_control`` breakpoints of a request *body* the way the API does, before sending it.

    Raises:
        LLMError: more than :data:`MAX_CACHE_BREAKPOINTS` breakpoints (naming the count and where each is), or
            a ``"1h"`` breakpoint after a ``"5m"`` one (the API requires longer TTLs first, in the order
            tools, system, messages).  The message names the agent alias *agent*.

    """
    found: list[tuple[str, str]] = []

    def visit(where: str, block: Any) -> None:
        if isinstance(block, Mapping) and isinstance(block.get("cache_control"), Mapping):
            found.append((where, str(block["cache_control"].get("ttl", "5m"))))

    for n, tool in enumerate(body.get("tools") or ()):
        visit(f"tools[{n}]", tool)
    system = body.get("system")
    if isinstance(system, list):
        for n, block in enumerate(system):
            visit(f"system[{n}]", block)
    for m, turn in enumerate(body.get("messages") or ()):
        content = turn.get("content") if isinstance(turn, Mapping) else None
        if isinstance(content, list):
            for n, block in enumerate(content):
                visit(f"messages[{m}].content[{n}]", block)
    if len(found) > MAX_CACHE_BREAKPOINTS:
        raise LLMError(
            f"agent {agent!r}: the request has {len(found)} cache_control breakpoints "
            f"({', '.join(w for w, _ in found)}) and Anthropic allows at most {MAX_CACHE_BREAKPOINTS}; "
            "nothing was sent",
            provider="anthropic",
        )
    short: str | None = None
    for where, ttl in found:
        if ttl != "1h":
            short = short or where
        elif short is not None:
            raise LLMError(
                f"agent {agent!r}: the 1h cache_control breakpoint at {where} comes after the 5m one at {short}; "
                "Anthropic requires longer TTLs first (tools, then system, then messages); nothing was sent",
                provider="anthropic",
            )


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
            LLMError: the conversation has a user turn with no text, or a part or ``cache_control`` marker the
                API would reject (see :func:`anthropic_messages`), or too many / misordered cache breakpoints
                (see :func:`check_cache_breakpoints`).

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
            tools_marker = cache_control_value(options.cache_tools, "cache_tools")
            if tools_marker is not None:
                body["tools"][-1]["cache_control"] = tools_marker
            choice = _tool_choice(options.tool_choice)
            if options.parallel_tool_calls is False:
                choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
            if choice is not None:
                body["tool_choice"] = choice
        if options.extra_body:
            body.update(thaw(options.extra_body))
        check_cache_breakpoints(body, self.agent)
        headers = {"anthropic-version": options.anthropic_version}
        if api_key:
            headers["x-api-key"] = api_key
        return endpoint_url(base_url, "v1/messages"), headers, body

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


class AnthropicDecoder(EventDecoder):
    """Decode Messages stream events.

    Text comes from ``text_delta``; ``tool_use`` inputs are assembled from ``input_json_delta`` fragments per
    block index (an empty input means ``{}``); thinking blocks are kept (with their signature, and
    ``redacted_thinking`` blocks with their ``data``) so they can be sent back in a tool loop, and their
    ``thinking_delta`` texts stream as reasoning tokens (a thinking block after the first is preceded by a
    blank-line token), joined in the ``reasoning`` field.  ``ping`` and unknown events are ignored; an
    ``error`` event raises the typed error at once.  The stream is complete only after ``message_stop``.
    """

    provider = "anthropic"
    terminal = "message_stop"
    request_id_header = "request-id"

    def __init__(self, *, model: str, request_id: str | None) -> None:
        super().__init__(model=model, request_id=request_id)
        self._blocks: dict[int, _Block] = {}
        self._usage: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._thinking_blocks = 0

    def feed(self, event: ServerSentEvent) -> list[str]:
        """Consume one event; return its text tokens."""
        payload = self._event_object(event.data)
        if payload is None:
            return []
        kind = event.event if event.event != "message" else payload.get("type", "")
        if kind == "error" or payload.get("type") == "error":
            raise self._error_event(event.data)
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

    def _result(self) -> tuple[dict[str, Any], list[ToolCallRecord]]:
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
