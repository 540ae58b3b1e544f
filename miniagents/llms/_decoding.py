"""What every provider's stream decoder shares: :class:`EventDecoder`.

A decoder subclasses it and keeps only its provider's event handling (``feed``) and the assembly of the final
message fields (``_result``).  The base holds the state all of them have: the message fields (starting with the
requested ``model``), the request id, whether the terminal event arrived, and the reasoning tokens.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from miniagents.llms._common import ToolCallRecord
from miniagents.llms._exceptions import APIStatusError, MalformedResponseError, TruncatedStreamError
from miniagents.llms._http import build_status_error
from miniagents.llms._sse import ServerSentEvent

__all__ = ["EventDecoder"]

_NOT_JSON: Any = object()


class EventDecoder:
    """The shared skeleton of a stream decoder (a :class:`~miniagents.llms._common.ReasoningDecoder`).

    Subclasses set :attr:`provider` (named by every error the decoder raises) and :attr:`terminal` (the event
    whose absence :meth:`result` reports), set ``_done`` when the terminal event arrives, append reasoning
    tokens to ``_reasoning`` and implement :meth:`feed` and ``_result`` (and ``_missing``, when a complete
    stream needs more than its terminal event).
    """

    #: The provider named in the errors (``"openai"``, ``"anthropic"``).
    provider: ClassVar[str]
    #: What a stream cut short ended without, as the :class:`TruncatedStreamError` says.
    terminal: ClassVar[str]
    #: The response header that carries the request id, for errors built from an error event's body.
    request_id_header: ClassVar[str] = "x-request-id"

    def __init__(self, *, model: str, request_id: str | None) -> None:
        self._fields: dict[str, Any] = {"model": model}
        self._request_id = request_id
        self._done = False
        self._reasoning: list[str] = []
        self._reasoning_taken = 0

    @property
    def finished(self) -> bool:
        """Whether the terminal event arrived (later events are ignored)."""
        return self._done

    def feed(self, event: ServerSentEvent) -> list[str]:
        """Consume one event; return its text tokens.  Raises the provider's error events."""
        raise NotImplementedError

    def take_reasoning(self) -> list[str]:
        """Return the reasoning tokens decoded since the last call (see ``ReasoningDecoder``)."""
        fresh = self._reasoning[self._reasoning_taken :]
        self._reasoning_taken = len(self._reasoning)
        return fresh

    def result(self) -> tuple[dict[str, Any], list[ToolCallRecord]]:
        """Return the message fields and the tool calls; raise :class:`TruncatedStreamError` when cut short.

        The error names the provider, the request id and what the stream ended without.
        """
        missing = self._missing()
        if missing is not None:
            raise TruncatedStreamError(
                f"the stream ended without {missing}", provider=self.provider, request_id=self._request_id
            )
        return self._result()

    def _missing(self) -> str | None:
        """What the stream still lacks to be complete (``None`` when complete): here, the terminal event."""
        return None if self._done else self.terminal

    def _result(self) -> tuple[dict[str, Any], list[ToolCallRecord]]:
        """The message fields and the tool calls of a complete stream."""
        raise NotImplementedError

    def _json(self, data: str) -> Any:
        """*data* parsed as JSON; a :class:`MalformedResponseError` (no ``__context__``) when it is not JSON."""
        try:
            value: Any = json.loads(data)
        except ValueError:
            value = _NOT_JSON
        if value is _NOT_JSON:  # raised outside the except block: no __context__
            raise self._malformed(f"not JSON: {data[:200]!r}")
        return value

    def _event_object(self, data: str) -> dict[str, Any] | None:
        """The JSON object in an event's *data* (``{}`` for empty data), ``None`` when the event is to be ignored.

        Ignored: every event after the terminal one (not even parsed), and JSON that is not an object.
        """
        if self._done:
            return None
        value = self._json(data) if data else {}
        return value if isinstance(value, dict) else None

    def _malformed(self, detail: str) -> MalformedResponseError:
        return MalformedResponseError(
            f"malformed stream event ({detail})", provider=self.provider, request_id=self._request_id
        )

    def _error_event(self, data: str) -> APIStatusError:
        """The typed error of an error event whose data is an error body (as an HTTP error response has)."""
        return build_status_error(
            None, {self.request_id_header: self._request_id or ""}, data.encode(), provider=self.provider
        )
