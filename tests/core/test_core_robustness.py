"""Core robustness: failures are never lost, never hang or leak, and keep their meaning on the way out.

Each section names the behaviour it specifies; every async test runs on trio and on asyncio.  Hangs are guarded
by ``anyio.fail_after(HANG)``, which only detects a hang: no assertion depends on timing.
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import traceback
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from miniagents import (
    AgentCall,
    AgentCallCancelledError,
    CallOutcome,
    CallRecord,
    ErrorMessage,
    InteractionContext,
    MessagePromise,
    MessageSequencePromise,
    MiniAgent,
    MiniAgents,
    MiniAgentsError,
    SequenceCycleError,
    StreamedPromise,
    TextMessage,
    miniagent,
)

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

pytestmark = pytest.mark.anyio

#: Seconds after which a test is considered hung (a hang detector, never a timing assertion).
HANG = 10

PROPERTY = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)


class Boom(Exception):
    """The error the test agents raise."""


async def collect(replies: MessageSequencePromise) -> tuple[list[str], BaseException | None]:
    """Read *replies* to the end: the contents seen, and the error that ended them (``None``: none)."""
    seen: list[str] = []
    try:
        async for message in replies:
            seen.append(str(message))
    except Exception as error:
        return seen, error
    return seen, None


async def wait_done(call: AgentCall) -> None:
    """Wait, without reading its replies (that would observe its failure), until *call* has ended."""
    while not call.done:
        await anyio.lowlevel.checkpoint()


class Outcomes:
    """A call observer that records each call's outcome by agent alias (and the calls still running)."""

    def __init__(self) -> None:
        self.finished: dict[str, tuple[CallOutcome, str | None]] = {}
        self.running: set[str] = set()

    def call_started(self, call: AgentCall) -> None:
        return None

    def call_running(self, call: AgentCall, state: object) -> None:
        self.running.add(call.agent.alias)

    def call_finished(
        self, call: AgentCall, state: object, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        self.running.discard(call.agent.alias)
        self.finished[call.agent.alias] = (outcome, None if error is None else type(error).__name__)


class FinishedCounter:
    """A call observer that counts the calls that have ended (it keeps no reference to them)."""

    def __init__(self) -> None:
        self.count = 0

    def call_started(self, call: AgentCall) -> None:
        return None

    def call_running(self, call: AgentCall, state: object) -> None:
        return None

    def call_finished(
        self, call: AgentCall, state: object, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        self.count += 1


# == 1. StopAsyncIteration / StopIteration escaping an agent is a failure, not the end of its replies ==========

SIGNALS = [StopAsyncIteration, StopIteration]


def described(error: BaseException) -> str:
    """The error's message and notes: where the runtime names the agent a failure comes from."""
    return "\n".join([str(error), *getattr(error, "__notes__", ())])


def _signal_agent(signal: type[BaseException], raised: list[BaseException], *, in_child: bool) -> MiniAgent:
    async def raise_signal() -> None:
        error = signal("iteration signal")
        raised.append(error)
        raise error

    async def signalling(ctx: InteractionContext) -> None:
        ctx.reply("before")
        ctx.reply_out_of_order("also before")
        if in_child:
            ctx.start_soon(raise_signal)
            await anyio.sleep_forever()  # the child's failure cancels this
        await raise_signal()

    return miniagent(alias=f"signalling_{signal.__name__}")(signalling)


@pytest.mark.parametrize("in_child", [False, True], ids=["in_function", "in_child_task"])
async def test_stop_async_iteration_escaping_an_agent_fails_the_call_with_a_runtime_error_naming_both(
    in_child: bool,
) -> None:
    raised: list[BaseException] = []
    agent = _signal_agent(StopAsyncIteration, raised, in_child=in_child)
    with anyio.fail_after(HANG):
        async with MiniAgents():
            replies = agent.inquire()
            seen, error = await collect(replies)
            with pytest.raises(RuntimeError) as awaited:
                await replies
    assert seen == ["before", "also before"]
    assert type(error) is RuntimeError
    assert awaited.value is error
    assert agent.alias in str(error) and "StopAsyncIteration" in str(error)
    assert error.__cause__ is raised[0]


@pytest.mark.parametrize("in_child", [False, True], ids=["in_function", "in_child_task"])
async def test_stop_iteration_raised_in_agent_code_fails_the_call_with_a_runtime_error(
    in_child: bool,
) -> None:
    # Python itself turns a StopIteration leaving a coroutine into RuntimeError("coroutine raised
    # StopIteration") (PEP 479): the runtime gets that error, and names the agent in its note.
    raised: list[BaseException] = []
    agent = _signal_agent(StopIteration, raised, in_child=in_child)
    with anyio.fail_after(HANG):
        async with MiniAgents():
            seen, error = await collect(agent.inquire())
    assert seen == ["before", "also before"]
    assert type(error) is RuntimeError
    assert "StopIteration" in str(error) and agent.alias in described(error)
    assert error.__cause__ is raised[0]


async def test_a_start_soon_callable_raising_stop_iteration_fails_the_call_with_a_runtime_error() -> None:
    exhausted: Iterator[Any] = iter(())

    def not_a_coroutine() -> Coroutine[Any, Any, None]:
        return next(exhausted)  # raises StopIteration, in the runtime's task

    @miniagent
    async def starts_a_bad_child(ctx: InteractionContext) -> None:
        ctx.reply("before")
        ctx.start_soon(not_a_coroutine)
        await anyio.sleep_forever()

    with anyio.fail_after(HANG):
        async with MiniAgents():
            seen, error = await collect(starts_a_bad_child.inquire())
    assert seen == ["before"]
    assert type(error) is RuntimeError
    assert "starts_a_bad_child" in str(error) and "StopIteration" in str(error)
    assert type(error.__cause__) is StopIteration


@pytest.mark.parametrize("signal", SIGNALS)
async def test_a_forwarding_agent_fails_too_when_the_call_it_forwards_raised_an_iteration_signal(
    signal: type[BaseException],
) -> None:
    raised: list[BaseException] = []
    inner = _signal_agent(signal, raised, in_child=False)

    @miniagent
    async def forwarding(ctx: InteractionContext) -> None:
        ctx.reply(inner.inquire())
        ctx.reply("after the forwarded replies")

    with anyio.fail_after(HANG):
        async with MiniAgents():
            seen, error = await collect(forwarding.inquire())
    # The forwarded replies come, then the failure: the later reply is not delivered after a silent "end".
    assert seen == ["before", "also before"]
    assert type(error) is RuntimeError
    assert inner.alias in described(error) and error.__cause__ is raised[0]


@pytest.mark.parametrize("signal", SIGNALS)
async def test_an_unobserved_iteration_signal_failure_is_raised_when_the_block_exits(
    signal: type[BaseException],
) -> None:
    raised: list[BaseException] = []
    agent = _signal_agent(signal, raised, in_child=False)
    records: list[CallRecord] = []
    with anyio.fail_after(HANG), pytest.raises(RuntimeError) as exit_error:
        async with MiniAgents(on_call_finished=records.append):
            agent.inquire()
    assert exit_error.type is RuntimeError
    assert exit_error.value.__cause__ is raised[0]
    assert [(r.agent_alias, r.outcome, r.error_type) for r in records] == [
        (agent.alias, "failed", "RuntimeError")
    ]


# == 2. An agent replying its own reply sequence is refused at once ==========================================


def _replying_own_replies(how: str, caught: list[BaseException]) -> MiniAgent:
    async def self_replying(ctx: InteractionContext) -> None:
        ctx.reply("before")
        own = ctx.call.reply_sequence(finish_call=False)
        try:
            if how == "reply":
                ctx.reply(own)
            elif how == "in_a_list":
                ctx.reply([own])
            else:
                ctx.reply_out_of_order(own)
        except BaseException as error:
            caught.append(error)
            raise

    return miniagent(alias=f"self_replying_{how}")(self_replying)


@pytest.mark.parametrize("how", ["reply", "in_a_list", "reply_out_of_order"])
async def test_an_agent_replying_its_own_replies_raises_sequence_cycle_error_at_once(how: str) -> None:
    caught: list[BaseException] = []
    agent = _replying_own_replies(how, caught)
    with anyio.fail_after(HANG):
        async with MiniAgents():
            seen, error = await collect(agent.inquire())
    assert len(caught) == 1 and caught[0] is error
    assert isinstance(error, SequenceCycleError)
    assert isinstance(error, MiniAgentsError) and isinstance(error, ValueError)
    assert agent.alias in str(error)
    assert seen == ["before"]


async def test_a_call_fed_its_own_input_sequence_raises_sequence_cycle_error_at_once() -> None:
    @miniagent
    async def echo(ctx: InteractionContext) -> None:
        ctx.reply(ctx.messages)

    with anyio.fail_after(HANG):
        async with MiniAgents():
            call = echo.initiate_call()
            call.send("first")
            with pytest.raises(SequenceCycleError) as refused:
                call.send(call.input_sequence())
            call.send("second")
            seen, error = await collect(call.reply_sequence())
    assert "echo" in str(refused.value)
    assert (seen, error) == (["first", "second"], None)


async def test_a_call_whose_first_input_is_its_own_input_sequence_raises_sequence_cycle_error() -> None:
    @miniagent
    async def echo(ctx: InteractionContext) -> None:
        ctx.reply(ctx.messages)

    with anyio.fail_after(HANG):
        async with MiniAgents():
            call = echo.initiate_call()
            with pytest.raises(SequenceCycleError) as refused:
                call.send(call.input_sequence())
            seen, error = await collect(call.reply_sequence())
    assert "echo" in str(refused.value)
    assert (seen, error) == ([], None)


# == 3. Writers the block's body left open are ended when it exits; finished ones and streams are untouched ==


def _reader(kind: str, got: list[str], streamed: StreamedPromise[str, Any] | None = None) -> MiniAgent:
    """An agent that reads what it is handed (its input, or *streamed*) piece by piece into *got*."""

    async def read(ctx: InteractionContext) -> None:
        try:
            if kind == "message":
                async for promise in ctx.messages.promises():
                    async for token in promise:
                        got.append(token)
                    await promise
            elif kind == "sequence":
                async for message in ctx.messages:
                    got.append(str(message))
            else:
                assert streamed is not None
                async for piece in streamed:
                    got.append(piece)
        except AgentCallCancelledError:
            got.append("<cancelled>")
        else:
            got.append("<end>")

    return miniagent(alias=f"read_{kind}")(read)


def _open_and_hand_over(kind: str, sent: list[str], *, finish: bool, got: list[str]) -> object:
    """Open a writer of *kind* outside any call, send *sent*, hand its promise to a reader agent."""
    if kind == "message":
        promise, message_writer = MessagePromise.open()
        for token in sent:
            message_writer.send(token)
        if finish:
            message_writer.finish()
        _reader(kind, got).inquire(promise)
        return promise
    if kind == "sequence":
        sequence, sequence_writer = MessageSequencePromise.open()
        for text in sent:
            sequence_writer.send(text)
        if finish:
            sequence_writer.finish()
        _reader(kind, got).inquire(sequence)
        return sequence
    streamed, stream_writer = StreamedPromise[str, tuple[str, ...]].open(tuple)
    for piece in sent:
        stream_writer.send(piece)
    if finish:
        stream_writer.close()
    _reader(kind, got, streamed).inquire()
    return streamed


KINDS = ["message", "sequence", "streamed"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_writer_left_open_by_the_block_body_is_failed_at_exit_after_what_it_sent(kind: str) -> None:
    got: list[str] = []
    with anyio.fail_after(HANG):
        async with MiniAgents():
            _open_and_hand_over(kind, ["a", "b"], finish=False, got=got)
    assert got == ["a", "b", "<cancelled>"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_writer_left_open_in_an_attach_block_is_failed_when_the_context_exits(kind: str) -> None:
    got: list[str] = []
    ma = MiniAgents()
    handed_over = anyio.Event()
    go = anyio.Event()

    async def request_handler() -> None:  # a task of its own, started before the context was entered
        await go.wait()
        with ma.attach():
            _open_and_hand_over(kind, ["a"], finish=False, got=got)
        handed_over.set()

    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(request_handler)
            async with ma:
                go.set()
                await handed_over.wait()
    assert got == ["a", "<cancelled>"]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_finished_writer_is_untouched_by_the_block_exit(kind: str) -> None:
    got: list[str] = []
    with anyio.fail_after(HANG):
        async with MiniAgents():
            promise = _open_and_hand_over(kind, ["a", "b"], finish=True, got=got)
    assert got == ["a", "b", "<end>"]
    whole = await promise  # type: ignore[misc]
    if kind == "message":
        assert whole == TextMessage("ab")
    elif kind == "sequence":
        assert [str(m) for m in whole] == ["a", "b"]
    else:
        assert whole == ("a", "b")


async def test_a_message_streamed_from_an_async_generator_at_block_level_is_not_cut_short_by_the_exit() -> (
    None
):
    async def tokens() -> AsyncIterator[str]:
        for token in ["to", "ken", "s"]:
            await anyio.lowlevel.checkpoint()
            yield token

    got: list[str] = []
    with anyio.fail_after(HANG):
        async with MiniAgents():
            streamed = TextMessage.stream(tokens())
            _reader("message", got).inquire(streamed)
            assert not streamed.done  # the body ends before the stream does
        assert streamed.done  # the block waited for the stream's pump
    assert got == ["to", "ken", "s", "<end>"]
    assert await streamed == TextMessage("tokens")


async def test_a_long_lived_context_forgets_the_writers_that_were_finished() -> None:
    left_open: list[MessagePromise] = []
    with anyio.fail_after(HANG):
        async with MiniAgents() as ma:
            for _ in range(10):
                left_open.append(MessagePromise.open()[0])
            for i in range(10_000):
                if i % 3 == 0:
                    _, message_writer = MessagePromise.open()
                    message_writer.send("x")
                    message_writer.finish()
                elif i % 3 == 1:
                    _, sequence_writer = MessageSequencePromise.open()
                    sequence_writer.send("x")
                    sequence_writer.finish()
                else:
                    _, stream_writer = StreamedPromise[str, tuple[str, ...]].open(tuple)
                    stream_writer.send("x")
                    stream_writer.close()
            tracked = len(ma._block_writers)  # read-only introspection: what the context still holds
    assert tracked < 200, f"the context still tracks {tracked} writers after 10,000 were finished"
    for promise in left_open:  # the ones left open were still ended at exit
        with pytest.raises(AgentCallCancelledError):
            await promise


@PROPERTY
@given(
    writers=st.lists(
        st.tuples(
            st.sampled_from(KINDS),
            st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
            st.booleans(),
            st.integers(0, 3),
        ),
        min_size=1,
        max_size=6,
    )
)
async def test_property_at_exit_open_writers_fail_after_what_they_sent_and_finished_ones_complete(
    writers: list[tuple[str, list[str], bool, int]],
) -> None:
    seen: list[list[str]] = [[] for _ in writers]
    with anyio.fail_after(HANG):
        async with MiniAgents():
            for (kind, sent, finish, checkpoints), got in zip(writers, seen, strict=True):
                _open_and_hand_over(kind, sent, finish=finish, got=got)
                for _ in range(checkpoints):  # the readers may or may not have read it all before the exit
                    await anyio.lowlevel.checkpoint()
    for (_, sent, finish, _), got in zip(writers, seen, strict=True):
        assert got == [*sent, "<end>" if finish else "<cancelled>"]


# == 4. errors_as_messages: a failure nobody read is raised at exit; reading its ErrorMessage observes it ====


@miniagent
async def fails_with_boom(ctx: InteractionContext) -> None:
    ctx.reply("partial")
    raise Boom("boom")


@miniagent
async def forwards_the_failing_call(ctx: InteractionContext) -> None:
    ctx.reply(fails_with_boom.inquire())


async def _consume(replies: MessageSequencePromise, how: str) -> list[str]:
    """Read *replies* as a consumer would, in one of several ways; return what it read."""
    seen: list[str] = []
    if how == "read_all":
        seen = [str(m) async for m in replies]
    elif how == "break_at_error_message":
        async for message in replies:
            seen.append(str(message))
            if isinstance(message, ErrorMessage):
                break
    elif how == "break_before_error_message":
        async for message in replies:
            seen.append(str(message))
            break
    elif how == "promises":
        async for promise in replies.promises():
            seen.append(str(await promise))
    elif how == "promises_break_at_error_message":
        async for promise in replies.promises():
            message = await promise
            seen.append(str(message))
            if isinstance(message, ErrorMessage):
                break
    elif how == "await":
        seen = [str(m) for m in await replies]
    else:
        assert how == "none"
    return seen


OBSERVING = ["read_all", "break_at_error_message", "promises", "promises_break_at_error_message", "await"]


async def test_with_errors_as_messages_a_failure_nobody_reads_is_counted_then_raised_at_exit() -> None:
    async def leave_it_unread() -> None:
        async with MiniAgents(errors_as_messages=True) as ma:
            call = fails_with_boom.initiate_call()
            call.finish()
            await wait_done(call)
            assert ma.statistics().unobserved_errors == 1

    with anyio.fail_after(HANG), pytest.raises(Boom) as exit_error:
        await leave_it_unread()
    assert exit_error.type is Boom and str(exit_error.value) == "boom"


async def test_with_errors_as_messages_reading_only_the_messages_before_the_error_message_does_not_observe_it() -> (
    None
):
    async def read_up_to_the_error_message() -> None:
        async with MiniAgents(errors_as_messages=True) as ma:
            call = fails_with_boom.initiate_call()
            replies = call.reply_sequence()
            await wait_done(call)
            assert await _consume(replies, "break_before_error_message") == ["partial"]
            assert ma.statistics().unobserved_errors == 1

    with anyio.fail_after(HANG), pytest.raises(Boom):
        await read_up_to_the_error_message()


@pytest.mark.parametrize("how", OBSERVING)
async def test_with_errors_as_messages_a_consumer_that_read_the_error_message_observed_it(how: str) -> None:
    with anyio.fail_after(HANG):
        async with MiniAgents(errors_as_messages=True) as ma:
            seen = await _consume(fails_with_boom.inquire(), how)
            assert ma.statistics().unobserved_errors == 0
    assert seen == ["partial", "Boom: boom"]


async def test_with_errors_as_messages_a_forwarded_error_message_is_observed_where_it_is_read() -> None:
    with anyio.fail_after(HANG):
        async with MiniAgents(errors_as_messages=True) as ma:
            call = forwards_the_failing_call.initiate_call()
            replies = call.reply_sequence()
            await wait_done(call)
            # Forwarding is not reading: the failure still counts until a consumer of the forwarder reads it.
            assert ma.statistics().unobserved_errors == 1
            messages = await replies
            assert ma.statistics().unobserved_errors == 0
    assert [str(m) for m in messages] == ["partial", "Boom: boom"]
    assert isinstance(messages[-1], ErrorMessage) and messages[-1].agent_alias == "fails_with_boom"


async def test_with_errors_as_messages_a_forwarded_error_message_nobody_reads_is_raised_at_exit() -> None:
    async def forward_and_leave_unread() -> None:
        async with MiniAgents(errors_as_messages=True):
            call = forwards_the_failing_call.initiate_call()
            call.reply_sequence()
            await wait_done(call)

    with anyio.fail_after(HANG), pytest.raises(Boom, match="boom"):
        await forward_and_leave_unread()


@PROPERTY
@given(
    consumers=st.lists(
        st.tuples(st.sampled_from([*OBSERVING, "none", "break_before_error_message"]), st.integers(0, 3)),
        min_size=1,
        max_size=5,
    )
)
async def test_property_with_errors_as_messages_exactly_the_unread_failures_are_raised_at_exit(
    consumers: list[tuple[str, int]],
) -> None:
    @miniagent
    async def fails_numbered(ctx: InteractionContext, number: int, pause: int) -> None:
        ctx.reply(f"partial {number}")
        for _ in range(pause):
            await anyio.lowlevel.checkpoint()
        raise Boom(f"boom {number}")

    not_read = ("none", "break_before_error_message")
    unread = sorted(f"boom {n}" for n, (how, _) in enumerate(consumers) if how in not_read)
    finished = FinishedCounter()
    exit_error: BaseException | None = None
    with anyio.fail_after(HANG):
        try:
            async with MiniAgents(errors_as_messages=True, call_observers=[finished]) as ma:
                async with anyio.create_task_group() as tg:
                    for number, (how, pause) in enumerate(consumers):
                        tg.start_soon(_consume, fails_numbered.inquire(number=number, pause=pause), how)
                while finished.count < len(consumers):
                    await anyio.lowlevel.checkpoint()
                assert ma.statistics().unobserved_errors == len(unread)
        except Exception as error:
            exit_error = error
    if exit_error is None:
        raised = []
    elif isinstance(exit_error, ExceptionGroup):  # several: in one group
        raised = sorted(str(e) for e in exit_error.exceptions)
        assert all(type(e) is Boom for e in exit_error.exceptions), exit_error
    else:
        raised = [str(exit_error)]
        assert type(exit_error) is Boom and len(unread) == 1, exit_error
    assert raised == unread


# == 5. KeyboardInterrupt / SystemExit in an agent stop the whole context and come out bare ==================

FATALS = {"KeyboardInterrupt": lambda: KeyboardInterrupt(), "SystemExit": lambda: SystemExit(3)}
FATAL_SITES = ["function", "child_task", "replied_async_generator", "nested_five_deep", "grouped"]


def _fatal_agent(make: Any, site: str) -> MiniAgent:
    """An agent that replies once, then has *make()* raised at *site*."""

    async def raise_fatal() -> None:
        error = make()
        if site == "grouped":
            raise BaseExceptionGroup("g", [ValueError("alongside"), error])
        raise error

    async def fatal_source() -> AsyncIterator[str]:
        yield "from the source"
        await anyio.lowlevel.checkpoint()
        await raise_fatal()

    @miniagent
    async def fatal(ctx: InteractionContext, depth: int = 0) -> None:
        ctx.reply(f"depth {depth}")
        if site == "nested_five_deep" and depth < 5:
            ctx.reply(fatal.inquire(depth=depth + 1))
            await anyio.sleep_forever()
        elif site == "child_task":
            ctx.start_soon(raise_fatal)
            await anyio.sleep_forever()
        elif site == "replied_async_generator":
            ctx.reply(fatal_source())
        else:
            await anyio.lowlevel.checkpoint()
            await raise_fatal()

    return fatal


@miniagent
async def sleeps_until_cancelled(ctx: InteractionContext) -> None:
    ctx.reply("asleep")
    await anyio.sleep_forever()


@pytest.mark.parametrize("site", FATAL_SITES)
@pytest.mark.parametrize("fatal", list(FATALS))
async def test_a_keyboard_interrupt_or_system_exit_in_an_agent_comes_out_of_the_block_bare(
    fatal: str, site: str
) -> None:
    outcomes = Outcomes()
    body_cancelled = False

    async def block_with_a_fatal_agent() -> None:
        nonlocal body_cancelled
        async with MiniAgents(call_observers=[outcomes]):
            sleeps_until_cancelled.inquire()
            _fatal_agent(FATALS[fatal], site).inquire()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                body_cancelled = True
                raise

    with anyio.fail_after(HANG), pytest.raises((KeyboardInterrupt, SystemExit)) as escaped:
        await block_with_a_fatal_agent()
    assert escaped.type.__name__ == fatal, escaped.value  # the exact type: not a group, not a wrapper
    if isinstance(escaped.value, SystemExit):
        assert escaped.value.code == 3
    assert body_cancelled
    assert outcomes.running == set()
    assert outcomes.finished["sleeps_until_cancelled"] == ("cancelled", None)


async def test_except_keyboard_interrupt_catches_an_interrupt_raised_in_an_agent() -> None:
    caught = False
    with anyio.fail_after(HANG):
        try:
            async with MiniAgents():
                await _fatal_agent(FATALS["KeyboardInterrupt"], "function").inquire()
        except KeyboardInterrupt:
            caught = True
    assert caught


SYSTEM_EXIT_SCRIPT = """
import sys

import anyio

from miniagents import InteractionContext, MiniAgents, miniagent


@miniagent
async def exits(ctx: InteractionContext) -> None:
    ctx.reply("bye")
    await anyio.lowlevel.checkpoint()
    sys.exit(3)


@miniagent
async def sleeps(ctx: InteractionContext) -> None:
    await anyio.sleep_forever()


async def main() -> None:
    sleeps.inquire()
    replies = exits.inquire()
    if sys.argv[2] == "reads":
        await replies
    await anyio.sleep_forever()


MiniAgents().run(main, backend=sys.argv[1])
print("not reached")
"""


@pytest.mark.parametrize("main_reads", [True, False], ids=["main_awaits_the_replies", "main_sleeps"])
async def test_sys_exit_in_an_agent_ends_a_real_process_with_its_status(
    anyio_backend: str, main_reads: bool
) -> None:
    # A hang detector for a fresh interpreter (imports included) on a shared machine: generous on purpose.
    with anyio.fail_after(6 * HANG):
        result = await anyio.run_process(
            [sys.executable, "-c", SYSTEM_EXIT_SCRIPT, anyio_backend, "reads" if main_reads else "sleeps"],
            check=False,
        )
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr
    assert b"not reached" not in result.stdout
    assert "Task exception was never retrieved" not in stderr
    assert "unhandled exception during asyncio.run() shutdown" not in stderr


# == 6. An unobserved failure keeps nothing of its call alive; its traceback survives as a note ==============


class Held:
    """Something an agent holds in a local variable."""


def _fail_while_handling_a_key_error() -> None:
    try:
        _ = dict[str, int]()["missing"]
    except KeyError:
        raise Boom("failed while handling a KeyError")  # noqa: B904  # the KeyError is its __context__


REPORT_NOTE = "miniagents: the failure, as it was raised"


def _holding_agent(refs: list[weakref.ref[Held]]) -> MiniAgent:
    @miniagent
    async def holds_and_fails(ctx: InteractionContext) -> None:
        held = Held()
        refs.append(weakref.ref(held))
        ctx.reply("partial")
        await anyio.lowlevel.checkpoint()
        _fail_while_handling_a_key_error()

    return holds_and_fails


async def test_unobserved_failures_do_not_keep_what_their_agents_held_alive() -> None:
    refs: list[weakref.ref[Held]] = []
    agent = _holding_agent(refs)
    finished = FinishedCounter()

    async def fail_200_calls_nobody_reads() -> None:
        async with MiniAgents(call_observers=[finished]) as ma:
            for _ in range(200):
                agent.inquire()  # nobody keeps the replies
            while finished.count < 200:
                await anyio.lowlevel.checkpoint()
            # A call's task ends just after its replies did, and anyio's asyncio task group forgets a finished
            # task in a done callback, a loop iteration later: give them a few rounds (a leak stays forever).
            for _ in range(10):
                gc.collect()
                alive = sum(ref() is not None for ref in refs)
                if not alive:
                    break
                await anyio.lowlevel.checkpoint()
            assert len(refs) == 200
            assert alive == 0, f"{alive} of 200 objects held by failed agents are still alive"
            assert ma.statistics().unobserved_errors == 200

    with anyio.fail_after(HANG), pytest.raises(ExceptionGroup) as exit_error:
        await fail_200_calls_nobody_reads()
    errors = exit_error.value.exceptions
    assert len(errors) == 200 and all(type(e) is Boom for e in errors)


async def test_an_unobserved_failure_raised_at_exit_carries_its_formatted_traceback_as_a_note() -> None:
    agent = _holding_agent([])

    async def leave_it_unobserved() -> None:
        async with MiniAgents():
            agent.inquire()

    with anyio.fail_after(HANG), pytest.raises(Boom) as exit_error:
        await leave_it_unobserved()
    reports = [n for n in getattr(exit_error.value, "__notes__", ()) if n.startswith(REPORT_NOTE)]
    assert len(reports) == 1
    report = reports[0]
    assert "holds_and_fails" in report and "_fail_while_handling_a_key_error" in report
    assert "Boom: failed while handling a KeyError" in report
    assert "KeyError: 'missing'" in report  # the __context__ chain
    assert "During handling of the above exception, another exception occurred" in report


async def test_a_failure_observed_later_through_kept_replies_has_its_real_traceback() -> None:
    agent = _holding_agent([])
    with anyio.fail_after(HANG):
        async with MiniAgents():
            call = agent.initiate_call()
            replies = call.reply_sequence()
            await wait_done(call)
            gc.collect()
            seen, error = await collect(replies)
    assert seen == ["partial"] and isinstance(error, Boom)
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert "holds_and_fails" in frames and "_fail_while_handling_a_key_error" in frames
    context = error.__context__
    assert isinstance(context, KeyError) and context.__traceback__ is not None
    assert "_fail_while_handling_a_key_error" in [f.name for f in traceback.extract_tb(context.__traceback__)]
    assert not any(n.startswith(REPORT_NOTE) for n in getattr(error, "__notes__", ()))


async def test_take_unobserved_errors_returns_and_removes_them_and_keeps_recent_ones_with_older_than() -> (
    None
):
    agent = _holding_agent([])
    with anyio.fail_after(HANG):
        async with MiniAgents() as ma:
            call = agent.initiate_call()
            call.finish()
            await wait_done(call)
            assert ma.take_unobserved_errors(older_than=3600.0) == []  # recent: kept
            assert ma.statistics().unobserved_errors == 1
            with pytest.raises(ValueError, match="older_than"):
                ma.take_unobserved_errors(older_than=-1.0)
            taken = ma.take_unobserved_errors()
            assert ma.statistics().unobserved_errors == 0
            assert ma.take_unobserved_errors() == []
    # Nothing is raised at exit: the error was taken.
    assert [type(e) for e in taken] == [Boom]
    reports = [n for n in getattr(taken[0], "__notes__", ()) if n.startswith(REPORT_NOTE)]
    assert len(reports) == 1 and "_fail_while_handling_a_key_error" in reports[0]


# == 7. An out-of-order item already produced is not overtaken by an ordered reply sent after it ===========


def _produces_at_once(items: list[str], produced: list[str]) -> AsyncIterator[str]:
    async def source() -> AsyncIterator[str]:
        for item in items:
            await anyio.lowlevel.checkpoint()
            # No checkpoint between this line and the item being staged by the runtime.
            produced.append(item)
            yield item

    return source()


async def test_an_out_of_order_item_already_produced_comes_before_a_later_ordered_reply() -> None:
    produced: list[str] = []

    @miniagent
    async def mixes(ctx: InteractionContext) -> None:
        ctx.reply_out_of_order(_produces_at_once(["out of order"], produced))
        while not produced:
            await anyio.lowlevel.checkpoint()
        ctx.reply("ordered")

    with anyio.fail_after(HANG):
        async with MiniAgents():
            seen, error = await collect(mixes.inquire())
    assert (seen, error) == (["out of order", "ordered"], None)


@PROPERTY
@given(
    sources=st.lists(st.lists(st.text("xyz", min_size=1, max_size=2), min_size=1, max_size=3), max_size=4),
    extra_checkpoints=st.integers(0, 3),
    ready_ordered_first=st.booleans(),
)
async def test_property_out_of_order_items_produced_before_an_ordered_reply_precede_it(
    sources: list[list[str]], extra_checkpoints: int, ready_ordered_first: bool
) -> None:
    labelled = [[f"s{n}:{item}" for item in items] for n, items in enumerate(sources)]
    produced: list[str] = []

    @miniagent
    async def mixes(ctx: InteractionContext) -> None:
        if ready_ordered_first:
            ctx.reply("first")
        for items in labelled:
            ctx.reply_out_of_order(_produces_at_once(items, produced))
        while len(produced) < sum(map(len, labelled)):
            await anyio.lowlevel.checkpoint()
        for _ in range(extra_checkpoints):
            await anyio.lowlevel.checkpoint()
        ctx.reply("ordered")

    with anyio.fail_after(HANG):
        async with MiniAgents():
            seen, error = await collect(mixes.inquire())
    assert error is None
    assert seen[-1] == "ordered"
    body = seen[1:-1] if ready_ordered_first else seen[:-1]
    assert sorted(body) == sorted(produced)
    for items in labelled:  # each source's items keep their order
        assert [s for s in body if s in items] == items


async def test_twenty_thousand_out_of_order_replies_each_arrive_exactly_once() -> None:
    count = 20_000

    async def one(number: int) -> AsyncIterator[str]:
        await anyio.lowlevel.checkpoint()
        yield str(number)

    @miniagent
    async def fans_out(ctx: InteractionContext) -> None:
        for number in range(count):
            ctx.reply_out_of_order(one(number))

    with anyio.fail_after(6 * HANG):  # a hang detector for 20,000 tasks on a shared machine
        async with MiniAgents():
            seen, error = await collect(fans_out.inquire())
    assert error is None
    assert len(seen) == count
    assert Counter(seen) == Counter(str(n) for n in range(count))


# == 8. A block cancelled from outside lets the cancellation through and logs what nobody observed =========


async def _fail_unobserved(outcomes: Outcomes) -> None:
    call = fails_with_boom.initiate_call()
    call.finish()
    await wait_done(call)
    assert outcomes.finished["fails_with_boom"] == ("failed", "Boom")


def _logged_booms(caplog: pytest.LogCaptureFixture) -> list[BaseException]:
    return [
        r.exc_info[1]
        for r in caplog.records
        if r.name == "miniagents"
        and r.levelno == logging.ERROR
        and r.exc_info
        and isinstance(r.exc_info[1], Boom)
    ]


async def test_fail_after_around_a_block_with_an_unobserved_error_raises_timeout_error_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="miniagents")
    outcomes = Outcomes()

    async def time_out_with_an_unobserved_error() -> None:
        with anyio.fail_after(HANG) as scope:
            async with MiniAgents(call_observers=[outcomes]):
                await _fail_unobserved(outcomes)
                scope.deadline = anyio.current_time()  # the timeout expires now
                await anyio.sleep_forever()

    with pytest.raises(TimeoutError) as timed_out:
        await time_out_with_an_unobserved_error()
    assert timed_out.type is TimeoutError
    logged = _logged_booms(caplog)
    assert len(logged) == 1 and str(logged[0]) == "boom"


async def test_move_on_after_around_a_block_with_an_unobserved_error_moves_on_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="miniagents")
    outcomes = Outcomes()
    with anyio.fail_after(HANG):
        with anyio.move_on_after(HANG) as scope:
            async with MiniAgents(call_observers=[outcomes]):
                await _fail_unobserved(outcomes)
                scope.deadline = anyio.current_time()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
    assert len(_logged_booms(caplog)) == 1


async def test_a_cancelled_task_group_around_a_block_with_an_unobserved_error_ends_quietly_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="miniagents")
    outcomes = Outcomes()
    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg, MiniAgents(call_observers=[outcomes]):
            await _fail_unobserved(outcomes)
            tg.cancel_scope.cancel()
            await anyio.sleep_forever()
    assert len(_logged_booms(caplog)) == 1


async def test_an_unobserved_error_of_a_block_that_is_not_cancelled_is_still_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="miniagents")
    outcomes = Outcomes()

    async def fail_unobserved_in_a_scope_that_is_not_cancelled() -> None:
        with anyio.move_on_after(HANG):
            async with MiniAgents(call_observers=[outcomes]):
                await _fail_unobserved(outcomes)

    with anyio.fail_after(HANG), pytest.raises(Boom):
        await fail_unobserved_in_a_scope_that_is_not_cancelled()
    assert _logged_booms(caplog) == []


# == 9. Deep and wide call trees with failures and cancellations end the same way on trio and on asyncio ====
#
# Every drawn tree is run once under trio and once under asyncio; the normalised outcomes must be equal.  The
# agents are deterministic: a node runs its children one after the other, each to its end, so at any moment
# only the path from the root to one node is running, and what happens does not depend on the scheduling
# (checkpoints only, no clocks).  A node:
#
#   replies "<n>:start", passes some checkpoints, maybe acts (raises, or cancels the block) "before", then for
#   each child: starts it (or starts and cancels it at once, or lets it run until it hangs and cancels it),
#   consumes it ("forward": replies its reply sequence, and after a failed child waits to be failed by it;
#   "await": awaits its replies, replying them or "<n>:caught <error type>"), maybe acts "after", replies
#   "<n>:end", and if its parent is to cancel it, hangs.

ACTIONS = ["ok"] * 16 + ["ValueError", "StopAsyncIteration", "KeyboardInterrupt", "cancel_block"]


@attrs.frozen
class Link:
    """How a node starts and consumes one child."""

    child: int
    start: str  # "normal" | "cancel_before_start" | "cancel_when_hung"
    consume: str  # "forward" | "await"


@attrs.frozen
class Node:
    """What one node of a drawn call tree does."""

    links: tuple[Link, ...]
    action: str
    when: str  # "before" | "after" its children
    checkpoints: int


MAX_DEPTH = 30
MAX_WIDTH = 5


@st.composite
def call_trees(draw: st.DrawFn) -> tuple[Node, ...]:
    """Trees of up to 60 nodes, up to MAX_DEPTH deep and MAX_WIDTH wide, biased towards deep chains."""
    size = draw(st.integers(1, 60))
    depth = [0]
    children: list[list[int]] = [[]]
    for number in range(1, size):
        open_parents = [p for p in range(number) if depth[p] < MAX_DEPTH and len(children[p]) < MAX_WIDTH]
        if not open_parents:
            break
        deepest = number - 1
        if deepest in open_parents and draw(st.sampled_from([True, True, True, False])):
            parent = deepest  # extend the chain: deep trees
        else:
            parent = draw(st.sampled_from(open_parents))
        children[parent].append(number)
        children.append([])
        depth.append(depth[parent] + 1)
    nodes = []
    for number in range(len(children)):
        links = tuple(
            Link(
                child,
                draw(st.sampled_from(["normal"] * 6 + ["cancel_before_start", "cancel_when_hung"])),
                draw(st.sampled_from(["forward", "await"])),
            )
            for child in children[number]
        )
        nodes.append(
            Node(
                links,
                draw(st.sampled_from(ACTIONS)),
                draw(st.sampled_from(["before", "after"])),
                draw(st.integers(0, 2)),
            )
        )
    return tuple(nodes)


class TreeOutcomes:
    """Records each tree node's outcome (a call observer), keyed by node number."""

    def __init__(self) -> None:
        #: node -> (outcome, error type, whether a KeyboardInterrupt had been raised when it finished)
        self.finished: dict[int, tuple[CallOutcome, str | None, bool]] = {}
        self.running: set[int] = set()
        self.interrupt_raised = False

    def call_started(self, call: AgentCall) -> None:
        return None

    def call_running(self, call: AgentCall, state: object) -> None:
        self.running.add(call.kwargs["node"])

    def call_finished(
        self, call: AgentCall, state: object, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        self.running.discard(call.kwargs["node"])
        error_type = None if error is None else type(error).__name__
        self.finished[call.kwargs["node"]] = (outcome, error_type, self.interrupt_raised)


@attrs.frozen
class TreeRun:
    """What one run of a tree produced, as compared between the backends."""

    escaped: str | None
    interrupted: bool
    outcomes: tuple[tuple[int, str, str | None], ...]
    replies: tuple[str, ...] | None
    still_running: frozenset[int]


def is_only_cancellation(error: BaseException) -> bool:
    """Whether *error* is the running backend's cancellation, possibly grouped (as trio's nurseries raise it)."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(error, BaseExceptionGroup):
        return error.split(cancelled)[1] is None
    return isinstance(error, cancelled)


def run_tree(tree: tuple[Node, ...], backend: str) -> TreeRun:
    """Run *tree* in a fresh event loop of *backend*; return its normalised outcome."""
    observer = TreeOutcomes()
    hung: set[int] = set()
    replies: list[str] = []
    interrupted = False
    block_cancelled = False

    async def main() -> str | None:
        nonlocal block_cancelled
        with anyio.fail_after(HANG):
            with anyio.move_on_after(math.inf) as block_scope:

                async def act(node: int, action: str) -> None:
                    if action == "ValueError":
                        raise ValueError(f"node {node}")
                    if action == "StopAsyncIteration":
                        raise StopAsyncIteration(f"node {node}")
                    if action == "KeyboardInterrupt":
                        observer.interrupt_raised = True
                        raise KeyboardInterrupt(f"node {node}")
                    if action == "cancel_block":
                        block_scope.deadline = anyio.current_time()  # as if its timeout expired now
                        await anyio.sleep_forever()

                @miniagent
                async def tree_node(ctx: InteractionContext, node: int, hang: bool) -> None:
                    spec = tree[node]
                    ctx.reply(f"{node}:start")
                    for _ in range(spec.checkpoints):
                        await anyio.lowlevel.checkpoint()
                    if spec.when == "before":
                        await act(node, spec.action)
                    for link in spec.links:
                        call = tree_node.initiate_call(node=link.child, hang=link.start == "cancel_when_hung")
                        if link.start == "cancel_before_start":
                            call.cancel()
                        child_replies = call.reply_sequence()
                        if link.consume == "forward":
                            ctx.reply(child_replies)
                        if link.start == "cancel_when_hung":
                            while link.child not in hung and not call.done:
                                await anyio.lowlevel.checkpoint()
                            call.cancel()
                        if link.consume == "forward":
                            await wait_done(call)
                            if observer.finished[link.child][0] != "completed":
                                await anyio.sleep_forever()  # the forwarded failure fails this call
                        else:
                            try:
                                ctx.reply(await child_replies)
                            except Exception as error:
                                ctx.reply(f"{node}:caught {type(error).__name__}")
                    if spec.when == "after":
                        await act(node, spec.action)
                    ctx.reply(f"{node}:end")
                    if hang:
                        hung.add(node)
                        await anyio.sleep_forever()

                try:
                    async with MiniAgents(call_observers=[observer]):
                        try:
                            async for message in tree_node.inquire(node=0, hang=False):
                                replies.append(str(message))
                        except Exception as error:
                            replies.append(f"error:{type(error).__name__}")
                except BaseException as escaped:  # what escapes the block is what is compared
                    if is_only_cancellation(escaped):
                        raise  # for the move_on_after scope (on trio, nurseries raise it in a group)
                    return type(escaped).__name__
            block_cancelled = block_scope.cancelled_caught
        return None

    try:
        escaped = anyio.run(main, backend=backend)
    except BaseException as leaked:  # e.g. an interrupt that escaped anyio.run: a test failure, not a stop
        pytest.fail(f"{type(leaked).__name__} escaped anyio.run on {backend}: {leaked!r}")
    interrupted = observer.interrupt_raised
    outcomes: list[tuple[int, str, str | None]] = []
    for node, (outcome, error, after_interrupt) in sorted(observer.finished.items()):
        if after_interrupt and (outcome == "cancelled" or error == "KeyboardInterrupt"):
            # A call the interrupt stopped while it ran (the interrupted call's ancestors, waiting for it)
            # records "cancelled", or "failed" with the interrupt if its reply pump saw the interrupted
            # child's replies before the context's cancellation reached it: which comes first is scheduling
            # (on asyncio the parent's pump sees them first, on trio the cancellation comes first).  Calls
            # that had finished before the interrupt, and any other outcome, are compared as they are.
            outcomes.append((node, "stopped", None))
        else:
            outcomes.append((node, outcome, error))
    return TreeRun(
        escaped=escaped,
        interrupted=interrupted,
        outcomes=tuple(outcomes),
        # What the root's consumer read when the body was cancelled depends on how far the pumps got: only
        # compared for runs that ended on their own.
        replies=None if interrupted or block_cancelled else tuple(replies),
        still_running=frozenset(observer.running),
    )


def chain(length: int, bottom: str, awaited_at: int | None = None) -> tuple[Node, ...]:
    """A chain of *length* calls, each forwarding the next (awaiting it at *awaited_at*); the last does *bottom*."""
    return tuple(
        Node(
            () if n == length - 1 else (Link(n + 1, "normal", "await" if n == awaited_at else "forward"),),
            bottom if n == length - 1 else "ok",
            "after",
            n % 2,
        )
        for n in range(length)
    )


FAN_OF_HUNG_CHILDREN = (
    Node(
        tuple(
            Link(n, "cancel_when_hung", consume)
            for n, consume in zip(range(1, 6), ["await", "forward"] * 3, strict=False)
        ),
        "ok",
        "after",
        0,
    ),
    *(Node((), "ok", "before", 1) for _ in range(4)),
    Node((), "cancel_block", "after", 0),
)


@settings(PROPERTY, max_examples=100)
@given(tree=call_trees())
@example(tree=chain(MAX_DEPTH, "KeyboardInterrupt"))
@example(tree=chain(MAX_DEPTH, "StopAsyncIteration", awaited_at=MAX_DEPTH // 2))
@example(tree=chain(MAX_DEPTH, "cancel_block"))
@example(tree=FAN_OF_HUNG_CHILDREN)
def test_property_call_trees_with_failures_and_cancellations_end_alike_on_trio_and_asyncio(
    tree: tuple[Node, ...],
) -> None:
    on_trio = run_tree(tree, "trio")
    on_asyncio = run_tree(tree, "asyncio")
    assert on_trio == on_asyncio
    # Whatever happened, every call that started has ended; an interrupt, and nothing else, comes out of the
    # block, bare (every failure reached a consumer: the root's, or an awaiting parent).
    assert on_trio.still_running == frozenset()
    assert on_trio.outcomes[0][0] == 0
    assert on_trio.escaped == ("KeyboardInterrupt" if on_trio.interrupted else None)
