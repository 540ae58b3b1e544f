"""The replayable buffer behind every promise.

A :class:`ReplayBuffer` is a single-producer, many-consumer memory channel that never forgets: the producer
appends pieces and finally closes it (optionally with an error); each consumer keeps its own cursor and replays
from the first piece, so a consumer that arrives late sees exactly what an early one saw.  The buffer is the
only copy of streamed data.

Concurrency notes:

* Appending and closing are synchronous and never block: producers are never slowed down by consumers.
* Reading a piece that is already buffered does not checkpoint (no scheduling round trip per piece); a consumer
  only suspends when it has caught up with the producer.  Waiting uses one lazily created ``anyio.Event`` that
  is shared by every waiting consumer and replaced after each wake-up.
* Cancelling a waiting consumer affects nobody else: the buffer has no per-consumer state.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Generic, NoReturn, TypeVar

import anyio
import attrs

from miniagents._exceptions import AgentCallCancelledError, StopLoop
from miniagents._ledger import restore_frames

if TYPE_CHECKING:
    from miniagents._ledger import ErrorLedger, Tracebacks

P = TypeVar("P")


@attrs.frozen
class BufferStatistics:
    """A snapshot of a buffer's state, from :meth:`ReplayBuffer.statistics`."""

    pieces: int
    done: bool
    failed: bool
    waiting_consumers: bool


class ReplayBuffer(Generic[P]):
    """A replayable, append-only channel of pieces (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_event",
        "_frames",
        "_ledger",
        "_tb",
        "done",
        "error",
        "pieces",
    )

    pieces: list[P]
    done: bool
    error: BaseException | None

    def __init__(self, ledger: ErrorLedger | None = None) -> None:
        self.pieces = []
        self.done = False
        self.error = None
        self._tb: TracebackType | None = None
        self._frames: Tracebacks | None = None  # taken off the error's chain by the ledger (see _ledger.py)
        self._event: anyio.Event | None = None
        self._ledger = ledger

    def append(self, piece: P) -> None:
        """Add one piece and wake waiting consumers.  Must not be called after :meth:`close`."""
        self.pieces.append(piece)
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    def close(self, error: BaseException | None = None, *, record: bool = True) -> bool:
        """Finish the buffer, optionally with *error*; return ``False`` if it was already closed.

        A failure (anything but a cancellation) is recorded in the owning context's error ledger, so it is
        raised when the ``MiniAgents`` block exits unless a consumer observes it afterwards.  ``record=False``
        is for failures passed on from another buffer, which recorded them already.
        """
        if self.done:
            return False
        self.done = True
        if error is not None:
            self.error = error
            self._tb = error.__traceback__
            ledger = self._ledger
            if ledger is not None and not isinstance(error, (AgentCallCancelledError, StopLoop)):
                # While nobody observed it, the ledger holds the error without its frames; this buffer keeps
                # them for the consumers it raises the error to.
                self._frames = ledger.record(error) if record else ledger.release(error)
        event = self._event
        if event is not None:
            self._event = None
            event.set()
        return True

    def raise_error(self) -> NoReturn:
        """Raise the error the buffer was closed with to a consumer, marking it observed."""
        error = self.error
        assert error is not None
        self.mark_observed(error)
        if self._frames:
            restore_frames(self._frames)
        raise error.with_traceback(self._tb)

    def pass_error_on(self) -> NoReturn:
        """Raise the error the buffer was closed with inside a pump, *without* marking it observed.

        A pump only forwards the error to another buffer; it is observed when a consumer of that buffer sees it.
        """
        error = self.error
        assert error is not None
        if self._frames:
            restore_frames(self._frames)
        raise error.with_traceback(self._tb)

    def unobserved(self) -> bool:
        """Whether the buffer failed with an error that the ledger still counts as not observed."""
        error = self.error
        return error is not None and self._ledger is not None and self._ledger.is_open(error)

    def mark_observed(self, error: BaseException) -> None:
        """Tell the error ledger that a consumer has had *error* raised."""
        if self._ledger is not None:
            self._ledger.observe(error)

    async def wait_beyond(self, count: int) -> None:
        """Wait until there are more than *count* pieces or the buffer is closed."""
        while len(self.pieces) <= count and not self.done:
            event = self._event
            if event is None:
                event = self._event = anyio.Event()
            await event.wait()
            if self.done and isinstance(self.error, AgentCallCancelledError):
                await _cancellation_first()

    async def wait_closed(self) -> None:
        """Wait until the buffer is closed."""
        while not self.done:
            event = self._event
            if event is None:
                event = self._event = anyio.Event()
            await event.wait()
            if isinstance(self.error, AgentCallCancelledError):
                await _cancellation_first()

    def statistics(self) -> BufferStatistics:
        """Return a snapshot of the buffer's state, for introspection and tests."""
        return BufferStatistics(
            pieces=len(self.pieces),
            done=self.done,
            failed=self.error is not None,
            waiting_consumers=self._event is not None,
        )


async def _cancellation_first() -> None:
    """Raise the cancellation of the waiting task's own scope, if there is one, before a call's cancellation.

    When one scope cancels both a call and the task waiting for its replies, the waiter must see its own
    cancellation, not the call's ``AgentCallCancelledError``.  On asyncio cancellation is delivered to each
    task in a later round of the event loop, so the call can finish (and wake the waiter) first.
    """
    await anyio.lowlevel.checkpoint_if_cancelled()


class BufferIterator(Generic[P]):
    """One consumer's cursor over a :class:`ReplayBuffer`, starting at the first piece.

    The message sequences' iterators subclass it: ``promises()`` runs this loop as it is; the iterator of
    resolved messages has it inlined (see ``_sequence._MessageIterator``).
    """

    __slots__ = ("_buffer", "_index")

    def __init__(self, buffer: ReplayBuffer[P], start: int = 0) -> None:
        self._buffer = buffer
        self._index = start

    def __aiter__(self) -> BufferIterator[P]:
        return self

    async def __anext__(self) -> P:
        buffer = self._buffer
        index = self._index
        while True:
            pieces = buffer.pieces
            if index < len(pieces):
                self._index = index + 1
                return pieces[index]
            if buffer.done:
                if buffer.error is not None:
                    buffer.raise_error()
                raise StopAsyncIteration
            await buffer.wait_beyond(index)
