"""Anthropic Messages builders: the ``message_start`` … ``message_stop`` stream and the JSON error response."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from miniagents.testing.fake_llm_server._script import (
    SSE,
    Gate,
    ScriptedResponse,
    Step,
    ToolCall,
    _as_tokens,
    _event_stream,
    _json_error,
)

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def anthropic_stream(
    text: str | Sequence[str] = (),
    *,
    tool_uses: Sequence[ToolCall] = (),
    thinking: Sequence[str] = (),
    signature: str = "sig_fake",
    redacted_thinking: Sequence[str] = (),
    blocks: Sequence[tuple[Literal["thinking", "redacted_thinking", "text"], Any]] | None = None,
    stop_reason: str | None = None,
    stop_sequence: str | None = None,
    model: str = "fake-claude",
    message_id: str = "msg_fake",
    request_id: str | None = "req_fake_anthropic",
    input_tokens: int = 11,
    output_tokens: int | None = None,
    cache_read_input_tokens: int = 0,
    cache_creation_input_tokens: int = 0,
    pings: bool = True,
    unknown_events: bool = False,
    empty_first_json_fragment: bool = True,
    error: Mapping[str, Any] | None = None,
    truncate: bool = False,
    abort: bool = False,
    delay: float = 0.0,
    hang_after: int | None = None,
    gate: Gate | None = None,
    gate_after: int = 1,
    chunk_size: int | None = None,
    newline: str = "\n",
    headers: Mapping[str, str] | None = None,
) -> ScriptedResponse:
    """Script an Anthropic Messages stream (``message_start`` … ``message_stop``).

    Args:
        text: the text tokens (a ``str`` is one token), one ``text_delta`` each, in content block 0.
        tool_uses: ``tool_use`` blocks after the text, their input streamed as ``input_json_delta`` fragments.
        thinking: ``thinking_delta`` pieces of a thinking block sent first (``content_block_start`` with empty
            ``thinking`` and ``signature``, the deltas, then one ``signature_delta``), as extended thinking
            streams it.
        signature: the signature of the thinking blocks.
        redacted_thinking: the ``data`` of ``redacted_thinking`` blocks sent after the thinking block (whole
            in ``content_block_start``, no deltas).
        blocks: instead of *text*, *thinking* and *redacted_thinking*: the content blocks in order, each
            ``("thinking", pieces)``, ``("redacted_thinking", data)`` or ``("text", tokens)`` (interleaved
            thinking); *tool_uses* still follow.
        stop_reason: default ``"tool_use"`` when there are tool uses, else ``"end_turn"``.
        stop_sequence: the ``stop_sequence`` of ``message_delta``.
        model: the model in ``message_start``.
        message_id: the message id in ``message_start``.
        request_id: the ``request-id`` response header.
        input_tokens: usage reported in ``message_start`` (the tokens not read from or written to the cache).
        cache_read_input_tokens: ``cache_read_input_tokens`` of that usage.
        cache_creation_input_tokens: ``cache_creation_input_tokens`` of that usage.
        output_tokens: the cumulative usage in ``message_delta`` (default: the number of deltas).
        pings: send ``ping`` events (after ``message_start`` and between blocks).
        unknown_events: add events of a type the client must ignore.
        empty_first_json_fragment: start every tool input with an empty ``partial_json`` (as the API does).
        error: a mid-stream ``event: error`` payload (e.g. ``{"type": "overloaded_error", "message": ...}``)
            sent after the text; the stream then ends without ``message_stop``.
        truncate: end the HTTP body cleanly but without ``message_delta`` / ``message_stop``.
        abort: close the connection instead of ending the body.
        delay: seconds to pause between events.
        hang_after: after this many events, send nothing until the client disconnects.
        gate: a :class:`Gate` to wait at after ``gate_after`` events.
        gate_after: see *gate*.
        chunk_size: split the socket writes into pieces of this many bytes.
        newline: the SSE line ending.
        headers: extra response headers.

    """
    tokens = _as_tokens(text)

    def ev(name: str, payload: Mapping[str, Any]) -> SSE:
        return SSE({"type": name, **payload}, event=name)

    events: list[Step] = [
        ev(
            "message_start",
            {
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": input_tokens,
                        "output_tokens": 1,
                        "cache_creation_input_tokens": cache_creation_input_tokens,
                        "cache_read_input_tokens": cache_read_input_tokens,
                    },
                }
            },
        ),
    ]

    def finish() -> ScriptedResponse:  # every way out: the events so far, delivered as asked
        return _event_stream(
            events,
            "request-id",
            request_id,
            headers,
            delay,
            hang_after,
            gate,
            gate_after,
            abort,
            chunk_size,
            newline,
        )

    if pings:
        events.append(ev("ping", {}))
    if unknown_events:
        events.append(ev("future_event_type", {"detail": {"x": 1}}))
    index = 0
    deltas = 0
    if blocks is not None and (tokens or thinking or redacted_thinking):
        raise ValueError("anthropic_stream: give blocks= or text/thinking/redacted_thinking, not both")
    plan: list[tuple[str, Any]] = list(blocks) if blocks is not None else []
    if blocks is None:
        plan = ([("thinking", thinking)] if thinking else []) + [
            ("redacted_thinking", d) for d in redacted_thinking
        ]
    for kind, payload in plan:
        if kind == "thinking":
            events.append(
                ev(
                    "content_block_start",
                    {"index": index, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
                )
            )
            for piece in _as_tokens(payload):
                events.append(
                    ev(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "thinking_delta", "thinking": piece}},
                    )
                )
                deltas += 1
            events.append(
                ev(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "signature_delta", "signature": signature}},
                )
            )
        elif kind == "redacted_thinking":
            events.append(
                ev(
                    "content_block_start",
                    {"index": index, "content_block": {"type": "redacted_thinking", "data": str(payload)}},
                )
            )
        elif kind == "text":
            events.append(
                ev("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            )
            for token in _as_tokens(payload):
                events.append(
                    ev(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "text_delta", "text": token}},
                    )
                )
                deltas += 1
        else:
            raise ValueError(f"anthropic_stream: unknown block kind {kind!r}")
        events.append(ev("content_block_stop", {"index": index}))
        index += 1
    if tokens or (not tool_uses and blocks is None):
        events.append(
            ev("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
        )
        for n, token in enumerate(tokens):
            events.append(
                ev("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": token}})
            )
            deltas += 1
            if pings and n == len(tokens) // 2 and len(tokens) > 1:
                events.append(ev("ping", {}))
            if unknown_events and n == 0:
                events.append(
                    ev(
                        "content_block_delta",
                        {"index": index, "delta": {"type": "future_delta_type", "value": 1}},
                    )
                )
        if error is not None:
            events.append(SSE({"type": "error", "error": dict(error)}, event="error"))
            return finish()
        events.append(ev("content_block_stop", {"index": index}))
        index += 1
    elif error is not None:
        events.append(SSE({"type": "error", "error": dict(error)}, event="error"))
        return finish()
    for n, call in enumerate(tool_uses):
        call_id = call.id or f"toolu_fake_{n}"
        events.append(
            ev(
                "content_block_start",
                {
                    "index": index,
                    "content_block": {"type": "tool_use", "id": call_id, "name": call.name, "input": {}},
                },
            )
        )
        pieces = call.pieces()
        if empty_first_json_fragment and pieces[0] != "":
            pieces = ["", *pieces]
        for piece in pieces:
            events.append(
                ev(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}},
                )
            )
            deltas += 1
        events.append(ev("content_block_stop", {"index": index}))
        index += 1
    if not truncate and not abort:
        events.append(
            ev(
                "message_delta",
                {
                    "delta": {
                        "stop_reason": stop_reason or ("tool_use" if tool_uses else "end_turn"),
                        "stop_sequence": stop_sequence,
                    },
                    "usage": {"output_tokens": output_tokens if output_tokens is not None else deltas},
                },
            )
        )
        events.append(ev("message_stop", {}))
    return finish()


def anthropic_error(
    status: int,
    message: str = "",
    *,
    type: str | None = None,
    request_id: str | None = "req_fake_anthropic",
    retry_after: float | str | None = None,
    retry_after_ms: float | None = None,
    should_retry: bool | None = None,
    headers: Mapping[str, str] | None = None,
) -> ScriptedResponse:
    """Script an Anthropic error response: ``{"type": "error", "error": {"type", "message"}, "request_id"}``.

    ``type`` defaults to what Anthropic sends for the status (e.g. 529 → ``overloaded_error``).
    """
    error_type = type or _ANTHROPIC_ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": error_type, "message": message or f"fake error {status}"},
    }
    if request_id is not None:
        body["request_id"] = request_id
    return _json_error(
        status, body, "request-id", request_id, retry_after, retry_after_ms, should_retry, headers
    )
