"""The script language of the fake server, and the response framing the provider builders share.

:class:`SSE` events, :class:`Raw` bytes, :class:`Pause`, :class:`Hang`, :class:`Gate`, :class:`ScriptedResponse`,
:class:`ToolCall` and :func:`raw_response`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import anyio
import attrs


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


def _event_stream(
    events: list[Step],
    request_id_header: str,
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
    # The response of every streaming builder: the SSE headers (the request id under the provider's header
    # name, then the extra *headers*), the events with the pauses / hang / gate woven in, the end and framing.
    response_headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    if request_id is not None:
        response_headers[request_id_header] = request_id
    response_headers.update(headers or {})
    return ScriptedResponse(
        status=200,
        headers=response_headers,
        body=_with_extras(events, delay=delay, hang_after=hang_after, gate_after=gate_after, gate=gate),
        end="abort" if abort else "complete",
        chunk_size=chunk_size,
        newline=newline,
    )


def _json_error(
    status: int,
    body: Mapping[str, Any],
    request_id_header: str,
    request_id: str | None,
    retry_after: float | str | None,
    retry_after_ms: float | None,
    should_retry: bool | None,
    headers: Mapping[str, str] | None,
) -> ScriptedResponse:
    # The response of every JSON error builder: the request id under the provider's header name, the retry
    # headers, then the extra *headers*.
    response_headers = {"content-type": "application/json"}
    if request_id is not None:
        response_headers[request_id_header] = request_id
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
