"""The record of a request the fake server received."""

from __future__ import annotations

import json
from typing import Any

import anyio
import attrs

from miniagents._secrets import is_secret_name
from miniagents.testing.fake_llm_server._script import (
    ScriptedResponse,
)


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
