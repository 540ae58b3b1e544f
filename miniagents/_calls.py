"""Agent calls: :class:`AgentCall` and :class:`InteractionContext`.

An :class:`AgentCall` is one call of an agent; its :class:`InteractionContext` is the call as the agent function
sees it.

One call of an agent is one task, a child of whoever started it (the calling agent's call, or the
``MiniAgents`` context), running the agent function inside the call's own task group.  That task group also
holds the call's children: tasks from ``ctx.start_soon``, the calls the agent starts, and the pumps that
flatten its replies.  Hence:

* the reply sequence ends only after the agent function returned and every child finished;
* cancelling a call (``AgentCall.cancel()``, or any scope around it) cancels all of its children;
* a failure anywhere in the call (the agent function, a child task, a reply source) cancels the rest of the
  call; the replies that were available by then reach consumers, then the error.

``InteractionContext`` lives here, with the call it is a view of (the call creates it for its agent function).
``_agents`` (``MiniAgent``) imports this module, not the other way round: a call names its agent by the
:class:`CalledAgent` Protocol, which ``MiniAgent`` fits.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import attrs

from miniagents._exceptions import (
    AgentCallCancelledError,
    MiniAgentsError,
    SequenceClosedError,
    SequenceCycleError,
    StopLoop,
)
from miniagents._frozen import FrozenDict
from miniagents._messages import ErrorMessage, Message
from miniagents._promises import MessagePromise
from miniagents._records import CallOutcome, CallRecord, redact
from miniagents._scope import TaskGroupLike, current_call, current_context, open_call_group
from miniagents._sequence import CONCLUDED, MessageSequencePromise, MessageSequenceWriter, MessageType
from miniagents._sequence_builder import SequenceBuilder

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from miniagents._context import MiniAgents
    from miniagents._scope import CallLike, TaskOwner, WriterLike

_NOTE_PREFIX = "miniagents: "
_call_ids = itertools.count(1)


class CalledAgent(Protocol):
    """What a call knows of its agent: the public surface of ``_agents.MiniAgent``, which fits."""

    @property
    def alias(self) -> str:
        """The agent's name."""

    @property
    def description(self) -> str | None:
        """What the agent does."""

    @property
    def default_kwargs(self) -> FrozenDict[str, Any]:
        """The kwargs every call gets unless it passes its own."""

    @property
    def func(self) -> Callable[..., Coroutine[Any, Any, None]]:
        """The agent function."""

    def initiate_call(self, **kwargs: Any) -> AgentCall:
        """Start a call soon and return it, with its input open."""

    def inquire(self, messages: MessageType | None = None, **kwargs: Any) -> MessageSequencePromise:
        """Start a call soon with *messages* as its whole input and return its replies."""

    def fork(self, alias: str | None = None, description: str | None = None, **kwargs: Any) -> CalledAgent:
        """Return a variant of the agent with more default kwargs."""


class InteractionContext:
    """What an agent function receives: its input, its kwargs, and the ways to reply and to start children."""

    __slots__ = ("_call", "_replies")

    def __init__(self, call: AgentCall) -> None:
        self._call = call
        self._replies = call._replies

    @property
    def messages(self) -> MessageSequencePromise:
        """The call's input; iterate it (or await it) to read what the caller sent."""
        return self._call.input_sequence()

    @property
    def agent(self) -> CalledAgent:
        """The agent being called."""
        return self._call.agent

    @property
    def kwargs(self) -> FrozenDict[str, Any]:
        """The call's kwargs (frozen, defaults merged)."""
        return self._call.kwargs

    @property
    def call(self) -> AgentCall:
        """The call this context belongs to."""
        return self._call

    def reply(self, messages: MessageType) -> None:
        """Reply *messages*, in order after the previous replies; consumers see them as they become available.

        Never blocks: what is ready is delivered at once, the rest is pumped by a child task of this call.
        """
        try:
            self._replies.send(messages)
        except SequenceClosedError:
            raise SequenceClosedError(
                f"agent {self._call.agent.alias!r} replied after its call finished"
            ) from None
        except SequenceCycleError as error:
            raise SequenceCycleError(f"agent {self._call.agent.alias!r}: {error}") from None

    def reply_out_of_order(self, messages: MessageType) -> None:
        """Reply *messages* as soon as they are available, ahead of ordered replies that are not ready yet.

        Items of one ``reply_out_of_order`` keep their order among themselves; items available at the same
        moment reach consumers in the order they were sent.
        """
        try:
            self._call._replies.send_out_of_order(messages)
        except SequenceClosedError:
            raise SequenceClosedError(
                f"agent {self._call.agent.alias!r} replied after its call finished"
            ) from None
        except SequenceCycleError as error:
            raise SequenceCycleError(f"agent {self._call.agent.alias!r}: {error}") from None

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start ``fn(*args)`` as a child task of this call.

        The call's replies end only after the child finished; an exception in the child fails the call (like
        an exception in the agent function); cancelling the call cancels the child.
        """
        self._call._start_child(fn, *args)


class AgentCall:
    """One call of an agent, for full-duplex use (see :meth:`MiniAgent.initiate_call`).

    ``send()`` adds input (chainable), ``finish()`` closes the input, ``reply_sequence()`` returns the replies
    (finishing the input by default), ``cancel()`` cancels the call and its children.  ``async with
    agent.initiate_call() as call:`` bounds the call's lifetime by the block: leaving it finishes the input and
    cancels the call if it is still running (as ``async with agent.inquire(...) as replies:`` does).
    """

    __slots__ = (
        "__weakref__",
        "_accepts_children",
        "_cancel_requested",
        "_failure",
        "_failure_passed_on",
        "_function_returned",
        "_initiator",
        "_input",
        "_input_alias",
        "_input_origin",
        "_input_sent",
        "_input_sequence",
        "_observations",
        "_open_calls",
        "_replies",
        "_reply_sequence",
        "_started_at",
        "_tg",
        "_user_tasks",
        "_writers",
        "agent",
        "call_id",
        "context",
        "kwargs",
        "parent",
    )

    def __init__(
        self, agent: CalledAgent, kwargs: FrozenDict[str, Any], context: MiniAgents, owner: TaskOwner
    ) -> None:
        self.agent = agent
        self.kwargs = kwargs
        self.context = context
        self.call_id = next(_call_ids)
        self.parent: AgentCall | None = owner if isinstance(owner, AgentCall) else None
        self._accepts_children = False
        self._initiator = owner
        self._tg: TaskGroupLike | None = None
        self._cancel_requested = False
        self._failure: BaseException | None = None
        self._failure_passed_on = False
        self._function_returned = False
        self._user_tasks = 0
        self._writers: set[WriterLike] | None = None
        self._open_calls: dict[CallLike, None] | None = None
        self._started_at = time.time() if context._records_calls else 0.0

        self._input = SequenceBuilder(context, owner)
        self._input_sequence = MessageSequencePromise._from_buffer(self._input.buffer)
        # inquire(other_call_replies): the input *is* that sequence, shared instead of copied message by
        # message (a replay buffer serves any number of consumers).  Set while it is the only thing sent.
        self._input_alias: MessageSequencePromise | None = None
        # The sequence the alias views (another call's replies, say): the call's record shares its messages.
        self._input_origin: MessageSequencePromise | None = None
        self._input_sent = False
        self._replies = SequenceBuilder(context, self)
        self._replies.fail_owner_on_pump_error = True  # a failing reply source fails the call
        self._replies.fail_when_cancelled = False  # the call concludes its replies itself
        self._reply_sequence = MessageSequencePromise._from_buffer(self._replies.buffer)
        self._reply_sequence._call = self  # for `async with replies:` (CONCLUDED once the call ends)

        observers = context.observers
        # Before the task exists: an observer that raises keeps the call from starting.
        self._observations = tuple((o, o.call_started(self)) for o in observers) if observers else None
        owner._register_open_call(self)
        owner._spawn(self._run)

    # -- the caller's side ----------------------------------------------------------------------------------
    def send(self, messages: MessageType) -> AgentCall:
        """Send *messages* to the call's input (flattened, in order); return the call for chaining."""
        alias = self._input_alias
        if alias is not None:  # more input after a shared sequence: copy it after all, in order
            self._input_alias = self._input_origin = None
            self._input.send(alias)
        elif (
            not self._input_sent
            and isinstance(messages, MessageSequencePromise)
            and messages._buffer is not self._input.buffer  # (its own input: refused by the builder below)
            and self._input.open
            # Sent messages must pass the persistence hook: a sequence of this same context did already.
            and (not self.context._persists or messages._buffer._ledger is self.context._ledger)
        ):
            self._input_sent = True
            # A view of the same buffer: `ctx.messages` is only read, never the handle that scopes that call.
            self._input_alias = MessageSequencePromise._from_buffer(messages._buffer)
            self._input_origin = messages
            return self
        self._input_sent = True
        try:
            self._input.send(messages)
        except SequenceClosedError:
            raise SequenceClosedError(
                f"the input of the call to agent {self.agent.alias!r} is already finished"
            ) from None
        except SequenceCycleError as error:
            raise SequenceCycleError(
                f"the input of the call to agent {self.agent.alias!r}: {error}"
            ) from None
        return self

    def finish(self) -> None:
        """Finish the input: nothing more will be sent.  Idempotent."""
        self._input.finish()
        self._initiator._forget_open_call(self)

    def input_sequence(self) -> MessageSequencePromise:
        """The call's input as the agent sees it (``ctx.messages``)."""
        alias = self._input_alias
        if alias is not None:
            if not self._input.open:
                return alias  # finished: nothing else can follow the shared sequence
            # Still open: later sends must follow it, so copy it.
            self._input_alias = self._input_origin = None
            self._input.send(alias)
        return self._input_sequence

    def reply_sequence(self, finish_call: bool = True) -> MessageSequencePromise:
        """Return the replies; by default also :meth:`finish` the input (``finish_call=False`` for full duplex)."""
        if finish_call:
            self.finish()
        return self._reply_sequence

    def cancel(self) -> None:
        """Cancel the call and its children.

        Consumers get the replies made so far, then :class:`AgentCallCancelledError`.  Safe to call at any time,
        also before the call started (then no agent code runs) or after it finished (then nothing happens).
        """
        self._cancel_requested = True
        tg = self._tg
        if tg is not None:
            tg.cancel_scope.cancel()

    @property
    def done(self) -> bool:
        """Whether the call has finished (its reply sequence is complete)."""
        return self._replies.buffer.done

    async def __aenter__(self) -> AgentCall:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Leaving ``async with agent.initiate_call() as call:`` ends the call as leaving its replies' block does.

        The input is finished, the call is cancelled if it is still running and waited for; see
        :class:`~miniagents.MessageSequencePromise`.
        """
        self.finish()
        await self._reply_sequence.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"<AgentCall #{self.call_id} of {self.agent.alias!r}{' done' if self.done else ''}>"

    # -- TaskOwner ------------------------------------------------------------------------------------------
    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start an internal child task (pumps, sub-calls); falls back to the context once the call ended."""
        tg = self._tg
        if tg is not None and self._accepts_children:
            tg.start_soon(fn, *args)
        else:
            self.context._spawn(fn, *args)

    def _register_open_call(self, call: CallLike) -> None:
        """Remember a call this call started whose input is still open (finished when this agent returns)."""
        if self._open_calls is None:
            self._open_calls = {}
        self._open_calls[call] = None

    def _forget_open_call(self, call: CallLike) -> None:
        """Forget *call* once its input is finished."""
        if self._open_calls is not None:
            self._open_calls.pop(call, None)

    def _track_writer(self, writer: WriterLike) -> None:
        """Remember an open message writer, failed if still open when the call ends."""
        if self._writers is None:
            self._writers = set()
        self._writers.add(writer)

    def _untrack_writer(self, writer: WriterLike) -> None:
        """Forget a writer that finished or failed."""
        if self._writers is not None:
            self._writers.discard(writer)

    def _end_writer(self, writer: WriterLike, error: BaseException) -> None:
        """End a message this call was streaming when *error* stopped it.

        With ``errors_as_messages`` the message keeps the tokens it had (consumers then get the
        ``ErrorMessage`` after it, never an exception); otherwise it fails with *error*.
        """
        if self.context.errors_as_messages and not isinstance(error, (StopLoop, AgentCallCancelledError)):
            writer.close()
        else:
            writer.fail(error)

    def _start_child(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start a user child task; its exception fails the call."""
        if not self._accepts_children or self._tg is None:
            raise MiniAgentsError(
                f"the call to agent {self.agent.alias!r} has finished; it cannot start tasks"
            )
        self._user_tasks += 1
        self._tg.start_soon(self._guard_child, fn, args)

    async def _guard_child(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        # A child belongs to this call, whatever context it was started from (e.g. a nested block).
        current_context.set(self.context)
        current_call.set(self)
        try:
            await fn(*args)
        except Exception as exc:
            self._fail(exc)
        except BaseExceptionGroup as group:
            self._fail_with_group(group)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: the whole context stops
            self._fail(exc)
        finally:
            # Calls this call left with an open input are finished once no code of this call can send to
            # them any more: the agent function returned and its last child task ended.
            self._user_tasks -= 1
            if self._function_returned and not self._user_tasks:
                self._code_finished()

    def _fail_with_group(self, group: BaseExceptionGroup[BaseException]) -> None:
        """Fail with the non-cancellation part of *group*; re-raise the cancellation part (it is not ours).

        On trio, a task group cancelled while one of its tasks raises in ``finally`` raises
        ``BaseExceptionGroup([Cancelled, error])``: the error must fail this call, not escape into the task
        group of whoever started it.
        """
        cancelled, rest = group.split(anyio.get_cancelled_exc_class())
        if rest is not None:
            failures, fatal = rest.split(Exception)
            if fatal is not None:  # KeyboardInterrupt, SystemExit: the whole context stops, with the first
                self.context._fatal_error(_first_leaf(fatal))
            self._fail(failures if failures is not None else rest)
        if cancelled is not None:
            raise cancelled

    # -- running --------------------------------------------------------------------------------------------
    def chain(self) -> list[str]:
        """Return the aliases of the calls that led to this one, outermost first, ending with this agent."""
        aliases: list[str] = []
        call: AgentCall | None = self
        while call is not None:
            aliases.append(call.agent.alias)
            call = call.parent
        aliases.reverse()
        return aliases

    def _fail(self, error: BaseException, *, passed_on: bool = False) -> None:
        """Fail the call with *error* (the first failure wins) and cancel the rest of it.

        *passed_on*: the error already failed a buffer that recorded it (a forwarded sequence, a streamed
        reply), so the reply sequence passes it on without recording it as a new failure.
        """
        if not isinstance(error, Exception):
            self.context._fatal_error(error)  # KeyboardInterrupt, SystemExit: it stops the whole context
        if self._failure is None:
            if isinstance(error, (StopAsyncIteration, StopIteration)):
                error = _iteration_signal_failure(error, self)
            self._failure = error
            self._failure_passed_on = passed_on
            _annotate(error, self)
        tg = self._tg
        if tg is not None:
            tg.cancel_scope.cancel()

    async def _run(self) -> None:
        current_call.set(self)
        completed = False
        try:
            if self._cancel_requested:  # cancelled before it started: no agent code runs
                return
            if self._observations is not None:
                self._observe_running()
            # The call's task group is its cancel scope too: cancel() and failures cancel it.
            async with open_call_group(self.context._native_trio, self.context._spawn_in_calls_group) as tg:
                self._tg = tg
                self._accepts_children = True
                try:
                    await self.agent.func(InteractionContext(self), **self.kwargs)
                except Exception as exc:
                    self._fail(exc)
                except BaseExceptionGroup as group:
                    self._fail_with_group(group)
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:  # KeyboardInterrupt, SystemExit: the whole context stops
                    self._fail(exc)
                finally:
                    self._function_returned = True
                    if not self._user_tasks:
                        self._code_finished()
            # cancel() while the call ran: its consumers get AgentCallCancelledError (as documented), whether
            # or not the cancellation interrupted anything (trio's nursery does not raise when its last child
            # ends without reaching a checkpoint; asyncio's group does).
            completed = not self._cancel_requested
        finally:
            self._accepts_children = False
            self._tg = None
            self._conclude(cancelled=not completed)

    def _code_finished(self) -> None:
        """The agent function returned and its last child task ended: no code of this call runs any more.

        Nothing can send to the calls it left open or write to the sequences it opened, so both are
        finished now (a sequence still open fails: its consumers, and maybe this call's own replies, would
        otherwise wait forever).
        """
        open_calls = self._open_calls
        if open_calls:
            for call in list(open_calls):
                call.finish()
        writers = self._writers
        if writers:
            for writer in [w for w in writers if isinstance(w, MessageSequenceWriter)]:
                self._end_writer(
                    writer,
                    AgentCallCancelledError(
                        f"agent {self.agent.alias!r} returned without finishing a sequence it opened"
                    ),
                )

    def _conclude(self, *, cancelled: bool) -> None:
        """Close the reply sequence: the outcome, after salvaging what the replies had ready."""
        self._initiator._forget_open_call(self)  # nothing keeps a finished call alive...
        self._replies.detach()  # ...not even a reference cycle (freed by refcount, not by the collector)
        self._input.cancel_pumps()  # nothing feeds a finished call: stop the sources of its input
        failure = self._failure
        if self._writers:
            # Messages still streaming end with the call's own error, else as cancelled.
            unfinished = failure or AgentCallCancelledError(
                f"agent {self.agent.alias!r} ended without finishing this message"
            )
            for writer in list(self._writers):
                self._end_writer(writer, unfinished)
        replies = self._replies
        if cancelled and isinstance(failure, AgentCallCancelledError):
            failure = None  # a child's cancellation seen while this call was being cancelled anyway
        if failure is not None:
            if self.context.errors_as_messages and not isinstance(failure, StopLoop):
                replies.salvage()
                error_message = MessagePromise.resolved(
                    ErrorMessage(
                        content=f"{type(failure).__name__}: {failure}",
                        error_type=type(failure).__name__,
                        agent_alias=self.agent.alias,
                    )
                )
                ledger = replies.buffer._ledger
                if ledger is not None and not self._failure_passed_on:
                    # The failure counts until a consumer has read its ErrorMessage (wherever it went).
                    ledger.record(failure)
                    error_message._observes = (ledger, failure)
                replies._append(error_message)
                replies.buffer.close()
            else:
                replies.fail(failure, record=not self._failure_passed_on)
        elif cancelled:
            replies.fail(AgentCallCancelledError(f"the call to agent {self.agent.alias!r} was cancelled"))
        else:
            replies.buffer.close()
        self._reply_sequence._call = CONCLUDED
        if self.context._records_calls:
            self.context._record_call(self._record(failure, cancelled=cancelled))
        if self._observations is not None:
            self._observe_finished(_outcome(failure, cancelled=cancelled), failure)

    def _observe_running(self) -> None:
        assert self._observations is not None
        for observer, state in self._observations:
            try:
                observer.call_running(self, state)
            except Exception as exc:
                self.context._ledger.record_error(exc)

    def _observe_finished(self, outcome: CallOutcome, failure: BaseException | None) -> None:
        assert self._observations is not None
        for observer, state in self._observations:
            try:
                observer.call_finished(self, state, outcome, failure)
            except Exception as exc:
                self.context._ledger.record_error(exc)

    def statistics(self) -> CallStatistics:
        """Return a snapshot of the call: its ids, message counts so far and whether it is done."""
        input_buffer = (self._input_alias or self._input_sequence)._buffer
        return CallStatistics(
            call_id=self.call_id,
            agent_alias=self.agent.alias,
            parent_call_id=None if self.parent is None else self.parent.call_id,
            input_messages=len(input_buffer.pieces),
            reply_messages=len(self._replies.buffer.pieces),
            done=self.done,
        )

    def _record(self, failure: BaseException | None, *, cancelled: bool) -> CallRecord:
        outcome = _outcome(failure, cancelled=cancelled)
        return CallRecord(
            run_id=self.context.run_id,
            call_id=self.call_id,
            parent_call_id=None if self.parent is None else self.parent.call_id,
            agent_alias=self.agent.alias,
            kwargs=redact(self.kwargs),
            started_at=self._started_at,
            finished_at=time.time(),
            outcome=outcome,
            error_type=None if failure is None else type(failure).__name__,
            error=None if failure is None else f"{type(failure).__name__}: {failure}",
            input_messages=_recorded_messages(self._input_origin or self._input_sequence),
            reply_messages=_recorded_messages(self._reply_sequence),
        )


@attrs.frozen
class CallStatistics:
    """A snapshot of one call, from :meth:`AgentCall.statistics`.

    ``input_messages`` and ``reply_messages`` count the items of the input and the replies so far (a message
    still streaming counts once).
    """

    call_id: int
    agent_alias: str
    parent_call_id: int | None
    input_messages: int
    reply_messages: int
    done: bool


def _outcome(failure: BaseException | None, *, cancelled: bool) -> CallOutcome:
    return "failed" if failure is not None else ("cancelled" if cancelled else "completed")


def _recorded_messages(sequence: MessageSequencePromise) -> tuple[Message, ...]:
    """The messages of *sequence* for a call record.

    A sequence that ended cleanly gives the tuple awaiting it returns, kept on it (``_settled``): a call's
    replies are often the next call's input, and both records then share one tuple, which the store's writer
    recognises by identity.  Otherwise the messages resolved so far.
    """
    whole = sequence._settled()
    return whole if whole is not None else _resolved_messages(sequence._buffer.pieces)


def _resolved_messages(items: list[Message | MessagePromise]) -> tuple[Message, ...]:
    result: list[Message] = []
    for item in items:
        if isinstance(item, Message):
            result.append(item)
        elif item._message is not None:
            result.append(item._message)
    return tuple(result)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _iteration_signal_failure(error: BaseException, call: AgentCall) -> RuntimeError:
    """The failure a ``StopAsyncIteration`` / ``StopIteration`` escaping an agent becomes (as PEP 479 does).

    Raised from a consumer's ``async for`` as it is, it would look like the normal end of the replies: a
    silently truncated result.  The original is the ``__cause__``.
    """
    failure = RuntimeError(
        f"agent {call.agent.alias!r} raised {type(error).__name__}, which would end its consumers' iteration "
        "as if its replies were complete"
    )
    failure.__cause__ = error
    failure.__traceback__ = error.__traceback__
    return failure


def _annotate(error: BaseException, call: AgentCall) -> None:
    notes = getattr(error, "__notes__", None)
    if notes and any(isinstance(n, str) and n.startswith(_NOTE_PREFIX) for n in notes):
        return
    note = f"{_NOTE_PREFIX}raised in agent {call.agent.alias!r} (call chain: {' -> '.join(call.chain())})"
    if hasattr(error, "add_note"):
        error.add_note(note)
    else:  # pragma: no cover - Python 3.10
        error.__notes__ = [*(notes or ()), note]  # type: ignore[attr-defined]
