"""OpenAI Chat Completions builders: the ``chat.completion.chunk`` stream and the JSON error response."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from miniagents.testing.fake_llm_server._script import (
    SSE,
    Gate,
    Raw,
    ScriptedResponse,
    Step,
    ToolCall,
    _as_tokens,
    _event_stream,
    _json_error,
)


def openai_stream(
    text: str | Sequence[str] = (),
    *,
    tool_calls: Sequence[ToolCall] = (),
    finish_reason: str | None = None,
    usage: Mapping[str, Any] | Literal["auto"] | None = "auto",
    model: str = "fake-gpt",
    completion_id: str = "chatcmpl-fake",
    request_id: str | None = "req_fake_openai",
    repeat_tool_call_ids: bool = False,
    interleave_tool_calls: bool = False,
    refusal: str | None = None,
    reasoning: str | Sequence[str] = (),
    reasoning_field: Literal["reasoning_content", "reasoning", "both"] = "reasoning_content",
    deltas: Sequence[tuple[Literal["reasoning", "content"], str]] | None = None,
    cached_tokens: int | None = None,
    error: Mapping[str, Any] | None = None,
    truncate: bool = False,
    abort: bool = False,
    done: bool = True,
    comments: bool = False,
    delay: float = 0.0,
    hang_after: int | None = None,
    gate: Gate | None = None,
    gate_after: int = 1,
    chunk_size: int | None = None,
    newline: str = "\n",
    headers: Mapping[str, str] | None = None,
) -> ScriptedResponse:
    """Script an OpenAI Chat Completions stream (``stream: true`` with ``include_usage``).

    Args:
        text: the content tokens (a ``str`` is one token); one chunk per token.
        tool_calls: the tool calls, streamed after the text with their arguments in fragments.
        finish_reason: default ``"tool_calls"`` when there are tool calls, else ``"stop"``.
        usage: the usage chunk before ``[DONE]``; ``"auto"`` counts tokens; ``None`` sends none.
        model: the model name in every chunk.
        completion_id: the ``id`` of every chunk.
        request_id: the ``x-request-id`` response header.
        repeat_tool_call_ids: repeat ``id``/``type``/``name`` in every fragment (llama-cpp-python does).
        interleave_tool_calls: send the fragments of parallel calls round-robin instead of one call after another.
        refusal: a refusal text streamed in ``delta.refusal``.
        reasoning: reasoning tokens streamed before the text, one chunk each, in ``delta.reasoning_content``
            (DeepSeek, llama.cpp, vLLM before 0.9) or ``delta.reasoning`` (newer vLLM, Ollama, OpenRouter),
            per *reasoning_field*; ``"both"`` sends the same text in both fields, as vLLM does for
            compatibility.  The ``"auto"`` usage then counts them in ``completion_tokens`` and reports them in
            ``completion_tokens_details.reasoning_tokens``.
        reasoning_field: see *reasoning*.
        deltas: instead of *text* and *reasoning*: the exact sequence of ``("reasoning" | "content", piece)``
            deltas, one chunk each (reasoning and text interleaved as a server may send them).
        cached_tokens: report ``prompt_tokens_details.cached_tokens`` in the ``"auto"`` usage.
        error: a mid-stream ``{"error": {...}}`` event sent after the tokens; the stream then ends without
            finish reason or ``[DONE]``.
        truncate: end the HTTP body cleanly but without the finish chunk, usage and ``[DONE]``.
        abort: close the connection instead of ending the body (implies the terminal events are missing).
        done: send ``data: [DONE]`` at the end.
        comments: add SSE comment lines (``: keep-alive``).
        delay: seconds to pause between events.
        hang_after: after this many events, send nothing until the client disconnects.
        gate: a :class:`Gate` to wait at after ``gate_after`` events.
        gate_after: see *gate*.
        chunk_size: split the socket writes into pieces of this many bytes.
        newline: the SSE line ending.
        headers: extra response headers.

    """
    tokens = _as_tokens(text)
    reasoning_tokens = _as_tokens(reasoning)
    plan: list[tuple[str, str]]
    if deltas is None:
        plan = [("reasoning", piece) for piece in reasoning_tokens] + [("content", t) for t in tokens]
    elif tokens or reasoning_tokens:
        raise ValueError("openai_stream: give deltas= or text/reasoning, not both")
    else:
        plan = list(deltas)
        tokens = [piece for kind, piece in plan if kind == "content"]
        reasoning_tokens = [piece for kind, piece in plan if kind == "reasoning"]
    reasoning_keys = ("reasoning_content", "reasoning") if reasoning_field == "both" else (reasoning_field,)
    created = 1_700_000_000

    def chunk(delta: Mapping[str, Any], finish: str | None = None) -> SSE:
        return SSE(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish}],
                "usage": None,
            }
        )

    events: list[Step] = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if comments:
        events.append(Raw(f": keep-alive{newline}{newline}".encode()))
    for kind, piece in plan:
        if kind == "content":
            events.append(chunk({"content": piece}))
        else:
            events.append(chunk(dict.fromkeys(reasoning_keys, piece)))
    if refusal is not None:
        events.append(chunk({"refusal": refusal}))
    ids = [call.id or f"call_fake_{i}" for i, call in enumerate(tool_calls)]
    per_call: list[list[SSE]] = []
    for index, call in enumerate(tool_calls):
        fragments: list[SSE] = []
        for n, piece in enumerate(call.pieces()):
            item: dict[str, Any] = {"index": index, "function": {"arguments": piece}}
            if n == 0 or repeat_tool_call_ids:
                item = {
                    "index": index,
                    "id": ids[index],
                    "type": "function",
                    "function": {"name": call.name, "arguments": piece},
                }
            fragments.append(chunk({"tool_calls": [item]}))
        per_call.append(fragments)
    if interleave_tool_calls:
        for group in itertools.zip_longest(*per_call):
            events.extend(e for e in group if e is not None)
    else:
        for fragments in per_call:
            events.extend(fragments)
    if error is not None:
        events.append(SSE({"error": dict(error)}))
    elif not truncate and not abort:
        events.append(chunk({}, finish_reason or ("tool_calls" if tool_calls else "stop")))
        if usage == "auto":
            completion_tokens = len(tokens) + len(reasoning_tokens) + sum(len(c.pieces()) for c in tool_calls)
            usage = {
                "prompt_tokens": 11,
                "completion_tokens": completion_tokens,
                "total_tokens": 11 + completion_tokens,
            }
            if cached_tokens is not None:
                usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens, "audio_tokens": 0}
            if reasoning_tokens:
                usage["completion_tokens_details"] = {
                    "reasoning_tokens": len(reasoning_tokens),
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                }
        if usage is not None:
            events.append(
                SSE(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": dict(usage),
                    }
                )
            )
        if done:
            events.append(SSE("[DONE]"))
    return _event_stream(
        events,
        "x-request-id",
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


_OPENAI_ERROR_DEFAULTS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def openai_error(
    status: int,
    message: str = "",
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    request_id: str | None = "req_fake_openai",
    retry_after: float | str | None = None,
    retry_after_ms: float | None = None,
    should_retry: bool | None = None,
    headers: Mapping[str, str] | None = None,
) -> ScriptedResponse:
    """Script an OpenAI error response: ``{"error": {"message", "type", "param", "code"}}`` with *status*.

    ``type``/``code`` default to what OpenAI sends for the status (e.g. 404 → ``model_not_found``).
    """
    default_type, default_code = _OPENAI_ERROR_DEFAULTS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    body = {
        "error": {
            "message": message or f"fake error {status}",
            "type": type or default_type,
            "param": param,
            "code": code if code is not None else default_code,
        }
    }
    return _json_error(
        status, body, "x-request-id", request_id, retry_after, retry_after_ms, should_retry, headers
    )
