"""OpenAI Responses API builders: the typed-event stream of ``POST /responses``."""

from __future__ import annotations

import itertools
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
)


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

    def finish() -> ScriptedResponse:  # every way out: the events so far, delivered as asked
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
            return finish()
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
        return finish()
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
    return finish()
