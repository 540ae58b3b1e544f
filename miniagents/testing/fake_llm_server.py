"""A fake LLM provider server for tests: OpenAI Chat Completions and Responses, Anthropic Messages, real sockets.

:class:`FakeLLMServer` listens on ``127.0.0.1`` (an anyio TCP server speaking HTTP/1.1 through ``h11``, so it runs
under trio and asyncio alike, inside the test's own event loop).  Tests script the responses it replays, point an
LLM agent at it and inspect what it received::

    from miniagents.llms import openai_agent
    from miniagents.testing.fake_llm_server import FakeLLMServer, openai_stream

    async with FakeLLMServer.serve() as server, MiniAgents():
        server.enqueue(openai_stream(["Hel", "lo"]))
        reply = openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key="test")
        assert await reply.as_single_text() == "Hello"
        assert server.requests[0].json["messages"] == [{"role": "user", "content": "hi"}]

Scripted responses are :class:`ScriptedResponse` objects; the builders :func:`openai_stream`,
:func:`responses_stream` (the OpenAI Responses API, reasoning summaries included), :func:`anthropic_stream`,
:func:`openai_error` (also the Responses API's HTTP errors), :func:`anthropic_error` and :func:`raw_response`
produce the byte-exact event sequences of the real APIs: text, tool calls (single, parallel, interleaved,
fragmented arguments, repeated ids as some compatible servers send them), reasoning (``reasoning_content`` /
``reasoning`` deltas; Anthropic thinking blocks with their ``signature_delta``, ``redacted_thinking`` blocks,
interleaved thinking), usage (cached and reasoning token details), pings, unknown events, mid-stream errors,
truncation (clean end without the terminal events, or an aborted connection), error statuses with
``retry-after`` / ``retry-after-ms`` / ``x-should-retry`` headers, slow streams (:class:`Pause`) and streams
that stop and wait for the client to give up (:class:`Hang`).

Each request is answered by the first queued response whose ``path`` matches (see :meth:`FakeLLMServer.enqueue`),
else by :attr:`FakeLLMServer.handler`, else with a 500 error.  With ``validate=True`` (the default) the server
checks requests the way the real APIs do (authentication header, required fields, roles, the Anthropic
alternation and tool-result pairing, the Responses API's function-call / output pairing, the extended-thinking
budget and the thinking block a continued tool loop must send back) and answers a violation with the
provider's 400/401 error.  Every request is
recorded as a :class:`RecordedRequest`, including whether the client disconnected before the response was
complete (:meth:`RecordedRequest.wait_disconnected`).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import anyio.abc
import attrs
import h11

from miniagents._secrets import is_secret_name

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "SSE",
    "FakeLLMServer",
    "Gate",
    "Hang",
    "Pause",
    "Raw",
    "RecordedRequest",
    "ScriptedResponse",
    "ToolCall",
    "anthropic_error",
    "anthropic_stream",
    "openai_error",
    "openai_stream",
    "raw_response",
    "responses_stream",
]


# ---------------------------------------------------------------------------------------------------------------
# Script elements
@attrs.frozen
class SSE:
    """One server-sent event; ``data`` that is not a ``str`` is sent as compact JSON (non-ASCII kept as UTF-8)."""

    data: Any
    event: str | None = None
    id: str | None = None

    def encode(self, newline: str = "\n") -> bytes:
        """Return the wire bytes of the event, including the blank line that dispatches it."""
        data = self.data if isinstance(self.data, str) else json.dumps(self.data, ensure_ascii=False)
        lines = []
        if self.event is not None:
            lines.append(f"event: {self.event}")
        if self.id is not None:
            lines.append(f"id: {self.id}")
        lines.extend(f"data: {line}" for line in data.split("\n"))
        return (newline.join(lines) + newline + newline).encode("utf-8")


@attrs.frozen
class Raw:
    """Bytes written as they are (comments, malformed data, half a UTF-8 character ...)."""

    data: bytes


@attrs.frozen
class Pause:
    """Wait this many seconds before sending the rest (a slow stream)."""

    seconds: float


@attrs.frozen
class Hang:
    """Send nothing more: wait until the client disconnects (read timeouts, cancellation)."""


@attrs.frozen(eq=False)
class Gate:
    """Wait until the test calls :meth:`open` (deterministic pacing without timing)."""

    _event: anyio.Event = attrs.field(factory=anyio.Event, alias="event")

    def open(self) -> None:
        """Let the responses waiting at this gate continue."""
        self._event.set()

    async def wait(self) -> None:
        """Wait until the gate is open."""
        await self._event.wait()


Step = SSE | Raw | Pause | Hang | Gate | bytes


def _header_tuple(headers: Any) -> tuple[tuple[str, str], ...]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(k), str(v)) for k, v in items)


def _steps(steps: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(steps)


@attrs.frozen
class ScriptedResponse:
    r"""One scripted HTTP response.

    Attributes:
        status: the HTTP status.
        headers: response headers (``content-type`` included).
        body: what to send, in order: :class:`SSE` events, :class:`Raw` / ``bytes``, :class:`Pause`,
            :class:`Hang`, :class:`Gate`.
        end: ``"complete"`` ends the HTTP body properly; ``"abort"`` closes the connection mid-body.
        chunk_size: when set, every write is split into socket sends of at most this many bytes.
        newline: the SSE line ending (``"\\n"``, ``"\\r\\n"`` or ``"\\r"``).
        before_headers: wait (a pause, a hang, a gate) before sending the status line: a slow server.
        default_content_type: send ``content-type: application/octet-stream`` when *headers* have none
            (``False``: send no content-type at all, as some misconfigured proxies do).

    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_header_tuple)
    body: tuple[Step, ...] = attrs.field(default=(), converter=_steps)
    end: Literal["complete", "abort"] = "complete"
    chunk_size: int | None = None
    newline: str = "\n"
    before_headers: Pause | Hang | Gate | None = None
    default_content_type: bool = True

    def body_bytes(self) -> bytes:
        """Return all the bytes of the body (pauses, hangs and gates skipped), e.g. to split them in tests."""
        return b"".join(self._encoded(step) for step in self.body if isinstance(step, (SSE, Raw, bytes)))

    def _encoded(self, step: SSE | Raw | bytes) -> bytes:
        if isinstance(step, SSE):
            return step.encode(self.newline)
        if isinstance(step, Raw):
            return step.data
        return step

    def header(self, name: str) -> str | None:
        """Return the value of response header *name* (case-insensitive), or ``None``."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@attrs.frozen
class ToolCall:
    """A tool call for :func:`openai_stream` / :func:`anthropic_stream`.

    Attributes:
        name: the tool name.
        arguments: the arguments, as a mapping or an exact JSON text.
        id: the call id (generated when ``None``).
        fragments: the exact argument fragments to stream (must join to the JSON text); default: pieces of
            ``fragment_size`` characters.
        fragment_size: the size of the generated fragments.

    """

    name: str
    arguments: Any = attrs.field(factory=dict)
    id: str | None = None
    fragments: Sequence[str] | None = None
    fragment_size: int = 7

    def arguments_json(self) -> str:
        """Return the arguments as JSON text."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, ensure_ascii=False)

    def pieces(self) -> list[str]:
        """Return the argument fragments to stream."""
        if self.fragments is not None:
            if "".join(self.fragments) != self.arguments_json():
                raise ValueError("ToolCall.fragments must join to the arguments JSON")
            return list(self.fragments)
        text = self.arguments_json()
        size = max(1, self.fragment_size)
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _with_extras(
    events: list[Step], *, delay: float, hang_after: int | None, gate_after: int | None, gate: Gate | None
) -> list[Step]:
    out: list[Step] = []
    for index, event in enumerate(events):
        if hang_after is not None and index == hang_after:
            out.append(Hang())
            return out
        if gate is not None and gate_after is not None and index == gate_after:
            out.append(gate)
        if delay and index:
            out.append(Pause(delay))
        out.append(event)
    if hang_after is not None and hang_after >= len(events):
        out.append(Hang())
    return out


def _as_tokens(text: str | Sequence[str]) -> list[str]:
    return [text] if isinstance(text, str) else list(text)


# ---------------------------------------------------------------------------------------------------------------
# OpenAI builders
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
    response_headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    if request_id is not None:
        response_headers["x-request-id"] = request_id
    response_headers.update(headers or {})
    return ScriptedResponse(
        status=200,
        headers=response_headers,
        body=_with_extras(events, delay=delay, hang_after=hang_after, gate_after=gate_after, gate=gate),
        end="abort" if abort else "complete",
        chunk_size=chunk_size,
        newline=newline,
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


def _retry_headers(
    retry_after: float | str | None, retry_after_ms: float | None, should_retry: bool | None
) -> dict[str, str]:
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = str(retry_after)
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    if should_retry is not None:
        headers["x-should-retry"] = "true" if should_retry else "false"
    return headers


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
    response_headers = {"content-type": "application/json"}
    if request_id is not None:
        response_headers["x-request-id"] = request_id
    response_headers.update(_retry_headers(retry_after, retry_after_ms, should_retry))
    response_headers.update(headers or {})
    return ScriptedResponse(status=status, headers=response_headers, body=(json.dumps(body).encode(),))


# ---------------------------------------------------------------------------------------------------------------
# OpenAI Responses builders
def responses_stream(
    text: str | Sequence[str] = (),
    *,
    tool_calls: Sequence[ToolCall] = (),
    reasoning: Sequence[str | Sequence[str]] = (),
    encrypted_reasoning: str | None = None,
    refusal: str | None = None,
    incomplete: str | None = None,
    failed: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    usage: Mapping[str, Any] | Literal["auto"] | None = "auto",
    model: str = "fake-gpt",
    response_id: str = "resp_fake",
    request_id: str | None = "req_fake_openai",
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
    """Script an OpenAI Responses API stream (``POST /responses`` with ``stream: true``).

    Every event is ``event: <type>`` with data carrying the same ``type`` and an increasing ``sequence_number``:
    ``response.created``, ``response.in_progress``, then one output item after another — a ``reasoning`` item
    (``response.reasoning_summary_part.added`` / ``reasoning_summary_text.delta`` / ``.done`` /
    ``reasoning_summary_part.done`` per summary part), a ``message`` item (``response.content_part.added``,
    ``response.output_text.delta`` per token, ``output_text.done``, ``content_part.done``), ``function_call``
    items (``response.function_call_arguments.delta`` per fragment, ``.done``), each framed by
    ``response.output_item.added`` / ``.done`` with its ``output_index`` and item id — and the terminal
    ``response.completed`` (or ``response.incomplete`` / ``response.failed``) with the whole response: its
    ``output`` items, ``status`` and ``usage``.  There is no ``[DONE]``.

    Args:
        text: the output text tokens (a ``str`` is one token), one ``response.output_text.delta`` each.
        tool_calls: ``function_call`` items after the message, their arguments in fragments (ids ``fc_fake_<n>``,
            ``call_id`` from :attr:`ToolCall.id` or ``call_fake_<n>``).
        reasoning: the parts of a reasoning summary sent first (a ``str`` is a part sent as one delta, a
            sequence of strings a part sent as those deltas).
        encrypted_reasoning: the reasoning item's ``encrypted_content`` (as with
            ``include: ["reasoning.encrypted_content"]``).
        refusal: a refusal streamed as ``response.refusal.delta`` in a ``refusal`` content part.
        incomplete: end with ``response.incomplete`` and this ``incomplete_details.reason``
            (``"max_output_tokens"``, ``"content_filter"``); the last item's status is ``incomplete``.
        failed: end with ``response.failed`` whose ``response.error`` is this (``{"code", "message"}``).
        error: send an ``error`` event with these fields (``code``, ``message``, ``param``) after the text;
            the stream then ends without a terminal event.
        usage: the terminal response's ``usage``; ``"auto"`` counts the deltas; ``None`` sends ``null``.
        model: the model of the response object.
        response_id: the response id.
        request_id: the ``x-request-id`` response header.
        truncate: end the HTTP body cleanly but without the terminal event.
        abort: close the connection instead of ending the body (no terminal event).
        delay: seconds to pause between events.
        hang_after: after this many events, send nothing until the client disconnects.
        gate: a :class:`Gate` to wait at after ``gate_after`` events.
        gate_after: see *gate*.
        chunk_size: split the socket writes into pieces of this many bytes.
        newline: the SSE line ending.
        headers: extra response headers.

    """
    tokens = _as_tokens(text)
    sequence = itertools.count()
    events: list[Step] = []

    def ev(kind: str, **payload: Any) -> None:
        events.append(SSE({"type": kind, "sequence_number": next(sequence), **payload}, event=kind))

    def response_object(status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "response",
            "created_at": 1_700_000_000,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "metadata": {},
            **extra,
        }

    ev("response.created", response=response_object("in_progress", []))
    ev("response.in_progress", response=response_object("in_progress", []))
    output: list[dict[str, Any]] = []
    parts = [[part] if isinstance(part, str) else list(part) for part in reasoning]
    has_message = bool(tokens) or refusal is not None or not tool_calls
    last_index = (1 if parts else 0) + (1 if has_message else 0) + len(tool_calls) - 1

    def status_of(index: int) -> str:
        return "incomplete" if incomplete is not None and index == last_index else "completed"

    if parts:
        index = len(output)
        item_id = f"rs_fake_{index}"
        ev(
            "response.output_item.added",
            output_index=index,
            item={"id": item_id, "type": "reasoning", "summary": []},
        )
        summary = []
        for n, deltas in enumerate(parts):
            common = {"item_id": item_id, "output_index": index, "summary_index": n}
            ev("response.reasoning_summary_part.added", **common, part={"type": "summary_text", "text": ""})
            for delta in deltas:
                ev("response.reasoning_summary_text.delta", **common, delta=delta)
            ev("response.reasoning_summary_text.done", **common, text="".join(deltas))
            ev(
                "response.reasoning_summary_part.done",
                **common,
                part={"type": "summary_text", "text": "".join(deltas)},
            )
            summary.append({"type": "summary_text", "text": "".join(deltas)})
        item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": summary}
        if encrypted_reasoning is not None:
            item["encrypted_content"] = encrypted_reasoning
        ev("response.output_item.done", output_index=index, item=item)
        output.append(item)
    if has_message:
        index = len(output)
        item_id = f"msg_fake_{index}"
        message: dict[str, Any] = {
            "id": item_id,
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        ev("response.output_item.added", output_index=index, item=message)
        common = {"item_id": item_id, "output_index": index, "content_index": 0}
        ev(
            "response.content_part.added",
            **common,
            part={"type": "output_text", "annotations": [], "text": ""},
        )
        for token in tokens:
            ev("response.output_text.delta", **common, delta=token, logprobs=[])
        if error is not None:
            ev("error", **{"code": None, "message": "fake error", "param": None, **dict(error)})
            return _responses_response(
                events, request_id, headers, delay, hang_after, gate, gate_after, abort, chunk_size, newline
            )
        content: list[dict[str, Any]] = []
        full = "".join(tokens)
        ev("response.output_text.done", **common, text=full, logprobs=[])
        text_part = {"type": "output_text", "annotations": [], "text": full}
        ev("response.content_part.done", **common, part=text_part)
        content.append(text_part)
        if refusal is not None:
            common = {**common, "content_index": 1}
            ev("response.content_part.added", **common, part={"type": "refusal", "refusal": ""})
            ev("response.refusal.delta", **common, delta=refusal)
            ev("response.refusal.done", **common, refusal=refusal)
            ev("response.content_part.done", **common, part={"type": "refusal", "refusal": refusal})
            content.append({"type": "refusal", "refusal": refusal})
        message = {**message, "status": status_of(index), "content": content}
        ev("response.output_item.done", output_index=index, item=message)
        output.append(message)
    elif error is not None:
        ev("error", **{"code": None, "message": "fake error", "param": None, **dict(error)})
        return _responses_response(
            events, request_id, headers, delay, hang_after, gate, gate_after, abort, chunk_size, newline
        )
    pieces = 0
    for n, call in enumerate(tool_calls):
        index = len(output)
        item_id = f"fc_fake_{n}"
        call_item: dict[str, Any] = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call.id or f"call_fake_{n}",
            "name": call.name,
        }
        ev("response.output_item.added", output_index=index, item=call_item)
        for piece in call.pieces():
            ev("response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=piece)
            pieces += 1
        arguments = "".join(call.pieces())
        ev("response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=arguments)
        call_item = {**call_item, "status": status_of(index), "arguments": arguments}
        ev("response.output_item.done", output_index=index, item=call_item)
        output.append(call_item)
    if not truncate and not abort:
        if usage == "auto":
            reasoning_tokens = sum(len(p) for p in parts)
            output_tokens = len(tokens) + reasoning_tokens + pieces + (1 if refusal is not None else 0)
            usage = {
                "input_tokens": 11,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
                "total_tokens": 11 + output_tokens,
            }
        final_usage = dict(usage) if usage is not None else None
        if failed is not None:
            ev(
                "response.failed",
                response=response_object("failed", output, error=dict(failed), usage=final_usage),
            )
        elif incomplete is not None:
            ev(
                "response.incomplete",
                response=response_object(
                    "incomplete", output, incomplete_details={"reason": incomplete}, usage=final_usage
                ),
            )
        else:
            ev("response.completed", response=response_object("completed", output, usage=final_usage))
    return _responses_response(
        events, request_id, headers, delay, hang_after, gate, gate_after, abort, chunk_size, newline
    )


def _responses_response(
    events: list[Step],
    request_id: str | None,
    headers: Mapping[str, str] | None,
    delay: float,
    hang_after: int | None,
    gate: Gate | None,
    gate_after: int,
    abort: bool,
    chunk_size: int | None,
    newline: str,
) -> ScriptedResponse:
    response_headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    if request_id is not None:
        response_headers["x-request-id"] = request_id
    response_headers.update(headers or {})
    return ScriptedResponse(
        status=200,
        headers=response_headers,
        body=_with_extras(events, delay=delay, hang_after=hang_after, gate_after=gate_after, gate=gate),
        end="abort" if abort else "complete",
        chunk_size=chunk_size,
        newline=newline,
    )


# ---------------------------------------------------------------------------------------------------------------
# Anthropic builders
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
            return _anthropic_response(
                events, request_id, headers, delay, hang_after, gate, gate_after, abort, chunk_size, newline
            )
        events.append(ev("content_block_stop", {"index": index}))
        index += 1
    elif error is not None:
        events.append(SSE({"type": "error", "error": dict(error)}, event="error"))
        return _anthropic_response(
            events, request_id, headers, delay, hang_after, gate, gate_after, abort, chunk_size, newline
        )
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
    return _anthropic_response(
        events, request_id, headers, delay, hang_after, gate, gate_after, abort, chunk_size, newline
    )


def _anthropic_response(
    events: list[Step],
    request_id: str | None,
    headers: Mapping[str, str] | None,
    delay: float,
    hang_after: int | None,
    gate: Gate | None,
    gate_after: int,
    abort: bool,
    chunk_size: int | None,
    newline: str,
) -> ScriptedResponse:
    response_headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    if request_id is not None:
        response_headers["request-id"] = request_id
    response_headers.update(headers or {})
    return ScriptedResponse(
        status=200,
        headers=response_headers,
        body=_with_extras(events, delay=delay, hang_after=hang_after, gate_after=gate_after, gate=gate),
        end="abort" if abort else "complete",
        chunk_size=chunk_size,
        newline=newline,
    )


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
    response_headers = {"content-type": "application/json"}
    if request_id is not None:
        response_headers["request-id"] = request_id
    response_headers.update(_retry_headers(retry_after, retry_after_ms, should_retry))
    response_headers.update(headers or {})
    return ScriptedResponse(status=status, headers=response_headers, body=(json.dumps(body).encode(),))


def raw_response(
    status: int,
    body: bytes | str = b"",
    *,
    content_type: str | None = "text/plain; charset=utf-8",
    headers: Mapping[str, str] | None = None,
    end: Literal["complete", "abort"] = "complete",
) -> ScriptedResponse:
    """Script any response, e.g. a compatible server's plain-text 500 or ``{"detail": ...}`` error.

    ``content_type=None`` sends no content-type header at all.
    """
    data = body.encode("utf-8") if isinstance(body, str) else body
    response_headers = {
        **({"content-type": content_type} if content_type is not None else {}),
        **(headers or {}),
    }
    return ScriptedResponse(
        status=status,
        headers=response_headers,
        body=(data,) if data else (),
        end=end,
        default_content_type=content_type is not None,
    )


# ---------------------------------------------------------------------------------------------------------------
# Requests
@attrs.define(eq=False)
class RecordedRequest:
    """A request the server received (secret headers are masked in ``repr``, not in :attr:`headers`).

    Attributes:
        index: its position in :attr:`FakeLLMServer.requests`.
        method: the HTTP method.
        path: the request target (path and query).
        headers: the request headers, names lower-cased.
        body: the raw request body.
        response: the response the server chose (``None`` until chosen).
        validation_error: why the request was rejected by validation, if it was.
        response_complete: the whole response was written.

    """

    index: int
    method: str
    path: str
    headers: dict[str, str] = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)
    response: ScriptedResponse | None = attrs.field(default=None, repr=False)
    validation_error: str | None = None
    response_complete: bool = False
    _disconnected: anyio.Event = attrs.field(factory=anyio.Event, repr=False, alias="disconnected_event")
    _finished: anyio.Event = attrs.field(factory=anyio.Event, repr=False, alias="finished_event")

    @property
    def json(self) -> Any:
        """The body parsed as JSON (``None`` when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def disconnected(self) -> bool:
        """Whether the client closed the connection before the response was completely sent."""
        return self._disconnected.is_set()

    @property
    def finished(self) -> bool:
        """Whether the server is done with this request (response sent, aborted, or client gone)."""
        return self._finished.is_set()

    async def wait_disconnected(self) -> None:
        """Wait until the client has closed the connection before the response was complete."""
        await self._disconnected.wait()

    async def wait_finished(self) -> None:
        """Wait until the server is done with this request."""
        await self._finished.wait()

    def __repr__(self) -> str:
        shown = {k: ("***" if is_secret_name(k) else v) for k, v in self.headers.items()}
        return (
            f"RecordedRequest(index={self.index}, method={self.method!r}, path={self.path!r}, "
            f"headers={shown!r}, disconnected={self.disconnected}, complete={self.response_complete})"
        )


Handler = Callable[[RecordedRequest], ScriptedResponse]


@attrs.frozen
class _Queued:
    response: ScriptedResponse
    path: str | None


class FakeLLMServer:
    """A scripted fake of the OpenAI and Anthropic streaming APIs on ``127.0.0.1``.

    Use :meth:`serve` to run it for the duration of an ``async with`` block.  It routes by path:
    ``…/chat/completions`` is OpenAI, ``…/responses`` the OpenAI Responses API, ``…/messages`` is Anthropic
    (so both ``base_url`` styles work); anything else gets a 404.

    Attributes:
        requests: every request received, in arrival order.
        handler: called for a request when no queued response matches it.
        expected_api_key: when set, requests with another key get the provider's 401.
        validate: check requests the way the real APIs do.
        errors: unexpected exceptions raised while serving (re-raised when :meth:`serve` exits).

    """

    def __init__(self, *, validate: bool = True, expected_api_key: str | None = None) -> None:
        self.requests: list[RecordedRequest] = []
        self.handler: Handler | None = None
        self.expected_api_key = expected_api_key
        self.validate = validate
        self.errors: list[BaseException] = []
        self._queue: list[_Queued] = []
        self._port: int | None = None
        self._request_arrived = anyio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def serve(
        cls,
        *,
        validate: bool = True,
        expected_api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> AsyncIterator[FakeLLMServer]:
        """Listen on *host*:*port* (0: a free port) and serve until the block exits.

        The server is shut down (listener closed, connections cancelled) however the block exits.  An
        exception raised in the block is re-raised as itself, not wrapped in an exception group, so
        ``pytest.raises(ValueError)`` around the block catches a ``ValueError`` raised in it; a cancellation
        of the block propagates unchanged.

        Raises:
            Exception: the first unexpected exception of the server itself (a bug of the fake, not a scripted
                failure; the others are in :attr:`errors`), when the block exited normally.
            BaseExceptionGroup: the block's exception and the server's, when both failed.

        """
        server = cls(validate=validate, expected_api_key=expected_api_key)
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        server._port = listener.extra(anyio.abc.SocketAttribute.local_port)
        body_error: BaseException | None = None
        try:
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, server._serve_connection)
                try:
                    yield server
                except (anyio.get_cancelled_exc_class(), GeneratorExit):
                    raise  # the task group needs a cancellation to end it at the right scope
                except BaseException as exc:
                    # Kept out of the task group (which would wrap it in an ExceptionGroup); raised below.
                    body_error = exc
                finally:
                    tg.cancel_scope.cancel()
        except BaseException as exit_error:
            if body_error is None:
                raise
            raise BaseExceptionGroup("errors on exit", [body_error, exit_error]) from None
        if body_error is not None:
            if server.errors:
                raise BaseExceptionGroup("errors on exit", [body_error, *server.errors]) from None
            raise body_error
        if server.errors:
            raise server.errors[0]

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("the server is not running; use `async with FakeLLMServer.serve() as server`")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` for :func:`~miniagents.llms.openai_agent` (``…/v1``)."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` for :func:`~miniagents.llms.anthropic_agent`."""
        return self.base_url

    # -- scripting ---------------------------------------------------------------------------------------------
    def enqueue(self, *responses: ScriptedResponse, path: str | None = None) -> FakeLLMServer:
        """Queue responses, answered in order; with *path*, only to requests whose path ends with it."""
        self._queue.extend(_Queued(response, path) for response in responses)
        return self

    @property
    def pending(self) -> int:
        """How many queued responses were not used yet."""
        return len(self._queue)

    async def wait_for_requests(self, count: int) -> None:
        """Wait until at least *count* requests arrived."""
        while len(self.requests) < count:
            await self._request_arrived.wait()

    def _choose(self, request: RecordedRequest) -> ScriptedResponse:
        path = request.path.split("?", 1)[0]
        for n, queued in enumerate(self._queue):
            if queued.path is None or path.endswith(queued.path):
                del self._queue[n]
                return queued.response
        if self.handler is not None:
            return self.handler(request)
        return _error_for(
            _provider_of(path),
            500,
            "FakeLLMServer: no scripted response left for this request",
            "fake_server_error",
        )

    # -- HTTP ----------------------------------------------------------------------------------------------------
    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    request = await self._read_request(conn, stream)
                    if request is None:
                        return
                    keep_open = await self._respond(conn, stream, request)
                    if not keep_open or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError):
            return
        except h11.RemoteProtocolError:
            return
        except Exception as exc:  # a bug of the fake server: surface it when serve() exits
            self.errors.append(exc)

    async def _read_request(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream
    ) -> RecordedRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    data = b""
                conn.receive_data(data)
                if not data and head is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                request = RecordedRequest(
                    index=len(self.requests),
                    method=head.method.decode("ascii"),
                    path=head.target.decode("ascii", errors="replace"),
                    headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers},
                    body=bytes(body),
                )
                self.requests.append(request)
                self._request_arrived.set()
                self._request_arrived = anyio.Event()
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None
            # h11.PAUSED cannot happen here: a new cycle starts only after the response.

    async def _respond(
        self, conn: h11.Connection, stream: anyio.abc.SocketStream, request: RecordedRequest
    ) -> bool:
        path = request.path.split("?", 1)[0]
        provider = _provider_of(path)
        problem: tuple[int, str, str] | None = None
        if provider is None or request.method != "POST":
            problem = (404, f"FakeLLMServer: unknown route {request.method} {path}", "not_found_error")
        elif self.validate or self.expected_api_key is not None:
            problem = _validate(provider, request, self.expected_api_key, check_body=self.validate)
        if problem is not None:
            request.validation_error = problem[1]
            response = _error_for(provider, *problem)
        else:
            response = self._choose(request)
        request.response = response
        try:
            return await self._send(conn, stream, request, response)
        finally:
            request._finished.set()

    async def _send(
        self,
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        request: RecordedRequest,
        response: ScriptedResponse,
    ) -> bool:
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if response.default_content_type and all(k.lower() != "content-type" for k, _ in response.headers):
            headers.append((b"content-type", b"application/octet-stream"))
        static = all(isinstance(step, (bytes, Raw, SSE)) for step in response.body)
        if static and response.end == "complete":
            payload = response.body_bytes()
            headers.append((b"content-length", str(len(payload)).encode()))
        headers.append((b"date", b"Thu, 01 Jan 2026 00:00:00 GMT"))
        headers.append((b"server", b"miniagents-fake-llm"))
        completed = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_disconnect, conn, stream, request, tg.cancel_scope)
            try:
                await self._run_wait(response.before_headers)
                await self._write(
                    stream,
                    conn.send(h11.Response(status_code=response.status, headers=headers)),
                    response.chunk_size,
                )
                for step in response.body:
                    if isinstance(step, (Pause, Hang, Gate)):
                        await self._run_wait(step)
                    else:
                        data = response._encoded(step)
                        if data:
                            await self._write(stream, conn.send(h11.Data(data=data)), response.chunk_size)
                if response.end == "complete":
                    await self._write(stream, conn.send(h11.EndOfMessage()), None)
                    completed = True
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                request._disconnected.set()
            tg.cancel_scope.cancel()
        request.response_complete = completed
        return completed and not request.disconnected

    @staticmethod
    async def _run_wait(step: Pause | Hang | Gate | None) -> None:
        if isinstance(step, Pause):
            await anyio.sleep(step.seconds)
        elif isinstance(step, Hang):
            await anyio.sleep_forever()
        elif isinstance(step, Gate):
            await step.wait()

    @staticmethod
    async def _write(stream: anyio.abc.SocketStream, data: bytes | None, chunk_size: int | None) -> None:
        if not data:
            return
        if chunk_size is None:
            await stream.send(data)
            return
        for start in range(0, len(data), chunk_size):
            await stream.send(data[start : start + chunk_size])

    @staticmethod
    async def _watch_disconnect(
        conn: h11.Connection,
        stream: anyio.abc.SocketStream,
        request: RecordedRequest,
        scope: anyio.CancelScope,
    ) -> None:
        # Reads while the response is being written: EOF means the client went away.  Bytes of a pipelined next
        # request are handed to h11, which buffers them for the next cycle.
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                request._disconnected.set()
                scope.cancel()
                return
            conn.receive_data(data)


def _provider_of(path: str) -> Literal["openai", "openai_responses", "anthropic"] | None:
    if path.endswith("/chat/completions"):
        return "openai"
    if path.endswith("/responses"):
        return "openai_responses"
    if path.endswith("/messages"):
        return "anthropic"
    return None


def _error_for(provider: str | None, status: int, message: str, error_type: str) -> ScriptedResponse:
    if provider == "anthropic":
        return anthropic_error(status, message, type=error_type)
    return openai_error(status, message, type=error_type)


# ---------------------------------------------------------------------------------------------------------------
# Validation (what the real APIs reject)
_OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _validate(
    provider: str, request: RecordedRequest, expected_key: str | None, *, check_body: bool
) -> tuple[int, str, str] | None:
    if provider in ("openai", "openai_responses"):
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            return 401, "You didn't provide an API key.", "invalid_request_error"
        if expected_key is not None and auth[len("Bearer ") :] != expected_key:
            return 401, "Incorrect API key provided.", "invalid_request_error"
    else:
        key = request.headers.get("x-api-key", "")
        if not key:
            return 401, "x-api-key header is required", "authentication_error"
        if expected_key is not None and key != expected_key:
            return 401, "invalid x-api-key", "authentication_error"
        if check_body and not request.headers.get("anthropic-version"):
            return 400, "anthropic-version: header is required", "invalid_request_error"
    if not check_body:
        return None
    if not request.headers.get("content-type", "").startswith("application/json"):
        return 400, "Content-Type must be application/json", "invalid_request_error"
    body = request.json
    if not isinstance(body, dict):
        return 400, "the request body is not a JSON object", "invalid_request_error"
    if provider == "openai_responses":
        problem = _validate_responses(body)
    else:
        problem = _validate_openai(body) if provider == "openai" else _validate_anthropic(body)
    if problem is not None:
        return 400, problem, "invalid_request_error"
    return None


def _validate_openai(body: Mapping[str, Any]) -> str | None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty array"
    pending_ids: set[str] = set()
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _OPENAI_ROLES:
            return f"messages[{n}].role: invalid role"
        role = message["role"]
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending_ids:
                return (
                    f"messages[{n}]: messages with role 'tool' must be a response to a preceding message "
                    f"with 'tool_calls' (unknown tool_call_id {call_id!r})"
                )
            pending_ids.discard(call_id)
            if not isinstance(message.get("content"), str):
                return f"messages[{n}].content: must be a string"
            continue
        if pending_ids:
            return (
                f"messages[{n}]: an assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id' (missing {sorted(pending_ids)})"
            )
        if role == "assistant" and message.get("tool_calls"):
            for call in message["tool_calls"]:
                if not isinstance(call, dict) or call.get("type") != "function" or not call.get("id"):
                    return f"messages[{n}].tool_calls: invalid tool call {call!r}"
                function = call.get("function")
                if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
                    return f"messages[{n}].tool_calls: function.arguments must be a JSON string"
                pending_ids.add(call["id"])
        elif not isinstance(message.get("content"), (str, list)):
            return f"messages[{n}].content: must be a string or an array"
        if isinstance(message.get("content"), list):
            problem = _validate_openai_parts(n, role, message["content"])
            if problem is not None:
                return problem
    if pending_ids:
        return f"tool_calls without responses: {sorted(pending_ids)}"
    if body.get("stream") is not True:
        return "FakeLLMServer only serves streaming requests (stream: true)"
    for tool in body.get("tools") or []:
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("function"), dict)
        ):
            return f"tools: invalid tool {tool!r}"
        if not isinstance(tool["function"].get("name"), str):
            return "tools[].function.name: required"
    if "response_format" in body:
        return _validate_response_format(body["response_format"])
    return None


_SCHEMA_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _validate_response_format(response_format: Any) -> str | None:
    """OpenAI ``response_format``: ``text`` / ``json_object`` / ``json_schema`` (with the strict-mode rules)."""
    if not isinstance(response_format, dict) or response_format.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        return "response_format.type: must be one of 'text', 'json_object', 'json_schema'"
    if response_format["type"] != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return "response_format.json_schema.name: Missing required parameter"
    if not _SCHEMA_NAME_RE.match(spec["name"]):
        return "response_format.json_schema.name: must match ^[a-zA-Z0-9_-]{1,64}$"
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        return "response_format.json_schema.schema: must be an object"
    if spec.get("strict") is True:
        problem = _strict_schema_problem(schema, "()")
        if problem is not None:
            return f"Invalid schema for response_format {spec['name']!r}: {problem}"
    return None


def _strict_schema_problem(schema: Any, context: str) -> str | None:
    """The first violation of OpenAI's strict-mode rules in *schema*, like the API words it."""
    if isinstance(schema, list):
        for item in schema:
            problem = _strict_schema_problem(item, context)
            if problem is not None:
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = [k for k in properties if k not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing {missing[0]!r}."
            )
        for key, sub in properties.items():
            problem = _strict_schema_problem(sub, f"{context}.properties.{key}")
            if problem is not None:
                return problem
    for key in ("items", "anyOf", "$defs", "definitions"):
        sub = schema.get(key)
        if isinstance(sub, dict) and key in ("$defs", "definitions"):
            sub = list(sub.values())
        problem = _strict_schema_problem(sub, f"{context}.{key}")
        if problem is not None:
            return problem
    return None


_OPENAI_PART_TYPES = ("text", "image_url", "input_audio", "refusal", "audio", "file")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _validate_openai_parts(n: int, role: str, parts: list[Any]) -> str | None:
    """Check the content parts of one Chat Completions message (text, image_url, file) like the API."""
    for i, part in enumerate(parts):
        where = f"messages[{n}].content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _OPENAI_PART_TYPES:
            return f"Invalid value: {kind!r}. Supported values are: {', '.join(map(repr, _OPENAI_PART_TYPES))}. ({where}.type)"
        if kind != "text" and role != "user":
            return f"{where}.type: {kind!r} content parts are only allowed in user messages"
        if kind == "text" and not isinstance(part.get("text"), str):
            return f"{where}.text: must be a string"
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                return f"{where}.image_url.url: required"
            url = image["url"]
            if not url.startswith(("http://", "https://", "data:image/")):
                return f"{where}.image_url.url: Invalid image URL"
            if url.startswith("data:") and (
                ";base64," not in url or url[len("data:") : url.index(";")] not in _IMAGE_TYPES
            ):
                return f"{where}.image_url.url: Invalid base64 image_url (unsupported image type)"
            if "detail" in image and image["detail"] not in ("auto", "low", "high"):
                return f"{where}.image_url.detail: Invalid value {image['detail']!r}"
        if kind == "file":
            file = part.get("file")
            if not isinstance(file, dict) or not (file.get("file_data") or file.get("file_id")):
                return f"{where}.file: one of file_data or file_id is required"
            data = file.get("file_data")
            if data is not None and not (
                isinstance(data, str) and data.startswith("data:application/pdf;base64,")
            ):
                return f"{where}.file.file_data: Invalid file data (only base64 PDF data URLs are supported)"
    return None


def _validate_anthropic_source(where: str, kind: str, source: Any) -> str | None:
    """Check the ``source`` of an Anthropic image or document block like the API."""
    if not isinstance(source, dict):
        return f"{where}.source: Field required"
    source_type = source.get("type")
    if source_type == "url":
        return (
            None
            if isinstance(source.get("url"), str) and source["url"]
            else f"{where}.source.url: Field required"
        )
    if source_type == "base64":
        allowed = _IMAGE_TYPES if kind == "image" else ("application/pdf",)
        if source.get("media_type") not in allowed:
            return f"{where}.source.media_type: Input should be {' or '.join(map(repr, allowed))}"
        return (
            None
            if isinstance(source.get("data"), str) and source["data"]
            else f"{where}.source.data: Field required"
        )
    if kind == "document" and source_type == "text":
        if source.get("media_type") != "text/plain":
            return f"{where}.source.media_type: Input should be 'text/plain'"
        return None if isinstance(source.get("data"), str) else f"{where}.source.data: Field required"
    return f"{where}.source.type: invalid source type {source_type!r}"


def _cache_control_problem(where: str, block: Mapping[str, Any]) -> str | None:
    marker = block.get("cache_control")
    if marker is None:
        return None
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
        return f"{where}.cache_control.type: Input should be 'ephemeral'"
    if "ttl" in marker and marker["ttl"] not in ("5m", "1h"):
        return f"{where}.cache_control.ttl: Input should be '5m' or '1h'"
    return None


def _validate_anthropic_caching(body: Mapping[str, Any]) -> str | None:
    """Check the ``cache_control`` markers: valid objects, at most 4, longer TTLs first (tools, system, messages)."""
    places: list[tuple[str, Mapping[str, Any]]] = []
    places.extend((f"tools.{n}", t) for n, t in enumerate(body.get("tools") or []) if isinstance(t, dict))
    if isinstance(body.get("system"), list):
        places.extend((f"system.{n}", b) for n, b in enumerate(body["system"]) if isinstance(b, dict))
    for m, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            places.extend(
                (f"messages.{m}.content.{n}", b) for n, b in enumerate(content) if isinstance(b, dict)
            )
    count = 0
    seen_short = False
    for where, block in places:
        problem = _cache_control_problem(where, block)
        if problem is not None:
            return problem
        if block.get("cache_control") is not None:
            count += 1
            if block["cache_control"].get("ttl", "5m") == "5m":
                seen_short = True
            elif seen_short:
                return "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
    if count > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {count}."
    return None


def _validate_anthropic(body: Mapping[str, Any]) -> str | None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        return "max_tokens: Field required"
    if "system" in body and not isinstance(body["system"], (str, list)):
        return "system: Input should be a valid string or list"
    if isinstance(body.get("system"), list):
        for n, block in enumerate(body["system"]):
            if (
                not isinstance(block, dict)
                or block.get("type") != "text"
                or not isinstance(block.get("text"), str)
            ):
                return f"system.{n}: Input should be a text block"
            if not block["text"].strip():
                return f"system.{n}: text content blocks must contain non-whitespace text"
    caching = _validate_anthropic_caching(body)
    if caching is not None:
        return caching
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_role = None
    pending_ids: set[str] = set()
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{n}: Input should be an object"
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f"messages.{n}.role: Input should be 'user' or 'assistant'"
        if n == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if role == previous_role:
            return 'messages: roles must alternate between "user" and "assistant"'
        previous_role = role
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            return f"messages.{n}.content: must be a non-empty string or list of blocks"
        result_ids: set[str] = set()
        for block in blocks:
            if not isinstance(block, dict):
                return f"messages.{n}.content: invalid block"
            kind = block.get("type")
            if kind == "text":
                if not isinstance(block.get("text"), str) or not block["text"]:
                    return f"messages.{n}: text content blocks must be non-empty"
                if not block["text"].strip():
                    return f"messages.{n}: text content blocks must contain non-whitespace text"
            elif kind == "tool_use":
                if role != "assistant":
                    return f"messages.{n}: tool_use blocks are only allowed in assistant messages"
                if not block.get("id") or not block.get("name") or not isinstance(block.get("input"), dict):
                    return f"messages.{n}: invalid tool_use block"
                pending_ids.add(block["id"])
            elif kind == "tool_result":
                if role != "user":
                    return f"messages.{n}: tool_result blocks are only allowed in user messages"
                result_ids.add(str(block.get("tool_use_id")))
            elif kind in ("image", "document"):
                if role != "user":
                    return f"messages.{n}: {kind} blocks are only allowed in user messages"
                problem = _validate_anthropic_source(f"messages.{n}.content", kind, block.get("source"))
            elif kind in ("thinking", "redacted_thinking"):
                problem = _thinking_block_problem(n, role, block)
                if problem is not None:
                    return problem
        if role == "user" and pending_ids:
            if result_ids != pending_ids:
                return (
                    f"messages.{n}: tool_use ids were found without tool_result blocks immediately after: "
                    f"{sorted(pending_ids - result_ids)}"
                )
            pending_ids = set()
        elif role == "user" and result_ids:
            return f"messages.{n}: unexpected tool_use_id found in tool_result blocks: {sorted(result_ids)}"
    if body.get("stream") is not True:
        return "FakeLLMServer only serves streaming requests (stream: true)"
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or "input_schema" not in tool:
            return f"tools: invalid tool {tool!r}"
    config = body.get("output_config")
    if config is not None:
        if not isinstance(config, dict):
            return "output_config: Input should be a valid dictionary"
        output_format = config.get("format")
        if output_format is not None and (
            not isinstance(output_format, dict)
            or output_format.get("type") != "json_schema"
            or not isinstance(output_format.get("schema"), dict)
        ):
            return "output_config.format: expected {'type': 'json_schema', 'schema': {...}}"
    return _validate_anthropic_thinking(body, messages)


def _thinking_block_problem(n: int, role: str, block: Mapping[str, Any]) -> str | None:
    kind = block["type"]
    if role != "assistant":
        return f"messages.{n}: {kind} blocks are only allowed in assistant messages"
    if kind == "thinking":
        if not isinstance(block.get("thinking"), str):
            return f"messages.{n}.content: thinking.thinking: Field required"
        if not isinstance(block.get("signature"), str) or not block["signature"]:
            return f"messages.{n}.content: thinking.signature: Field required"
    elif not isinstance(block.get("data"), str) or not block["data"]:
        return f"messages.{n}.content: redacted_thinking.data: Field required"
    return None


def _validate_anthropic_thinking(body: Mapping[str, Any], messages: list[Any]) -> str | None:
    """Check what extended thinking requires.

    A budget of 1024+ below ``max_tokens``, and a continued tool loop's assistant turn starting with its
    thinking block (sent back verbatim).
    """
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        return "thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled'"
    if thinking["type"] == "disabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= body["max_tokens"]:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    last = messages[-1]
    last_blocks = last.get("content") if isinstance(last.get("content"), list) else []
    continues_tools = last.get("role") == "user" and any(b.get("type") == "tool_result" for b in last_blocks)
    if continues_tools and len(messages) >= 2:
        assistant = messages[-2].get("content")
        first = assistant[0].get("type") if isinstance(assistant, list) and assistant else "text"
        if first not in ("thinking", "redacted_thinking"):
            return (
                f"messages.{len(messages) - 2}.content.0.type: expected `thinking` or `redacted_thinking`, "
                f"found `{first}`: with thinking enabled, the assistant turn whose tool calls the last tool "
                "results answer must start with its thinking block, sent back unchanged"
            )
    return None


_RESPONSES_ROLES = frozenset({"user", "assistant", "system", "developer"})
#: Chat Completions parameters the Responses API rejects, with the error text it answers.
_RESPONSES_UNSUPPORTED = {
    "messages": "Unsupported parameter: 'messages'. The Responses API takes 'input' instead.",
    "max_tokens": "Unsupported parameter: 'max_tokens'. In the Responses API it is 'max_output_tokens'.",
    "max_completion_tokens": (
        "Unsupported parameter: 'max_completion_tokens'. In the Responses API it is 'max_output_tokens'."
    ),
    "stop": "Unsupported parameter: 'stop'.",
}


def _validate_responses(body: Mapping[str, Any]) -> str | None:
    """What the Responses API rejects (as far as the fake can tell without stored responses)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "Missing required parameter: 'model'."
    for name, problem in _RESPONSES_UNSUPPORTED.items():
        if name in body:
            return problem
    if body.get("stream") is not True:
        return "FakeLLMServer only serves streaming requests (stream: true)"
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        return "Invalid type for 'input': expected a string or an array of input items."
    calls: set[str] = set()
    answered: set[str] = set()
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            return f"Invalid type for 'input[{n}]': expected an object."
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            if item.get("role") not in _RESPONSES_ROLES:
                return (
                    f"Invalid value: {item.get('role')!r}. Supported values are: {sorted(_RESPONSES_ROLES)}."
                )
            if not isinstance(item.get("content"), (str, list)):
                return f"Invalid type for 'input[{n}].content': expected a string or an array."
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str) or (key != "arguments" and not item[key]):
                    return f"Missing required parameter: 'input[{n}].{key}'."
            calls.add(item["call_id"])
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if call_id not in calls:
                return f"No tool call found for function call output with call_id {call_id}."
            if not isinstance(item.get("output"), (str, list)):
                return f"Invalid type for 'input[{n}].output': expected a string or an array."
            answered.add(call_id)
        elif kind == "reasoning":
            if not isinstance(item.get("summary"), list):
                return f"Missing required parameter: 'input[{n}].summary'."
            if body.get("store") is False and not item.get("encrypted_content"):
                return (
                    f"Item with id {item.get('id')!r} not found. Items are not persisted when `store` is set "
                    "to false. Try again with `store` set to true, or remove this item from your input."
                )
        elif not isinstance(kind, str):
            return f"Missing required parameter: 'input[{n}].type'."
    missing = sorted(calls - answered)
    if missing:
        return f"No tool output found for function call {missing[0]}."
    for n, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            return f"Missing required parameter: 'tools[{n}].type'."
        if tool["type"] == "function" and (not isinstance(tool.get("name"), str) or not tool["name"]):
            return f"Missing required parameter: 'tools[{n}].name'."
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function" and not choice.get("name"):
        return "Missing required parameter: 'tool_choice.name'."
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 16):
        return f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got {limit}."
    return None
