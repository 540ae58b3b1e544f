"""Promises: values that are produced concurrently and consumed any number of times.

* :class:`Promise` resolves once; every ``await`` returns the same value or raises the same error.
* :class:`StreamedPromise` is a :class:`~miniagents._buffer.ReplayBuffer` of pieces plus a whole value:
  ``async for`` replays the pieces from the first one (for late consumers too), ``await`` gives the whole.
* :class:`MessagePromise` streams ``str`` tokens and resolves to a :class:`~miniagents.Message`.

Producers hold a writer (:class:`StreamWriter`, :class:`MessageWriter`); consumers only ever see the promise.
A consumer that stops waiting (is cancelled, breaks out of its loop) never affects the producer or other
consumers.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from miniagents._buffer import BufferIterator, BufferStatistics, ReplayBuffer
from miniagents._exceptions import AgentCallCancelledError, SequenceClosedError
from miniagents._frozen import EMPTY, FrozenDict, freeze_kwargs
from miniagents._messages import Message, TextMessage, build_message, install_stream_factory
from miniagents._scope import current_call, current_context, current_owner

if TYPE_CHECKING:
    from miniagents._ledger import ErrorLedger
    from miniagents._scope import CallLike

T = TypeVar("T")
P = TypeVar("P")

_PENDING: Any = object()


def _ledger() -> ErrorLedger | None:
    context = current_context.get()
    return None if context is None else context._ledger


class Promise(Generic[T]):
    """A value that becomes available once.

    ``Promise(resolver)`` starts ``resolver()`` soon as a child task of the current agent call (or of the
    current ``MiniAgents`` context) and resolves to what it returns or raises.  ``Promise.resolved(value)`` is
    already resolved.  Every ``await`` returns the same value, or raises the same exception object; awaiting a
    resolved promise does not suspend.  A failure that nobody awaits is raised when the ``MiniAgents`` block
    exits.
    """

    __slots__ = ("__weakref__", "_buffer", "_value")

    def __init__(self, resolver: Callable[[], Awaitable[T]]) -> None:
        context, owner = current_owner("Promise(resolver)")
        self._buffer: ReplayBuffer[T] = ReplayBuffer(context._ledger)
        self._value: T = _PENDING
        owner._spawn(self._resolve, resolver)

    @classmethod
    def resolved(cls, value: T) -> Promise[T]:
        """Return a promise that is already resolved to *value* (no context needed)."""
        promise = cls.__new__(cls)
        promise._buffer = ReplayBuffer()
        promise._value = value
        promise._buffer.close()
        return promise

    async def _resolve(self, resolver: Callable[[], Awaitable[T]]) -> None:
        try:
            value = await resolver()
        except anyio.get_cancelled_exc_class():
            self._buffer.close(AgentCallCancelledError("the promise's resolver was cancelled"))
            raise
        except Exception as exc:
            self._buffer.close(exc)
        else:
            self._value = value
            self._buffer.close()

    @property
    def done(self) -> bool:
        """Whether the promise has resolved (to a value or an error)."""
        return self._buffer.done

    def __await__(self) -> Generator[Any, None, T]:
        buffer = self._buffer
        if not buffer.done:
            yield from buffer.wait_closed().__await__()
        if buffer.error is not None:
            buffer.raise_error()
        return self._value

    def __repr__(self) -> str:
        state = "pending" if not self.done else ("failed" if self._buffer.error else "resolved")
        return f"<{type(self).__name__} {state}>"


class StreamWriter(Generic[P]):
    """The producer side of a :class:`StreamedPromise` (from :meth:`StreamedPromise.open`).

    Usable as a context manager: leaving the block normally closes the stream, leaving it with an exception
    fails the stream with that exception (a cancellation becomes :class:`AgentCallCancelledError`).
    """

    __slots__ = ("__weakref__", "_owner", "_promise")

    def __init__(self, promise: StreamedPromise[P, Any], owner: CallLike | None = None) -> None:
        self._promise = promise
        self._owner = owner
        if owner is not None:
            owner._track_writer(self)

    def send(self, piece: P) -> None:
        """Append one piece; consumers see it at once.  Raises :class:`SequenceClosedError` once closed."""
        buffer = self._promise._buffer
        if buffer.done:
            raise SequenceClosedError("cannot send to a stream that is already closed")
        buffer.append(piece)

    def close(self) -> None:
        """Finish the stream successfully (idempotent)."""
        if self._promise._buffer.close():
            self._untrack()

    def fail(self, error: BaseException) -> None:
        """Finish the stream with *error*; pieces already sent stay visible to consumers."""
        if self._promise._buffer.close(error):
            self._untrack()

    def _untrack(self) -> None:
        owner = self._owner
        if owner is not None:
            self._owner = None
            owner._untrack_writer(self)

    @property
    def closed(self) -> bool:
        """Whether the stream was closed or failed."""
        return self._promise._buffer.done

    def __enter__(self) -> StreamWriter[P]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _exit_writer(self, exc)


def _exit_writer(writer: StreamWriter[Any] | MessageWriter, exc: BaseException | None) -> None:
    if writer.closed:
        return
    if exc is None:
        writer.close()
    elif isinstance(exc, anyio.get_cancelled_exc_class()):
        writer.fail(AgentCallCancelledError("the stream's producer was cancelled"))
    else:
        writer.fail(exc)


class StreamedPromise(Generic[P, T]):
    """A stream of pieces that any number of consumers replay, plus the whole value they make.

    ``StreamedPromise(source, resolver)`` pumps the async iterable *source* in a child task of the current
    agent call (or ``MiniAgents`` context); ``StreamedPromise.open(resolver)`` returns the promise and a
    :class:`StreamWriter` for producers that push.  ``async for piece in promise`` replays from the first piece
    for every consumer, including ones that start late; ``await promise`` waits for the end and returns
    ``resolver(pieces)``, computed once.  An error in the stream reaches each consumer after the pieces sent
    before it.
    """

    __slots__ = ("__weakref__", "_buffer", "_resolver", "_whole")

    _buffer: ReplayBuffer[Any]

    def __init__(self, source: AsyncIterable[P], resolver: Callable[[Sequence[P]], T]) -> None:
        if not isinstance(source, AsyncIterable):
            raise TypeError(f"StreamedPromise needs an async iterable source, got {type(source).__name__}")
        context, owner = current_owner("StreamedPromise(source)")
        self._buffer = ReplayBuffer(context._ledger)
        self._resolver = resolver
        self._whole: Any = _PENDING
        owner._spawn(_pump_source, source, StreamWriter(self), None)

    @classmethod
    def open(cls, resolver: Callable[[Sequence[P]], T]) -> tuple[StreamedPromise[P, T], StreamWriter[P]]:
        """Return a new pending promise and the writer that feeds it.

        A writer opened inside an agent call and still open when that call ends is failed with
        :class:`AgentCallCancelledError` (or the call's own error), so consumers never wait forever.
        """
        promise = cls.__new__(cls)
        promise._buffer = ReplayBuffer(_ledger())
        promise._resolver = resolver
        promise._whole = _PENDING
        call = current_call.get()
        writer: StreamWriter[P] = StreamWriter(promise, call)
        if call is None:
            _track_block_writer(writer)
        return promise, writer

    def __aiter__(self) -> AsyncIterator[P]:
        return BufferIterator(self._buffer)

    def __await__(self) -> Generator[Any, None, T]:
        return self._await_whole().__await__()

    async def _await_whole(self) -> T:
        if self._whole is not _PENDING:
            return self._whole  # type: ignore[no-any-return]
        buffer = self._buffer
        await buffer.wait_closed()
        if buffer.error is not None:
            buffer.raise_error()
        if self._whole is _PENDING:
            self._whole = self._resolver(tuple(buffer.pieces))
        return self._whole  # type: ignore[no-any-return]

    @property
    def done(self) -> bool:
        """Whether the stream has finished (successfully or not)."""
        return self._buffer.done

    def statistics(self) -> BufferStatistics:
        """Return a snapshot of the underlying replay buffer."""
        return self._buffer.statistics()

    def __repr__(self) -> str:
        stats = self._buffer.statistics()
        state = "failed" if stats.failed else ("done" if stats.done else "streaming")
        return f"<{type(self).__name__} {state}, {stats.pieces} pieces>"


def _track_block_writer(writer: StreamWriter[Any] | MessageWriter) -> None:
    """A writer opened outside any call: the context fails it at exit if it is still open."""
    context = current_context.get()
    if context is not None:
        context._track_block_writer(writer)


async def _pump_source(
    source: AsyncIterable[Any], writer: StreamWriter[Any] | MessageWriter, check: Callable[[Any], None] | None
) -> None:
    """Copy *source* into *writer*; errors and cancellation end the stream, never the owner."""
    owner = writer._owner if isinstance(writer, MessageWriter) else None
    try:
        async for piece in source:
            if check is not None:
                check(piece)
            writer.send(piece)
    except anyio.get_cancelled_exc_class():
        if owner is None:  # a call that owns the writer ends it with the call's own outcome
            writer.fail(AgentCallCancelledError("the stream was cancelled before it finished"))
        raise
    except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the context stops (see _fatal_error)
        if owner is None:
            writer.fail(exc)
            if not isinstance(exc, Exception):
                context = current_context.get()
                if context is not None:
                    context._fatal_error(exc)
        else:  # a reply source failed: so does the call (named in the error's note)
            assert isinstance(writer, MessageWriter)
            owner._end_writer(writer, exc)
            owner._fail(exc, passed_on=not owner.context.errors_as_messages)
    else:
        writer.close()


class MessageWriter:
    """The producer side of a :class:`MessagePromise` (from :meth:`MessagePromise.open`).

    ``send(token)`` appends a ``str`` token; ``finish(**fields)`` resolves the promise to
    ``message_class(content="".join(tokens), **known_beforehand, **fields)``; ``fail(error)`` ends it with an
    error after the tokens already sent.  Used as a context manager, it finishes on normal exit and fails on an
    exception.  A writer left open when the agent call that opened it ends is failed with
    :class:`AgentCallCancelledError`, so consumers never wait forever.
    """

    __slots__ = ("__weakref__", "_owner", "_promise")

    def __init__(self, promise: MessagePromise) -> None:
        self._promise = promise
        call = current_call.get()
        self._owner = call
        if call is not None:
            call._track_writer(self)

    def send(self, token: str) -> None:
        """Append one token.  Raises ``TypeError`` for a non-``str`` and :class:`SequenceClosedError` when done."""
        if type(token) is not str and not isinstance(token, str):
            raise TypeError(f"a message token must be str, got {type(token).__name__}: {token!r:.60}")
        buffer = self._promise._buffer
        if buffer.done:
            raise SequenceClosedError("cannot send a token to a message that is already finished")
        buffer.append(token)

    def finish(self, **fields: Any) -> Message:
        """Resolve the promise and return its message; *fields* add to (and override) the known ones."""
        promise = self._promise
        if promise._buffer.done:
            raise SequenceClosedError("this message is already finished")
        content = "".join(promise._buffer.pieces)
        all_fields = dict(promise.known_beforehand)
        all_fields.update(fields)
        message = build_message(promise.message_class, content, all_fields)
        promise._set_message(message)
        self._untrack()
        return message

    def fail(self, error: BaseException) -> None:
        """End the message with *error*; tokens already sent stay visible.  No-op once finished."""
        if self._promise._buffer.close(error):
            self._untrack()

    def close(self) -> None:
        """Finish with no extra fields, unless already finished."""
        if not self._promise._buffer.done:
            self.finish()

    @property
    def closed(self) -> bool:
        """Whether the message was finished or failed."""
        return self._promise._buffer.done

    def _untrack(self) -> None:
        owner = self._owner
        if owner is not None:
            self._owner = None
            owner._untrack_writer(self)

    def __enter__(self) -> MessageWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _exit_writer(self, exc)


class MessagePromise(StreamedPromise[str, Message]):
    """A message that may still be streaming: ``str`` tokens as pieces, a :class:`Message` as the whole.

    ``known_beforehand`` holds the fields known before the first token (role, model, ...).  For a message that
    was not streamed, iteration yields its whole content as one token (none if the content is empty).
    """

    __slots__ = ("_callbacks", "_message", "_observes", "known_beforehand", "message_class")

    _observes: tuple[ErrorLedger, BaseException] | None

    known_beforehand: FrozenDict[str, Any]
    message_class: type[Message]
    _message: Message | None
    _callbacks: list[Callable[[Message], None]] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "create message promises with MessagePromise.open(), MessagePromise.resolved() "
            "or Message.stream()"
        )

    @classmethod
    def _new(cls, message_class: type[Message], known: FrozenDict[str, Any]) -> MessagePromise:
        promise = cls.__new__(cls)
        promise._buffer = ReplayBuffer(_ledger())
        promise._resolver = _join_tokens
        promise._whole = _PENDING
        promise._message = None
        promise._callbacks = None
        # (ledger, failure) when this is the ErrorMessage of a failure (errors_as_messages): reading it
        # observes the failure, whichever sequence it was forwarded to.
        promise._observes = None
        promise.message_class = message_class
        promise.known_beforehand = known
        return promise

    def _observed(self) -> None:
        """A consumer read this ErrorMessage: the failure it stands for was observed."""
        observes = self._observes
        if observes is not None:
            self._observes = None
            observes[0].observe(observes[1])

    @classmethod
    def open(  # type: ignore[override]  # an alternative constructor with its own signature
        cls, *, message_class: type[Message] = TextMessage, **known_beforehand: Any
    ) -> tuple[MessagePromise, MessageWriter]:
        """Return a pending message promise and its writer; *known_beforehand* fields are frozen now.

        A writer opened in an agent call and still open when the call's code has ended, or opened in a
        ``MiniAgents`` block (or an ``attach()`` block) and still open when the context exits, is failed with
        :class:`AgentCallCancelledError`, so consumers never wait forever.
        """
        promise, writer = cls._open(message_class, known_beforehand)
        if writer._owner is None:
            _track_block_writer(writer)
        return promise, writer

    @classmethod
    def _open(
        cls, message_class: type[Message], known_beforehand: dict[str, Any]
    ) -> tuple[MessagePromise, MessageWriter]:
        promise = cls._new(message_class, freeze_kwargs(known_beforehand, shared=False))
        return promise, MessageWriter(promise)

    @classmethod
    def resolved(cls, message: Message) -> MessagePromise:
        """Wrap an existing message (its content is the single token)."""
        promise = cls._new(type(message), EMPTY)
        if message.content:
            promise._buffer.pieces.append(message.content)
        promise._message = message
        promise._whole = message
        promise._buffer.close()
        return promise

    @classmethod
    def from_token_stream(
        cls, tokens: AsyncIterable[str], *, message_class: type[Message] = TextMessage, **fields: Any
    ) -> MessagePromise:
        """Stream *tokens* into a new promise from a child task of the current call (see ``Message.stream``)."""
        if not isinstance(tokens, AsyncIterable):
            raise TypeError(
                f"{message_class.__name__}.stream() takes an async iterable of str, got "
                f"{type(tokens).__name__}"
            )
        _, owner = current_owner(f"{message_class.__name__}.stream()")
        promise, writer = cls._open(message_class, fields)  # ended by its pump, not by the block's exit
        owner._spawn(_pump_source, tokens, writer, _check_token)
        return promise

    def _set_message(self, message: Message) -> None:
        self._message = message
        self._whole = message
        self._buffer.close()
        callbacks = self._callbacks
        if callbacks is not None:
            self._callbacks = None
            for callback in callbacks:
                callback(message)

    def add_done_callback(self, callback: Callable[[Message], None]) -> None:
        """Call ``callback(message)`` once the message resolves (at once if it already has; never on failure)."""
        if self._message is not None:
            callback(self._message)
        elif not self._buffer.done:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(callback)

    async def _await_whole(self) -> Message:
        message = self._message
        if message is not None:
            return message
        buffer = self._buffer
        await buffer.wait_closed()
        if buffer.error is not None:
            buffer.raise_error()
        assert self._message is not None
        return self._message

    def __await__(self) -> Generator[Any, None, Message]:
        message = self._message
        if message is not None:
            return message
        return (yield from self._await_whole().__await__())

    def __repr__(self) -> str:
        if self._message is not None:
            return f"<MessagePromise resolved {self._message!r}>"
        return super().__repr__()


def _check_token(token: Any) -> None:
    if not isinstance(token, str):
        raise TypeError(f"a streamed message token must be str, got {type(token).__name__}: {token!r:.60}")


def _join_tokens(tokens: Sequence[str]) -> Message:  # pragma: no cover - MessagePromise overrides awaiting
    return TextMessage(content="".join(tokens))


def _stream_message(
    tokens: AsyncIterable[str], message_class: type[Message], fields: dict[str, Any]
) -> MessagePromise:
    return MessagePromise.from_token_stream(tokens, message_class=message_class, **fields)


install_stream_factory(_stream_message)  # Message.stream() (the message layer cannot import this one)
