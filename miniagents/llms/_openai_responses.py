"""OpenAI Responses API (``openai_agent(api="responses")``): request mapping and stream decoding.

The conversation is sent whole with every request (stateless: no ``previous_response_id``, ``store`` is left to
the server's default or ``extra_body``).  Output text streams as the message's tokens, ``function_call`` items
become the turn's tool calls (their results go back as ``function_call_output`` items), and reasoning summaries
are kept in the message's ``reasoning`` field (the reasoning items themselves in ``reasoning_items``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from miniagents.llms._exceptions import APIStatusError, error_class_for
from miniagents.llms._openai import OpenAIFamily, openai_content_part
from miniagents.llms._parts import checked_parts
from miniagents.llms._sse import ServerSentEvent
from miniagents.llms._tools import Tool

__all__ = ["ResponsesDecoder", "ResponsesSpec", "responses_input"]

_INSTRUCTION_ROLES = frozenset({"system", "developer"})
_NOT_USER_ROLES = frozenset({"assistant", "tool"}) | _INSTRUCTION_ROLES
#: ``incomplete_details.reason`` of an incomplete response → the ``finish_reason`` the other adapters report.
_INCOMPLETE_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}
#: The terminal events that end a response normally.
_TERMINAL = frozenset({"response.completed", "response.incomplete"})


def _get(message: Any, name: str) -> Any:
    return message.get(name) if hasattr(message, "get") else None


def _tool_choice(choice: Any) -> Any:
    if choice is None or hasattr(choice, "items"):
        return thaw(choice)
    if choice in ("auto", "none", "required"):
        return choice
    if choice == "any":
        return "required"
    return {"type": "function", "name": str(choice)}


def _reasoning_inputs(message: Any) -> list[dict[str, Any]]:
    """The reasoning items of an earlier turn that can be sent back: those that carry ``encrypted_content``.

    An item without it could only be referred to by its id, which fails when the response was not stored
    (``store: false``) or was made with another key; such items are left out (the model reasons afresh).
    """
    items: list[dict[str, Any]] = []
    for item in _get(message, "reasoning_items") or ():
        if isinstance(item, Mapping) and isinstance(item.get("encrypted_content"), str):
            entry: dict[str, Any] = {
                "type": "reasoning",
                "summary": thaw(item.get("summary") or []),
                "encrypted_content": item["encrypted_content"],
            }
            if isinstance(item.get("id"), str) and item["id"]:
                entry["id"] = item["id"]
            items.append(entry)
    return items


def _input_part(part: dict[str, Any]) -> dict[str, Any]:
    """A Chat Completions content part as the Responses API's input content part."""
    if part["type"] == "image_url":
        image: dict[str, Any] = {"type": "input_image", "image_url": part["image_url"]["url"]}
        image["detail"] = part["image_url"].get("detail", "auto")
        return image
    if part["type"] == "file":
        return {"type": "input_file", **part["file"]}
    return {"type": "input_text", "text": part["text"]}


def responses_input(history: Sequence[Any], agent: str = "openai_agent") -> list[dict[str, Any]]:
    """Map conversation messages to the ``input`` items of a Responses request.

    User messages (and any message without a known role) become ``user`` message items, ``system`` /
    ``developer`` messages keep their role; an LLM reply (``role="assistant"``) becomes its reasoning items (only
    those with ``encrypted_content``, see above), an ``assistant`` message item with its text (left out when the
    text is empty: a turn that only called tools) and one ``function_call`` item per tool call (``call_id``,
    ``name``, ``arguments``; no item ids, which would refer to stored items); a tool result (``role="tool"``)
    becomes a ``function_call_output`` item with the same ``call_id``.  A user message with ``parts`` sends a
    content list (``input_text``, ``input_image``, ``input_file``); streamed reasoning messages
    (``role="reasoning"``) are left out.

    Raises:
        LLMError: a part the API cannot take here (a document by URL), or parts on a turn that is not a user
            turn, naming the agent alias *agent* and the input message.  Nothing was sent.

    """
    items: list[dict[str, Any]] = []
    for position, message in enumerate(history):
        if is_reasoning_message(message):
            continue  # streamed reasoning (reply_reasoning=True): the reasoning items carry it
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
            # checked_parts() refused parts on any turn but a user turn: this is one.
            content_items: list[dict[str, Any]] = [{"type": "input_text", "text": content}] if content else []
            content_items.extend(
                _input_part(openai_content_part(part, agent, position, index))
                for index, part in enumerate(parts)
            )
            items.append({"type": "message", "role": "user", "content": content_items})
            continue
        if role == "assistant":
            items.extend(_reasoning_inputs(message))
            if content:
                items.append({"type": "message", "role": "assistant", "content": content})
            items.extend(
                {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments}
                for c in tool_calls_of(message)
            )
        elif role == "tool":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": str(_get(message, "tool_call_id") or ""),
                    "output": content,
                }
            )
        elif role in _INSTRUCTION_ROLES:
            items.append({"type": "message", "role": role, "content": content})
        else:
            items.append({"type": "message", "role": "user", "content": content})
    return items


class ResponsesSpec(OpenAIFamily):
    """The OpenAI Responses API provider (``POST {base_url}/responses``; provider name ``"openai"``)."""

    def request(
        self, options: LLMOptions, history: Sequence[Any], tools: Sequence[Tool], api_key: str, base_url: str
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        """Return the URL, headers and body of a streaming Responses request.

        ``system`` becomes ``instructions``, ``max_tokens`` ``max_output_tokens``; tools are function tools with
        ``strict: false`` (the generated schemas are not written for strict mode; the Responses API would
        otherwise apply its own default).  ``extra_body`` fields (``reasoning``, ``include``, ``store`` ...)
        override the generated ones.
        """
        body: dict[str, Any] = {
            "model": options.model,
            "input": responses_input(history, self.agent),
            "stream": True,
        }
        if options.system:
            body["instructions"] = options.system
        self._sampling(options, body)
        if options.max_tokens is not None:
            body["max_output_tokens"] = options.max_tokens
        functions = [
            {
                "type": "function",
                "name": t.name,
                "description": t.description,
                "parameters": thaw(t.parameters),
                "strict": False,
            }
            for t in tools
        ]
        return self._finish(
            options, body, functions, _tool_choice, api_key, endpoint_url(base_url, "responses")
        )

    def decoder(self, options: LLMOptions, request_id: str | None) -> ResponsesDecoder:
        """Return a decoder for one stream."""
        return ResponsesDecoder(model=options.model, request_id=request_id)


class _Item:
    """One output item of the response, assembled from its events."""

    __slots__ = (
        "arguments",
        "arguments_done",
        "call_id",
        "done",
        "id",
        "kind",
        "name",
        "summary",
        "summary_done",
    )

    def __init__(self, item: Mapping[str, Any]) -> None:
        self.kind = str(item.get("type") or "")
        self.id = str(item.get("id") or "")
        self.call_id = str(item.get("call_id") or "")
        self.name = str(item.get("name") or "")
        self.arguments: list[str] = []
        self.arguments_done: str | None = None
        self.summary: dict[int, list[str]] = {}
        self.summary_done: dict[int, str] = {}
        self.done: dict[str, Any] | None = None

    def finish(self, item: Mapping[str, Any]) -> None:
        """Take the completed item of ``response.output_item.done`` (its values win over the deltas)."""
        self.done = dict(item)
        self.kind = str(item.get("type") or self.kind)
        for attr in ("id", "call_id", "name"):
            value = item.get(attr)
            if isinstance(value, str) and value:
                setattr(self, attr, value)

    def final_arguments(self) -> str:
        done = self.done.get("arguments") if self.done is not None else None
        if isinstance(done, str) and done.strip():
            return done
        if self.arguments_done is not None and self.arguments_done.strip():
            return self.arguments_done
        return "".join(self.arguments).strip() or "{}"

    def summary_texts(self) -> list[str]:
        summary = self.done.get("summary") if self.done is not None else None
        if isinstance(summary, list) and summary:
            return [str(p.get("text", "")) for p in summary if isinstance(p, Mapping) and p.get("text")]
        indexes = sorted(set(self.summary) | set(self.summary_done))
        texts = [self.summary_done.get(i, "".join(self.summary.get(i, ()))) for i in indexes]
        return [t for t in texts if t]

    def reasoning_item(self) -> dict[str, Any]:
        if self.done is not None:
            return self.done
        summary = [{"type": "summary_text", "text": t} for t in self.summary_texts()]
        return {"type": "reasoning", "id": self.id, "summary": summary}


class ResponsesDecoder(EventDecoder):
    """Decode the semantic events of a streamed response (``event: <type>``, the same ``type`` in the data).

    ``response.output_text.delta`` deltas are the tokens; output items are tracked by ``output_index`` (then
    ``item_id``): ``function_call`` arguments are assembled from ``response.function_call_arguments.delta``
    (the ``.done`` event and ``response.output_item.done`` carry the final text, which wins), reasoning summaries
    from ``response.reasoning_summary_text.delta`` / ``.done``.  ``response.completed`` /
    ``response.incomplete`` end the stream (id, model, usage and status from their ``response``);
    ``response.failed`` and ``error`` events raise the typed :class:`~miniagents.llms.APIStatusError` at once.
    Unknown events are ignored.
    """

    provider = "openai"
    #: ``_finish`` sets ``_finish_reason`` whenever it sets ``_done``: the terminal event is all that can lack.
    terminal = "response.completed (or response.incomplete)"

    def __init__(self, *, model: str, request_id: str | None) -> None:
        super().__init__(model=model, request_id=request_id)
        self._items: dict[int, _Item] = {}
        self._refusal: list[str] = []
        self._finish_reason: str | None = None
        # The reasoning tokens are the summary deltas: a new summary part (or a part of another reasoning
        # item) starts with a blank-line token, so that the tokens joined are the message's reasoning field.
        self._reasoning_part: tuple[int, int] | None = None

    def feed(self, event: ServerSentEvent) -> list[str]:
        """Consume one event; return its text tokens."""
        payload = self._event_object(event.data)
        if payload is None:
            return []
        kind = payload.get("type")
        if not isinstance(kind, str) or not kind:
            kind = event.event
        if kind == "error":
            nested = payload.get("error")
            raise self._error(
                nested if isinstance(nested, dict) else payload, payload, "error event in the stream"
            )
        if kind == "response.failed":
            response = self._object(payload, "response")
            error = response.get("error")
            error = error if isinstance(error, dict) else {}
            raise self._error(error, error, "the response failed")
        if kind in ("response.created", "response.in_progress"):
            self._response(self._object(payload, "response"))
        elif kind == "response.output_text.delta":
            delta = self._text(payload, "delta")
            return [delta] if delta else []
        elif kind == "response.refusal.delta":
            self._refusal.append(self._text(payload, "delta"))
        elif kind == "response.output_item.added":
            item = self._object(payload, "item")
            self._items[self._index(payload)] = _Item(item)
        elif kind == "response.output_item.done":
            item = self._object(payload, "item")
            index = self._index(payload)
            known = self._items.get(index)
            if known is None:
                known = self._items[index] = _Item(item)
            known.finish(item)
        elif kind == "response.function_call_arguments.delta":
            target = self._target(payload)
            if target is not None:
                target.arguments.append(self._text(payload, "delta"))
        elif kind == "response.function_call_arguments.done":
            target = self._target(payload)
            if target is not None and isinstance(payload.get("arguments"), str):
                target.arguments_done = payload["arguments"]
        elif kind == "response.reasoning_summary_text.delta":
            target = self._target(payload)
            if target is not None:
                index = self._summary_index(payload)
                delta = self._text(payload, "delta")
                target.summary.setdefault(index, []).append(delta)
                part = (self._index(payload), index)
                if self._reasoning_part is not None and part != self._reasoning_part:
                    self._reasoning.append("\n\n")
                self._reasoning_part = part
                self._reasoning.append(delta)
        elif kind == "response.reasoning_summary_text.done":
            target = self._target(payload)
            if target is not None and isinstance(payload.get("text"), str):
                target.summary_done[self._summary_index(payload)] = payload["text"]
        elif kind in _TERMINAL:
            self._finish(self._object(payload, "response"), incomplete=kind == "response.incomplete")
        return []

    # -- pieces --------------------------------------------------------------------------------------------------
    def _response(self, response: Mapping[str, Any]) -> None:
        if isinstance(response.get("id"), str) and response["id"]:
            self._fields["response_id"] = response["id"]
        if isinstance(response.get("model"), str) and response["model"]:
            self._fields["model"] = response["model"]

    def _finish(self, response: Mapping[str, Any], *, incomplete: bool) -> None:
        self._response(response)
        if isinstance(response.get("usage"), dict):
            self._fields["usage"] = response["usage"]
        status = response.get("status")
        if incomplete or status == "incomplete":
            details = response.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            if isinstance(reason, str) and reason:
                self._finish_reason = _INCOMPLETE_REASONS.get(reason, reason)
            else:
                self._finish_reason = "incomplete"
        elif any(item.kind == "function_call" for item in self._items.values()):
            self._finish_reason = "tool_calls"
        else:
            self._finish_reason = "stop"
        self._done = True

    def _error(self, error: Mapping[str, Any], body: Any, default: str) -> APIStatusError:
        message = error.get("message")
        message = message if isinstance(message, str) and message else default
        code = error.get("code")
        code = None if code is None else str(code)
        error_type = error.get("type")
        error_type = error_type if isinstance(error_type, str) and error_type != "error" else None
        cls = error_class_for(None, error_type, code, message)
        return cls(
            message,
            status=None,
            error_type=error_type,
            code=code,
            request_id=self._request_id,
            provider="openai",
            body=dict(body),
        )

    def _object(self, payload: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = payload.get(key) or {}
        if not isinstance(value, dict):
            raise self._malformed(f"{payload.get('type')}: {key} is not an object: {value!r:.200}")
        return value

    def _text(self, payload: Mapping[str, Any], key: str) -> str:
        value = payload.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self._malformed(f"{payload.get('type')}: {key} is not a string: {value!r:.200}")
        return value

    def _index(self, payload: Mapping[str, Any]) -> int:
        index = payload.get("output_index", len(self._items))
        if not isinstance(index, int) or isinstance(index, bool):
            raise self._malformed(f"{payload.get('type')}: output_index is not an integer: {index!r:.200}")
        return index

    def _summary_index(self, payload: Mapping[str, Any]) -> int:
        index = payload.get("summary_index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            raise self._malformed(f"{payload.get('type')}: summary_index is not an integer: {index!r:.200}")
        return index

    def _target(self, payload: Mapping[str, Any]) -> _Item | None:
        """The item an event refers to: by ``output_index``, else by ``item_id`` (``None`` when unknown)."""
        index = payload.get("output_index")
        if isinstance(index, int) and index in self._items:
            return self._items[index]
        item_id = payload.get("item_id")
        for item in self._items.values():
            if item_id and item.id == item_id:
                return item
        return None

    def _result(self) -> tuple[dict[str, Any], list[ToolCallRecord]]:
        fields = dict(self._fields)
        fields["finish_reason"] = self._finish_reason
        if self._refusal:
            fields["refusal"] = "".join(self._refusal)
        calls: list[ToolCallRecord] = []
        summaries: list[str] = []
        reasoning_items: list[dict[str, Any]] = []
        for position, (_, item) in enumerate(sorted(self._items.items())):
            if item.kind == "function_call":
                call_id = item.call_id or item.id or f"call_{position}"
                calls.append(ToolCallRecord(id=call_id, name=item.name, arguments=item.final_arguments()))
            elif item.kind == "reasoning":
                summaries.extend(item.summary_texts())
                reasoning_items.append(item.reasoning_item())
        if summaries:
            fields["reasoning"] = "\n\n".join(summaries)
        if reasoning_items:
            fields["reasoning_items"] = reasoning_items
        return fields, calls
