"""Server-Sent Events: the wire format, and the events a reply sequence becomes.

One reply sequence becomes, in order:

* ``token`` events, ``{"index": i, "token": "..."}``, as message *i* streams (a message that was not streamed
  gives its whole content as one token, none if it is empty);
* a ``message`` event, ``{"index": i, "hash_key": "...", "message": message.to_dict()}``, when message *i* is
  complete;
* finally either ``done`` (``{"messages": n}``) or ``error`` (``{"type": "ValueError", "message": "..."}``; the
  error's own message only with ``on_error=error_details``), so a client can always tell a complete answer from
  a broken one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import attrs

from miniagents._sequence import MessageSequencePromise

_log = logging.getLogger("miniagents.asgi")

_LINE_END = re.compile(r"\r\n|\r|\n")


def _json(data: Any, *, ascii_only: bool = False) -> str:
    return json.dumps(data, ensure_ascii=ascii_only, separators=(",", ":"))


#: Makes the JSON payload of the ``error`` event from the error that ended the replies.
ErrorPayload = Callable[[BaseException], Mapping[str, Any]]


def _single_line(field: str) -> Callable[[Any, Any, str | None], None]:
    def check(instance: Any, attribute: Any, value: str | None) -> None:
        if value is not None and ("\n" in value or "\r" in value):
            raise ValueError(f"ServerSentEvent.{field} must be one line, got {value!r}")

    return check


@attrs.frozen
class ServerSentEvent:
    """One event of a ``text/event-stream`` response.

    ``data`` that is not a ``str`` is sent as compact JSON (UTF-8, non-ASCII kept); a ``str`` may span lines
    (each becomes a ``data:`` line).  ``event`` and ``id`` must be single lines.
    """

    data: Any
    event: str | None = attrs.field(default=None, validator=_single_line("event"))
    id: str | None = attrs.field(default=None, validator=_single_line("id"))

    def encode(self) -> bytes:
        """Return the event's wire bytes, including the blank line that dispatches it.

        Data is split into ``data:`` lines at exactly the line ends SSE knows (CR, LF, CRLF), so a client
        joining them with LF gets the text back (JSON never contains one: it escapes them).  A lone surrogate,
        which UTF-8 cannot carry, is sent as a JSON escape in JSON data and as U+FFFD in text data.
        """
        data = self.data
        text = data if isinstance(data, str) else _json(data)
        parts = []
        if self.event is not None:
            parts.append(f"event: {self.event}\n")
        if self.id is not None:
            parts.append(f"id: {self.id}\n")
        parts.extend(f"data: {line}\n" for line in _LINE_END.split(text))
        parts.append("\n")
        wire = "".join(parts)
        try:
            return wire.encode("utf-8")
        except UnicodeEncodeError:
            if isinstance(data, str):
                return wire.encode("utf-8", "replace")
            return attrs.evolve(self, data=_json(data, ascii_only=True)).encode()


def error_payload(error: BaseException) -> dict[str, Any]:
    """The default payload of the final ``error`` event: the error's type name and a fixed message.

    The error's own text stays on the server (it is logged, with its traceback, by the ``miniagents.asgi``
    logger): it may hold internals a client should not see, such as a provider's error body.  Pass
    ``on_error=error_details`` to send it.
    """
    return {"type": type(error).__name__, "message": "the agents failed; the error is in the server's log"}


def error_details(error: BaseException) -> dict[str, Any]:
    """An ``error`` event payload with the error's type name and its message (``str(error)``)."""
    return {"type": type(error).__name__, "message": str(error)}


async def reply_events(
    replies: MessageSequencePromise, *, tokens: bool = True, on_error: ErrorPayload = error_payload
) -> AsyncGenerator[ServerSentEvent, None]:
    """Yield the events of *replies* (see the module docstring), ending with ``done`` or ``error``.

    An error that ends the replies is turned into the ``error`` event (it counts as observed, so the
    ``MiniAgents`` block does not raise it again); the messages before it were sent already.  Cancellation is
    not an error: it propagates.  ``tokens=False`` sends only whole messages.

    This only reads: to bound the call's life by the response, iterate it inside ``async with replies:`` (as
    :class:`EventStreamResponse` does).
    """
    index = -1
    try:
        async for promise in replies.promises():
            index += 1
            if tokens:
                async for token in promise:
                    yield ServerSentEvent({"index": index, "token": token}, event="token")
            message = await promise
            yield ServerSentEvent(
                {"index": index, "hash_key": message.hash_key, "message": message.to_dict()}, event="message"
            )
    except Exception as error:
        _log.warning("replies ended with an error, sent to the client as an error event", exc_info=error)
        yield ServerSentEvent(dict(on_error(error)), event="error")
        return
    yield ServerSentEvent({"messages": index + 1}, event="done")
