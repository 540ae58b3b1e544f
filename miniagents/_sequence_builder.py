"""The flattening that feeds message sequences: :class:`SequenceBuilder` and its pumps.

Anything an agent replies or a caller sends is a ``MessageType``: a ``str``, a mapping, a
:class:`~miniagents.Message`, a :class:`~miniagents.MessagePromise`, a :class:`MessageSequencePromise`, or any
(async) iterable of those, nested arbitrarily.  :class:`SequenceBuilder` flattens such values into one replay
buffer of messages, in order:

* The synchronous part of a value (strings, mappings, messages, message promises, sequences that are already
  complete, plain iterables of those) is appended at once, in the caller's task, with no task switch.
* The first part that is not ready yet (an async iterable, a sequence still streaming) and everything after it
  is handed to one *ordered pump* task, so ordered items keep their order whatever the timing.
* Out-of-order items skip the queue: their ready part is appended at once, the rest gets a pump of its own.

Pumps are children of the builder's owner (an agent call or the ``MiniAgents`` context).  A pump error is
reported to the owner; the builder itself never raises into a task group.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel

from miniagents._buffer import ReplayBuffer
from miniagents._exceptions import AgentCallCancelledError, SequenceClosedError, SequenceCycleError
from miniagents._messages import Message, TextMessage, text_message
from miniagents._promises import MessagePromise
from miniagents._sequence import Item, MessageSequencePromise, MessageType, install_builder_factory

if TYPE_CHECKING:
    from miniagents._scope import CallLike, ContextLike, TaskOwner

_DONE: Any = object()


class _Continuation:
    """A sequence that was partly copied synchronously: the rest starts at ``offset``."""

    __slots__ = ("offset", "sequence")

    def __init__(self, sequence: MessageSequencePromise, offset: int) -> None:
        self.sequence = sequence
        self.offset = offset


class SequenceBuilder:
    """Flattens ``MessageType`` values into a :class:`ReplayBuffer` (see the module docstring).

    With ``fail_owner_on_pump_error`` set (an agent call's replies), a failing pump fails the owner instead,
    ``owner._fail(error, passed_on=...)``: an async source raised (``passed_on=False``) or a forwarded sequence
    failed (``passed_on=True``: another buffer recorded the failure already); by default the builder fails
    itself.  (A flag, not a callback: a bound method per call would be one more object per call for the
    garbage collector to walk while thousands of calls are in flight.)  A pump cancelled before it finished fails the
    builder with :class:`AgentCallCancelledError` unless ``fail_when_cancelled`` is false (an agent call's
    replies: the call concludes them itself).  Either way, items
    sent after the one that failed are never delivered: an error surfaces after exactly the messages before it.
    """

    __slots__ = (
        "_activation",
        "_context",
        "_deferred",
        "_finishing",
        "_flush_scheduled",
        "_forwarded_error",
        "_oo_count",
        "_oo_units",
        "_ordered",
        "_ordered_running",
        "_owner",
        "_persist",
        "_pump_scopes",
        "_pumps",
        "_staged",
        "buffer",
        "fail_owner_on_pump_error",
        "fail_when_cancelled",
    )

    def __init__(self, context: ContextLike | None, owner: TaskOwner | None) -> None:
        self.buffer: ReplayBuffer[Item] = ReplayBuffer(None if context is None else context._ledger)
        self._owner = owner
        self._context = context
        self._persist: Callable[[Message], None] | None = (
            context._persist if context is not None and context._persists else None
        )
        self._activation = 0 if context is None else context._activation
        # Containers are created on first use: most builders only ever append ready items, and every object
        # a call allocates is work for the garbage collector when thousands of calls are in flight.
        self._ordered: deque[list[Iterator[Any]]] | None = None
        self._ordered_running = False
        self._oo_units: dict[int, list[Iterator[Any]]] | None = None  # by number, in send order
        self._oo_count = 0
        self._staged: list[tuple[int, int, Item]] | None = None
        self._flush_scheduled = False
        # _ordered_running or _flush_scheduled: send() takes its fast path only when neither is set.
        self._deferred = False
        self._pumps = 0
        self._pump_scopes: set[anyio.CancelScope] | None = None
        self._finishing = False
        self._forwarded_error: BaseException | None = None
        self.fail_owner_on_pump_error = False  # True: a pump's failure fails the owner (a call), not this
        self.fail_when_cancelled = True

    # -- sending --------------------------------------------------------------------------------------------
    def send(self, messages: MessageType) -> None:
        """Append *messages* in order (ready parts now, the rest through the ordered pump)."""
        buffer = self.buffer
        if buffer.done or self._finishing:
            raise SequenceClosedError("cannot send to a sequence that is already finished")
        if self._deferred:  # one test on the hot path for both cases below
            if self._ordered_running:
                assert self._ordered is not None
                self._ordered.append([iter((messages,))])
                return
            # Out-of-order items staged for the next flush were produced before this send: they come first.
            self._flush_staged()
        if isinstance(messages, (Message, MessagePromise)):  # the hot path: one ready item
            buffer.pieces.append(messages)  # _append, inlined: this runs once per message per hop
            event = buffer._event
            if event is not None:
                buffer._event = None
                event.set()
            persist = self._persist
            if persist is not None:
                if isinstance(messages, Message):
                    if messages._persisted_in != self._activation:
                        persist(messages)
                else:
                    messages.add_done_callback(persist)
            return
        stack: list[Iterator[Any]] = [iter((messages,))]
        head = self._flatten_ready(stack)
        if head is not _DONE:
            stack.append(iter((head,)))
            if self._ordered is None:
                self._ordered = deque()
            self._ordered.append(stack)
            self._ordered_running = self._deferred = True
            self._start_pump(self._run_ordered)

    def send_out_of_order(self, messages: MessageType) -> None:
        """Append the ready part of *messages* now and the rest as soon as it is available."""
        if self.buffer.done or self._finishing:
            raise SequenceClosedError("cannot send to a sequence that is already finished")
        if self._staged:
            self._flush_staged()  # produced before this send: they come first (see send())
        stack: list[Iterator[Any]] = [iter((messages,))]
        head = self._flatten_ready(stack)
        if head is not _DONE:
            stack.append(iter((head,)))
            if self._oo_units is None:
                self._oo_units = {}
            self._oo_count += 1
            self._oo_units[self._oo_count] = stack
            self._start_pump(self._run_out_of_order, stack, self._oo_count)

    def finish(self) -> None:
        """Close the buffer once every pending item has been appended (at once if none is pending)."""
        self._finishing = True
        if self._pumps == 0:
            self.buffer.close()

    def fail(self, error: BaseException, *, record: bool = True) -> None:
        """Close the buffer with *error*, after salvaging every pending item that is available right now."""
        if self.buffer.done:
            return
        self.salvage()
        self._finishing = True
        self.buffer.close(error, record=record)

    def _fail_from_pump(self, error: BaseException, passed_on: bool) -> None:
        self.fail(error, record=not passed_on)

    @property
    def open(self) -> bool:
        """Whether more can still be sent (not finished, not failed)."""
        return not self._finishing and not self.buffer.done

    @property
    def pending(self) -> bool:
        """Whether items are still waiting to be appended."""
        return self._pumps > 0

    # -- flattening -----------------------------------------------------------------------------------------
    def _append(self, item: Item) -> None:
        self.buffer.append(item)
        persist = self._persist
        if persist is not None:
            if isinstance(item, Message):
                # A message forwarded from agent to agent was queued once already: its mark says so, and
                # checking it here saves a call per hop (MiniAgents._persist checks it too).
                if item._persisted_in != self._activation:
                    persist(item)
            else:
                item.add_done_callback(persist)

    def _flatten_ready(self, stack: list[Iterator[Any]], append: Callable[[Item], None] | None = None) -> Any:
        """Append items from *stack* until one is not ready; return it (or ``_DONE``).

        The stack of iterators keeps its position, so flattening resumes right after the returned item.
        """
        if append is None:
            append = self._append
        while stack:
            for item in stack[-1]:
                cls = type(item)
                if cls is str:
                    append(text_message(item))
                elif cls is TextMessage or isinstance(item, (Message, MessagePromise)):
                    append(item)
                elif isinstance(item, MessageSequencePromise):
                    buffer = item._buffer
                    if buffer is self.buffer:
                        raise SequenceCycleError(
                            "a sequence cannot be sent into itself (e.g. an agent replying its own reply "
                            "sequence): it would feed on what it appends and grow forever"
                        )
                    pieces = buffer.pieces
                    forward = self._forwarder(buffer, append)
                    for piece in pieces:
                        forward(piece)
                    if not buffer.done or buffer.error is not None:
                        return _Continuation(item, len(pieces))
                elif isinstance(item, _Continuation):
                    return item
                elif isinstance(item, str):
                    append(TextMessage(content=str(item)))
                elif isinstance(item, Mapping):
                    append(_message_from_mapping(item))
                elif isinstance(item, AsyncIterable):
                    return item
                elif isinstance(item, Iterable) and not isinstance(item, (bytes, bytearray)):
                    stack.append(iter(tuple(item)))
                    break
                else:
                    raise TypeError(
                        f"cannot send a value of type {cls.__module__}.{cls.__qualname__} as a message "
                        "(expected str, Message, a mapping of message fields, MessagePromise, "
                        "MessageSequencePromise, or an (async) iterable of those)"
                    )
            else:
                stack.pop()
        return _DONE

    def _forwarder(
        self, source: ReplayBuffer[Item], append: Callable[[Item], None]
    ) -> Callable[[Item], None]:
        """Return how to append the pieces of another sequence.

        Pieces of a sequence of the same context skip the persistence hook: its producer passed them already.
        """
        if append == self._append and source._ledger is self.buffer._ledger and source._ledger is not None:
            return self.buffer.append
        return append

    async def _drain(self, head: Any, append: Callable[[Item], None]) -> None:
        """Append everything *head* (an async item returned by :meth:`_flatten_ready`) produces."""
        if isinstance(head, _Continuation):
            buffer = head.sequence._buffer
            forward = self._forwarder(buffer, append)
            index = head.offset
            while True:
                pieces = buffer.pieces
                while index < len(pieces):
                    forward(pieces[index])
                    index += 1
                    head.offset = index
                if buffer.done:
                    if buffer.error is not None:
                        self._forwarded_error = buffer.error
                        buffer.pass_error_on()
                    return
                await buffer.wait_beyond(index)
        async for value in head:
            await self._feed([iter((value,))], append)

    async def _feed(self, stack: list[Iterator[Any]], append: Callable[[Item], None]) -> None:
        while True:
            head = self._flatten_ready(stack, append)
            if head is _DONE:
                return
            # Keep the head on the stack while it drains, so salvage() can still reach what it buffered.
            stack.append(iter((head,)))
            await self._drain(head, append)
            stack.pop()

    # -- pumps ----------------------------------------------------------------------------------------------
    def _start_pump(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        owner = self._owner
        if owner is None:  # pragma: no cover - only resolved sequences have no owner, and they never pump
            raise SequenceClosedError("this sequence cannot receive messages that are not ready")
        # Each pump has its own cancel scope, so the builder's owner can stop its sources (cancel_pumps)
        # without cancelling the task group they run in.  It is registered now, not when the task starts:
        # cancel_pumps() must also stop a pump whose task has not run yet.
        scope = anyio.CancelScope()
        if self._pump_scopes is None:
            self._pump_scopes = set()
        self._pump_scopes.add(scope)
        self._pumps += 1
        try:
            owner._spawn(self._guard, scope, fn, *args)
        except BaseException:
            self._pump_scopes.discard(scope)
            self._pumps -= 1
            raise

    async def _guard(self, scope: anyio.CancelScope, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        # The owner hears of a failure *before* the pump count drops: otherwise a finished builder would
        # close successfully and the error would be lost.
        assert self._pump_scopes is not None
        try:
            with scope:
                await fn(*args)
        except anyio.get_cancelled_exc_class():
            self._pump_cancelled()
            raise
        except Exception as exc:
            if not self._fail_owner(exc, exc is self._forwarded_error):
                self._fail_from_pump(exc, exc is self._forwarded_error)
            self._pump_ended()
        except BaseException as exc:  # KeyboardInterrupt, SystemExit from a source: the context stops
            if not self._fail_owner(exc, False):  # (the call reports it to its context)
                self._fail_from_pump(exc, False)
                if self._context is not None:
                    self._context._fatal_error(exc)
            self._pump_ended()
        else:
            if scope.cancelled_caught:
                self._pump_cancelled()
            else:
                self._pump_ended()
        finally:
            self._pump_scopes.discard(scope)

    def _fail_owner(self, error: BaseException, passed_on: bool) -> bool:
        """Fail the owning call with a pump's *error* if this builder reports to it; whether it did."""
        if not self.fail_owner_on_pump_error:
            return False
        owner = self._owner
        if owner is None:  # detached: the call has concluded
            return False
        cast("CallLike", owner)._fail(error, passed_on=passed_on)
        return True

    def _pump_cancelled(self) -> None:
        if self.fail_when_cancelled:
            self.fail(AgentCallCancelledError("a message source was cancelled before it finished"))
        self._pump_ended()

    def detach(self) -> None:
        """Forget the owner once it has concluded (no reference cycle outlives a call)."""
        self._owner = None

    def cancel_pumps(self) -> None:
        """Cancel every pump still feeding this builder (their sources stop; the builder fails as cancelled)."""
        for scope in list(self._pump_scopes or ()):
            scope.cancel()

    def _pump_ended(self) -> None:
        self._pumps -= 1
        if self._pumps == 0 and self._finishing:
            self.buffer.close()

    async def _run_ordered(self) -> None:
        queue = self._ordered
        assert queue is not None
        try:
            while queue:
                await self._feed(queue[0], self._append)
                queue.popleft()
        except Exception:
            queue.clear()  # nothing ordered after the failed item may be delivered
            raise
        finally:
            self._ordered_running = False
            self._deferred = self._flush_scheduled

    async def _run_out_of_order(self, stack: list[Iterator[Any]], number: int) -> None:
        def stage(item: Item) -> None:
            if self._staged is None:
                self._staged = []
            self._staged.append((number, len(self._staged), item))
            if not self._flush_scheduled:
                self._flush_scheduled = self._deferred = True
                self._start_pump(self._flush_soon)

        try:
            await self._feed(stack, stage)
        finally:
            assert self._oo_units is not None
            self._oo_units.pop(number, None)  # (salvage() may have cleared them already)

    async def _flush_soon(self) -> None:
        # Out-of-order items that become available at the same moment (in one scheduling round, which trio
        # runs in random order) are staged and appended after one checkpoint, in the order they were sent.
        try:
            await anyio.lowlevel.checkpoint()
        finally:
            self._flush_staged()

    def _flush_staged(self) -> None:
        self._flush_scheduled = False
        self._deferred = self._ordered_running
        staged = self._staged
        if staged:
            self._staged = None
            if self.buffer.done:
                return  # failed meanwhile: salvage() already appended what was staged
            staged.sort(key=lambda entry: (entry[0], entry[1]))
            for _, _, item in staged:
                self._append(item)

    def salvage(self) -> None:
        """Append what is available right now from every pending item, skipping what is not.

        Used when a producer fails or is cancelled: replies made before the failure must not be lost.
        """
        self._flush_staged()
        units = [*(self._oo_units or {}).values(), *(self._ordered or ())]
        if self._oo_units:
            self._oo_units.clear()
        if self._ordered:
            self._ordered.clear()
        for stack in units:
            while True:
                try:
                    head = self._flatten_ready(stack)
                except Exception:
                    break
                if head is _DONE:
                    break
                if isinstance(head, _Continuation):
                    buffer = head.sequence._buffer
                    for piece in buffer.pieces[head.offset :]:
                        self._append(piece)
                    if buffer.error is not None:
                        break  # the rest of this unit comes after an error: never delivered


def _message_from_mapping(data: Mapping[str, Any]) -> Message:
    fields = dict(data)
    for key in fields:
        if not isinstance(key, str):
            raise TypeError(f"a message mapping needs str keys, got {type(key).__name__}: {key!r}")
    content = fields.pop("content", "")
    return Message(content=content, **fields)


install_builder_factory(
    SequenceBuilder
)  # MessageSequencePromise.open() (the sequence layer cannot import this one)
