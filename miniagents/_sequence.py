"""Message sequences: :class:`MessageSequencePromise`, its iterators, and :class:`MessageSequenceWriter`.

A sequence is an ordered, replayable stream of messages; the writer is the producer side of
:meth:`MessageSequencePromise.open`.

What fills a sequence is ``_sequence_builder.SequenceBuilder``, which flattens any ``MessageType`` into the
sequence's replay buffer.  It imports this module (it recognises sequences among the values it flattens), so
this one reaches it only through the factory the builder module installs when it is imported
(:func:`install_builder_factory`), and names it by the :class:`SequenceSink` Protocol.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, Union, cast

import anyio

from miniagents._buffer import BufferIterator, ReplayBuffer
from miniagents._exceptions import MiniAgentsError
from miniagents._messages import Message
from miniagents._promises import MessagePromise, StreamedPromise
from miniagents._scope import current_call, current_owner

if TYPE_CHECKING:
    from miniagents._scope import CallLike, ContextLike, TaskOwner

#: What can be sent or replied: nested arbitrarily, flattened in order.
MessageType: TypeAlias = Union[
    str,
    Mapping[str, Any],
    Message,
    MessagePromise,
    "MessageSequencePromise",
    Iterable["MessageType"],
    AsyncIterable["MessageType"],
]

Item: TypeAlias = Message | MessagePromise


class SequenceSink(Protocol):
    """What a sequence's writer uses of the builder filling it (``_sequence_builder.SequenceBuilder`` fits)."""

    @property
    def buffer(self) -> ReplayBuffer[Item]:
        """The replay buffer the flattened messages go to."""

    @property
    def open(self) -> bool:
        """Whether more may be sent (neither finished nor failed)."""

    def send(self, messages: MessageType) -> None:
        """Append *messages* (flattened) after everything sent before."""

    def send_out_of_order(self, messages: MessageType) -> None:
        """Append *messages* as soon as they are available, ahead of ordered items that are not."""

    def finish(self) -> None:
        """Close the buffer once everything sent so far has been appended."""

    def fail(self, error: BaseException, *, record: bool = True) -> None:
        """Close the buffer with *error* after the items available now."""


#: Set by ``_sequence_builder`` when it is imported (``_calls`` imports it, the package imports ``_calls``):
#: how :meth:`MessageSequencePromise.open` makes the builder behind a new sequence.
_builder_factory: Callable[[ContextLike | None, TaskOwner | None], SequenceSink] | None = None


def install_builder_factory(factory: Callable[[ContextLike | None, TaskOwner | None], SequenceSink]) -> None:
    """Let :meth:`MessageSequencePromise.open` make its builders by *factory* (called once, by the builder)."""
    global _builder_factory
    _builder_factory = factory


class MessageSequencePromise(StreamedPromise[Message, tuple[Message, ...]]):
    """An ordered, replayable stream of messages (an agent's replies, a call's input).

    * ``async for message in seq`` yields each :class:`~miniagents.Message`, resolved, in order; every
      iteration replays from the first message, for late consumers too.
    * ``seq.promises()`` yields a :class:`~miniagents.MessagePromise` per message as soon as it starts, for
      token streaming.
    * ``await seq`` gives ``tuple[Message, ...]``; ``await seq.as_single_text()`` joins the contents.

    An error in the producer reaches every consumer after the messages produced before it.

    The replies of a call are also an async context manager that bounds the call's lifetime::

        async with agent.inquire(question) as replies:
            async for message in replies:
                ...

    Leaving the block by any path (its end, ``break``, an exception, a cancellation of the task) cancels the
    call if it is still running, and waits until it has ended: its children and the HTTP streams of its LLM
    requests are closed when the block is left.  What it replied stays readable afterwards (then
    :class:`~miniagents.AgentCallCancelledError`, if it was cancelled).  A failure of the call that no consumer
    observed is raised when the block is left normally, so the block never hides it.  Without the block, a
    consumer that stops reading cancels nothing: the sequence may have other consumers.  A sequence that is no
    call's replies (``ctx.messages``, ``MessageSequencePromise.open()``) has nothing to cancel: the block only
    reads it.
    """

    __slots__ = ("_call",)

    _buffer: ReplayBuffer[Item]
    #: The call whose replies these are while it runs, CONCLUDED after it ended, None for other sequences.
    _call: CallLike | object | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "MessageSequencePromise objects come from agent calls (agent.inquire(), ctx.messages) "
            "or MessageSequencePromise.open()"
        )

    @classmethod
    def _from_buffer(cls, buffer: ReplayBuffer[Item]) -> MessageSequencePromise:
        seq = cls.__new__(cls)
        seq._buffer = buffer
        seq._resolver = tuple
        seq._whole = None
        seq._call = None
        return seq

    @classmethod
    def open(cls) -> tuple[MessageSequencePromise, MessageSequenceWriter]:  # type: ignore[override]
        """Return a new sequence and its writer; async parts are pumped by the current call or context."""
        context, owner = current_owner("MessageSequencePromise.open()")
        if _builder_factory is None:  # pragma: no cover - miniagents/__init__ imports the builder
            raise RuntimeError("miniagents._sequence_builder is not imported")
        builder = _builder_factory(context, owner)
        call = None if owner is context else cast("CallLike", owner)
        writer = MessageSequenceWriter(builder, call)
        if call is None:
            context._track_block_writer(writer)  # failed at the context's exit if still open
        return cls._from_buffer(builder.buffer), writer

    @classmethod
    def resolved(cls, messages: Iterable[Message]) -> MessageSequencePromise:
        """Return a complete sequence of *messages* (no context needed)."""
        buffer: ReplayBuffer[Item] = ReplayBuffer()
        for message in messages:
            if not isinstance(message, Message):
                raise TypeError(f"expected Message, got {type(message).__name__}")
            buffer.pieces.append(message)
        buffer.close()
        return cls._from_buffer(buffer)

    def __aiter__(self) -> AsyncIterator[Message]:
        buffer = self._buffer
        if len(buffer.pieces) >= _REPLAY_MIN:
            whole = self._settled()
            if whole is not None:
                return _replay(whole)
        return _MessageIterator(buffer)

    def _settled(self) -> tuple[Message, ...] | None:
        """What ``await self`` returns, if reading it can neither wait nor observe anything; else ``None``.

        That is: the sequence is complete, without error, and holds no pending promise nor unread ErrorMessage
        (see :func:`_resolved_messages`).  Kept once computed, so that every later consumer (a replay, a call's record, ``await``) shares the tuple.
        """
        whole: tuple[Message, ...] | None = self._whole
        if whole is None:
            buffer = self._buffer
            if not buffer.done or buffer.error is not None:
                return None
            whole = _resolved_messages(buffer.pieces)
            self._whole = whole
        return whole

    def promises(self) -> AsyncIterator[MessagePromise]:
        """Yield a :class:`MessagePromise` per message, as soon as each message starts."""
        return _PromiseIterator(self._buffer)

    def __await__(self) -> Generator[Any, None, tuple[Message, ...]]:
        return self._await_all().__await__()

    async def _await_all(self) -> tuple[Message, ...]:
        whole = self._whole
        if whole is not None:
            return whole  # type: ignore[no-any-return]
        messages = [message async for message in _MessageIterator(self._buffer)]
        if self._whole is None:  # (a call's record may have kept the tuple meanwhile: one tuple for all)
            self._whole = tuple(messages)
        return self._whole  # type: ignore[no-any-return]

    async def as_single_text(self, separator: str = "\n\n") -> str:
        """Wait for every message and return their contents joined by *separator*."""
        return separator.join(message.content for message in await self)

    async def __aenter__(self) -> MessageSequencePromise:
        call = self._call
        if call is not None and call is not CONCLUDED:
            inner = current_call.get()
            while inner is not None:
                if inner is call:
                    raise MiniAgentsError(
                        f"a block scoping the call to agent {inner.agent.alias!r} cannot run inside that call "
                        "(leaving the block would wait for the call it is part of)"
                    )
                inner = inner.parent
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        call = self._call
        if call is None:
            return  # not a call's replies: nothing to cancel
        buffer = self._buffer
        if call is not CONCLUDED:
            cast("CallLike", call).cancel()
            # Cancelled, the call ends promptly; wait for it even if this task is being cancelled, so that
            # nothing it started outlives the block (a nursery waits for its children the same way).
            with anyio.CancelScope(shield=True):
                while not buffer.done:
                    await buffer.wait_beyond(len(buffer.pieces))
        error = buffer.error
        if exc_type is None and error is not None and buffer.unobserved():
            buffer.raise_error()

    def __repr__(self) -> str:
        stats = self._buffer.statistics()
        state = "failed" if stats.failed else ("done" if stats.done else "open")
        return f"<MessageSequencePromise {state}, {stats.pieces} messages>"


#: The ``_call`` of a call's reply sequence once the call has ended (no reference kept: no reference cycle).
CONCLUDED: Any = object()


#: The fewest messages a complete sequence has for ``async for`` to take the replay fast path (:func:`_replay`):
#: starting it costs about as much as 1.5 messages read by :class:`_MessageIterator` (callgrind: ~2,200 more
#: instructions to start, ~1,550 fewer per message).
_REPLAY_MIN = 2


def _resolved_messages(pieces: list[Item]) -> tuple[Message, ...] | None:
    """The messages of a complete, successful sequence if reading them can neither wait nor observe anything.

    ``None`` if a piece is a promise that has not resolved (it may still stream, or fail) or is the
    ``ErrorMessage`` of a failure nobody has read yet (reading it observes the failure, see
    ``MessagePromise._observed``): those need the per-item work of :class:`_MessageIterator`.
    """
    if all(map(isinstance, pieces, itertools.repeat(Message))):  # the common case, at C speed (1M-item calls)
        return tuple(pieces)  # type: ignore[arg-type]
    messages: list[Message] = []
    for item in pieces:
        if isinstance(item, Message):  # (tested first: see _MessageIterator.__anext__)
            messages.append(item)
        else:
            message = item._message
            if message is None or item._observes is not None:
                return None
            messages.append(message)
    return tuple(messages)


async def _replay_messages(messages: tuple[Message, ...]) -> AsyncIterator[Message]:
    for message in messages:
        yield message


def _replay(messages: tuple[Message, ...]) -> AsyncIterator[Message]:
    """An iterator over the resolved *messages* of a complete sequence: the replay fast path.

    An async generator, because the interpreter steps one without running any Python-level ``__anext__``
    (about 90 ns per message on CPython 3.11 against 150-250 ns for an ``async def __anext__``; this is what
    replaying a finished sequence to many late consumers costs).  It never awaits, so it is never suspended
    inside the event loop and has nothing to clean up: it is started with the interpreter's async-generator
    hooks set aside for the duration of that one synchronous call, so the event loop does not track it.
    Without that, a consumer that ``break``s out of its loop would leave it to the loop's finalizer (trio warns
    with a ``ResourceWarning`` when such a generator is garbage collected, asyncio schedules a task to close
    it); untracked, it is closed at once by the interpreter when the consumer drops it (no warning, no task).
    The hooks are per thread and restored before this returns, so no other code can run while they are unset.
    """
    replay = _replay_messages(messages)
    firstiter, finalizer = sys.get_asyncgen_hooks()
    if firstiter is None and finalizer is None:
        replay.__anext__()  # registers the (absent) hooks with the generator; the awaitable is discarded
    else:
        sys.set_asyncgen_hooks(None, None)
        try:
            replay.__anext__()
        finally:
            sys.set_asyncgen_hooks(firstiter, finalizer)
    return replay


class _MessageIterator(BufferIterator[Item]):
    """A cursor yielding resolved messages: the hot path of every agent that reads input.

    The loop of :meth:`BufferIterator.__anext__`, inlined.  Sharing it (this method awaiting the base's loop for
    a piece that is not there yet, and for the end) costs a coroutine, and a frame that ``StopAsyncIteration``
    passes through, at every wait and at the end of every iteration: measured, about 1 us per sequential
    agent call (``await agent.inquire(...)``, 3% of it).
    """

    __slots__ = ()

    def __aiter__(self) -> _MessageIterator:
        return self

    async def __anext__(self) -> Message:
        buffer = self._buffer
        index = self._index
        while True:
            pieces = buffer.pieces
            if index < len(pieces):
                self._index = index + 1
                item = pieces[index]
                # A message or a promise.  ``isinstance(item, Message)`` is the test, not one for the promise: a
                # negative isinstance() also looks up ``item.__class__``; messages are the common case.
                if isinstance(item, Message):
                    return item
                if item._observes is not None:
                    item._observed()  # the ErrorMessage of a failure (errors_as_messages) was read
                message = item._message
                if message is None:
                    try:
                        message = await item
                    except Exception as exc:
                        # The consumer observed the failure through this sequence.
                        buffer.mark_observed(exc)
                        raise
                return message
            if buffer.done:
                if buffer.error is not None:
                    buffer.raise_error()
                raise StopAsyncIteration
            await buffer.wait_beyond(index)


class _PromiseIterator(BufferIterator[Item]):
    """A cursor yielding a :class:`MessagePromise` per item (messages that were not streamed get wrapped)."""

    __slots__ = ()

    def __aiter__(self) -> _PromiseIterator:
        return self

    async def __anext__(self) -> MessagePromise:
        item = await BufferIterator.__anext__(self)
        if isinstance(item, MessagePromise):  # (mostly promises here: streamed messages)
            if item._observes is not None:
                item._observed()
            return item
        return MessagePromise.resolved(item)


class MessageSequenceWriter:
    """The producer side of :meth:`MessageSequencePromise.open`: ordered and out-of-order sends, then finish.

    A sequence opened inside an agent call must be finished by that call's code (the agent function or its
    ``ctx.start_soon`` children): one still open when they have all returned is failed with
    :class:`AgentCallCancelledError` after the messages sent to it, so that neither its consumers nor the
    call's own replies (which may be waiting for it) wait forever.
    """

    __slots__ = ("__weakref__", "_builder", "_owner")

    def __init__(self, builder: SequenceSink, owner: CallLike | None = None) -> None:
        self._builder = builder
        self._owner = owner
        if owner is not None:
            owner._track_writer(self)

    def send(self, messages: MessageType) -> None:
        """Append *messages* (flattened) after everything sent before."""
        self._builder.send(messages)

    def send_out_of_order(self, messages: MessageType) -> None:
        """Append *messages* as soon as they are available, ahead of ordered items that are not."""
        self._builder.send_out_of_order(messages)

    def finish(self) -> None:
        """Close the sequence once everything sent so far has been appended."""
        self._builder.finish()
        self._untrack()

    def close(self) -> None:
        """Same as :meth:`finish` (the name the other writers use)."""
        self.finish()

    def fail(self, error: BaseException) -> None:
        """Close the sequence with *error* after the messages available now."""
        self._builder.fail(error)
        self._untrack()

    @property
    def closed(self) -> bool:
        """Whether :meth:`finish` or :meth:`fail` was called (pending items may still be arriving)."""
        return not self._builder.open

    def _untrack(self) -> None:
        owner = self._owner
        if owner is not None:
            self._owner = None
            owner._untrack_writer(self)
