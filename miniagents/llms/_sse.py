r"""An incremental Server-Sent Events parser over byte chunks.

It follows the WHATWG rules the providers rely on: lines end in ``\\r\\n``, ``\\r`` or ``\\n`` (also when a
``\\r\\n`` pair is split across chunks); a blank line dispatches the event; lines starting with ``:`` are comments;
``field: value`` splits on the first ``:`` and strips exactly one leading space; several ``data`` lines join with
``\\n``; ``id`` persists across events; ``retry`` must be an integer; unknown fields are ignored; an event still
open when the stream ends is dropped.  Bytes are decoded with an incremental UTF-8 decoder, so a multi-byte
character split across chunks decodes exactly as if it had arrived whole (invalid bytes become U+FFFD).

Guarantee: the events produced do not depend on how the byte stream is split into chunks.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterable, AsyncIterator

import attrs

__all__ = ["MAX_LINE_LENGTH", "SSEDecoder", "SSELineTooLongError", "ServerSentEvent", "aiter_sse"]


@attrs.frozen
class ServerSentEvent:
    r"""One dispatched event: ``event`` defaults to ``"message"``; ``data`` joins the data lines with ``\\n``."""

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None


#: The longest line the decoder accepts by default (16 MiB of text): a server that never ends a line must not
#: grow the buffer without bound.  Large tool-call arguments and base64 payloads fit comfortably.
MAX_LINE_LENGTH = 16 * 1024 * 1024


class SSELineTooLongError(ValueError):
    """A line of the event stream grew past the decoder's ``max_line_length`` without ending."""


class SSEDecoder:
    """Feed byte chunks with :meth:`feed`; it returns the events completed by each chunk.

    Linear in the size of the stream however it is chunked: each character is scanned for line ends once (a
    line split over many chunks is collected in pieces and joined once, when it ends).  A line longer than
    *max_line_length* characters (default :data:`MAX_LINE_LENGTH`) raises :class:`SSELineTooLongError`.
    """

    def __init__(self, *, max_line_length: int | None = None) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []  # pieces of the line still open at the end of the last chunk
        self._pending_length = 0
        self._max_line_length = MAX_LINE_LENGTH if max_line_length is None else max_line_length
        self._skip_lf = False  # the previous chunk ended with "\r": a leading "\n" belongs to it
        self._started = False  # a leading BOM is dropped once
        self._event = ""
        self._data: list[str] = []
        self._has_data = False
        self._last_id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume *chunk*; return the events it completes (possibly none)."""
        return self._feed_text(self._utf8.decode(chunk, final=False))

    def close(self) -> list[ServerSentEvent]:
        """Flush the decoder at end of stream; an event left open (no blank line) is dropped per the spec."""
        events = self._feed_text(self._utf8.decode(b"", final=True))
        tail = "".join(self._pending)
        self._pending = []
        self._pending_length = 0
        if tail:
            self._line(tail)  # a last line without terminator still sets fields, but nothing dispatches it
        return events

    def _feed_text(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if not self._started:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        events: list[ServerSentEvent] = []
        start = 0
        n = len(text)
        limit = self._max_line_length
        # Only the new text is searched: the pending pieces hold no line end.
        cr = text.find("\r")
        lf = text.find("\n")
        while cr >= 0 or lf >= 0:
            if cr < 0 or (0 <= lf < cr):
                end, next_start = lf, lf + 1
            elif cr + 1 < n:
                end = cr
                next_start = cr + 2 if text[cr + 1] == "\n" else cr + 1
            else:  # "\r" at the very end: the "\n" of a "\r\n" may come with the next chunk
                end, next_start = cr, cr + 1
                self._skip_lf = True
            line = text[start:end]
            if self._pending:
                self._check_length(self._pending_length + len(line))
                line = "".join(self._pending) + line
                self._pending = []
                self._pending_length = 0
            elif end - start > limit:
                self._check_length(end - start)
            event = self._line(line)
            if event is not None:
                events.append(event)
            start = next_start
            # A terminator not found once is not found again further on: no re-scan of the rest.
            if 0 <= cr < start:
                cr = text.find("\r", start)
            if 0 <= lf < start:
                lf = text.find("\n", start)
        if start < n:
            self._pending.append(text[start:])
            self._pending_length += n - start
            self._check_length(self._pending_length)
        return events

    def _check_length(self, length: int) -> None:
        if length > self._max_line_length:
            raise SSELineTooLongError(
                f"an event-stream line is longer than {self._max_line_length} characters without a line end"
            )

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._has_data:
            # WHATWG: no data lines → nothing is dispatched, the event name is reset.
            self._event = ""
            return None
        event = ServerSentEvent(
            event=self._event or "message", data="\n".join(self._data), id=self._last_id, retry=self._retry
        )
        self._event = ""
        self._data = []
        self._has_data = False
        return event


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """Yield the events of an SSE byte stream as soon as each one is complete."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
