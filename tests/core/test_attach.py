"""`MiniAgents.attach()`: one app-wide context, entered once, used from any other task of its event loop.

The tasks that attach must not inherit the context through context variables (anyio and trio copy them into a
task when it is spawned).  So they are started by :class:`Elsewhere`, whose task began *before*
``async with ma:`` — like the request handlers of a web server whose lifespan task entered the context — and
every such test first checks that, without ``attach()``, starting a call there raises
:class:`NoActiveContextError`.
"""

from __future__ import annotations

import asyncio
import functools
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import anyio
import pytest
import trio
from core_helpers import Boom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import (
    AgentCall,
    AgentCallCancelledError,
    CallOutcome,
    CallRecord,
    InteractionContext,
    Message,
    MessageSequencePromise,
    MiniAgents,
    MiniAgentsError,
    NoActiveContextError,
    RateLimit,
    RateLimiter,
    WrongEventLoopError,
    miniagent,
)
from miniagents.llms import openai_agent
from miniagents.testing._strategies import Delay, delays, pause
from miniagents.testing.fake_llm_server import FakeLLMServer, openai_stream

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

T = TypeVar("T")


# -- tasks that did not inherit the context -----------------------------------------------------------------


class Job(Generic[T]):
    """One piece of work run in a task of :class:`Elsewhere`; its outcome is read with :meth:`result`."""

    def __init__(self, fn: Callable[[], Awaitable[T]]) -> None:
        self._fn = fn
        self._done = anyio.Event()
        self._value: T | None = None
        self._error: Exception | None = None

    async def run(self) -> None:
        try:
            self._value = await self._fn()
        except Exception as exc:
            self._error = exc
        finally:
            self._done.set()

    async def result(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Elsewhere:
    """Runs each job in a new task spawned by a task that started before any ``MiniAgents`` was entered."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Job[Any]](math.inf)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg, self._receive:
            task_status.started()
            async for job in self._receive:
                tg.start_soon(job.run)

    def start(self, fn: Callable[[], Awaitable[T]]) -> Job[T]:
        job = Job(fn)
        self._send.send_nowait(job)
        return job

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        return await self.start(fn).result()

    def close(self) -> None:
        self._send.close()


@asynccontextmanager
async def elsewhere() -> AsyncIterator[Elsewhere]:
    """Open it *before* ``async with ma:``: its tasks then have no context in their context variables."""
    box = Elsewhere()
    async with anyio.create_task_group() as tg:
        await tg.start(box.serve)
        try:
            yield box
        finally:
            box.close()


def assert_no_context_here() -> None:
    """The calling task has no MiniAgents context of its own (so a call start fails)."""
    with pytest.raises(NoActiveContextError):
        echo.inquire("no context here")


# -- agents and observers -----------------------------------------------------------------------------------


@miniagent
async def echo(ctx: InteractionContext) -> None:
    ctx.reply(await ctx.messages)


@miniagent
async def fails(ctx: InteractionContext) -> None:
    ctx.reply("before the failure")
    raise Boom("attached call failed")


class Recorder:
    """A call observer: every call started and finished, with its parent and outcome."""

    def __init__(self) -> None:
        self.started: dict[int, tuple[str, int | None]] = {}
        self.finished: dict[int, CallOutcome] = {}
        self.contexts: dict[int, MiniAgents] = {}

    def call_started(self, call: AgentCall) -> None:
        self.started[call.call_id] = (call.agent.alias, None if call.parent is None else call.parent.call_id)
        self.contexts[call.call_id] = call.context

    def call_running(self, call: AgentCall, state: None) -> None:
        pass

    def call_finished(
        self, call: AgentCall, state: None, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        self.finished[call.call_id] = outcome

    def ids_of(self, alias: str) -> list[int]:
        return [call_id for call_id, (name, _) in self.started.items() if name == alias]

    def parent_of(self, call_id: int) -> int | None:
        return self.started[call_id][1]


def contents(messages: tuple[Message, ...]) -> list[str]:
    return [message.content for message in messages]


async def drain(replies: MessageSequencePromise) -> tuple[list[str], Exception | None]:
    """Iterate *replies* to the end: the contents, then the error that ended them (``None``: completed)."""
    seen: list[str] = []
    try:
        async for message in replies:
            seen.append(message.content)
    except Exception as exc:
        return seen, exc
    return seen, None


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions in *error*, exception groups flattened."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


# -- attaching ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["async with", "with"])
async def test_a_task_without_the_context_starts_calls_in_it_once_attached(form: str) -> None:
    ma = MiniAgents()

    async def handler() -> list[str]:
        assert_no_context_here()
        if form == "async with":
            async with ma.attach() as attached:
                assert attached is ma and MiniAgents.current() is ma
                replies = await echo.inquire("hi")
        else:
            with ma.attach() as attached:
                assert attached is ma and MiniAgents.current() is ma
                replies = await echo.inquire("hi")
        assert_no_context_here()  # leaving the block restores what was current: nothing
        return contents(replies)

    async with elsewhere() as other, ma:
        assert await other.run(handler) == ["hi"]


async def test_calls_started_in_an_attached_task_are_root_calls_of_the_context() -> None:
    recorder = Recorder()
    ma = MiniAgents(call_observers=[recorder])

    async def handler() -> None:
        assert_no_context_here()
        async with ma.attach():
            await echo.inquire("x")

    async with elsewhere() as other, ma:
        await other.run(handler)
        [call_id] = recorder.ids_of("echo")
        assert recorder.parent_of(call_id) is None
        assert recorder.contexts[call_id] is ma
        assert recorder.finished == {call_id: "completed"}


async def test_calls_started_by_several_attached_tasks_run_concurrently() -> None:
    ma = MiniAgents()
    both_waiting = anyio.Event()
    waiting: list[str] = []

    @miniagent
    async def meet(ctx: InteractionContext, name: str) -> None:
        waiting.append(name)
        if len(waiting) == 2:
            both_waiting.set()
        await both_waiting.wait()  # each call waits for the other: they must run at the same time
        ctx.reply(f"{name} met")

    async def handler(name: str) -> list[str]:
        assert_no_context_here()
        async with ma.attach():
            return contents(await meet.inquire(name=name))

    async with elsewhere() as other, ma:
        first = other.start(functools.partial(handler, "a"))
        second = other.start(functools.partial(handler, "b"))
        with anyio.fail_after(10):  # a hang guard only
            assert await first.result() == ["a met"]
            assert await second.result() == ["b met"]


async def test_an_unobserved_failure_of_an_attached_call_is_raised_when_the_context_exits() -> None:
    ma = MiniAgents()

    async def handler() -> None:
        assert_no_context_here()
        async with ma.attach():
            fails.inquire()  # nobody reads the replies

    async with elsewhere() as other:
        with pytest.raises(Boom, match="attached call failed") as caught:
            async with ma:
                await other.run(handler)
        assert any("no consumer observed" in note for note in getattr(caught.value, "__notes__", []))


async def test_a_failure_observed_in_the_attached_task_is_not_raised_again() -> None:
    ma = MiniAgents()

    async def handler() -> str:
        assert_no_context_here()
        async with ma.attach():
            with pytest.raises(Boom) as caught:
                await fails.inquire()
        return str(caught.value)

    async with elsewhere() as other, ma:
        assert await other.run(handler) == "attached call failed"


async def test_attached_calls_are_cancelled_when_the_context_is_cancelled() -> None:
    ma = MiniAgents()
    running = anyio.Event()
    ended: list[str] = []

    @miniagent
    async def hangs(ctx: InteractionContext) -> None:
        ctx.reply("started")
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            ended.append("hangs")

    async def handler() -> list[str]:
        assert_no_context_here()
        async with ma.attach():
            replies = hangs.inquire()
        # Read after the block: the call lives on, in the context, until the context is cancelled.
        seen, error = await drain(replies)
        assert isinstance(error, AgentCallCancelledError), error
        return seen

    async with elsewhere() as other:
        with anyio.CancelScope() as scope:
            async with ma:
                job = other.start(handler)
                await running.wait()
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        with anyio.fail_after(10):  # a hang guard only
            assert await job.result() == ["started"]
    assert ended == ["hangs"]


class MemoryStore:
    """A store keeping what the context hands it."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.records: list[CallRecord] = []

    def on_persist_message(self, message: Message) -> None:
        self.messages.append(message)

    def on_call_finished(self, record: CallRecord) -> None:
        self.records.append(record)


async def test_attached_calls_share_the_contexts_store_and_persistence_handlers() -> None:
    store = MemoryStore()
    handled: list[str] = []
    ma = MiniAgents(store=store, on_persist_message=lambda message: handled.append(message.content))

    async def handler() -> None:
        assert_no_context_here()
        async with ma.attach():
            await echo.inquire("from a request handler")

    async with elsewhere() as other, ma:
        await other.run(handler)
    assert handled == ["from a request handler"]
    assert contents(tuple(store.messages)) == ["from a request handler"]
    [record] = store.records
    assert (record.agent_alias, record.outcome, record.parent_call_id) == ("echo", "completed", None)
    assert record.run_id == ma.run_id


async def test_attached_calls_share_the_contexts_resources_and_they_close_at_context_exit() -> None:
    closed: list[object] = []

    async def close(resource: object) -> None:
        closed.append(resource)

    @miniagent
    async def uses_pool(ctx: InteractionContext) -> None:
        pool = MiniAgents.current().shared_resource("pool", object, aclose=close)
        ctx.reply(str(id(pool)))

    ma = MiniAgents()

    async def handler() -> str:
        assert_no_context_here()
        async with ma.attach():
            return (await uses_pool.inquire())[0].content

    async with elsewhere() as other, ma:
        pool = ma.shared_resource("pool", object, aclose=close)
        assert await other.run(handler) == str(id(pool))
        assert closed == []
    assert closed == [pool]


async def test_llm_requests_of_attached_calls_use_the_contexts_rate_limiter_and_http_pool() -> None:
    limiter = RateLimiter(default=RateLimit(max_concurrent=1))
    ma = MiniAgents(rate_limiter=limiter)
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["from", " the model"]))

        async def handler() -> str:
            assert_no_context_here()
            async with ma.attach():
                replies = openai_agent.inquire(
                    "q", model="gpt-test", base_url=server.openai_base_url, api_key="sk-test"
                )
                return await replies.as_single_text()

        async with elsewhere() as other, ma:
            assert await other.run(handler) == "from the model"
            assert limiter.statistics()[("openai", "gpt-test")].granted == 1
            assert len(server.requests) == 1


# -- errors -------------------------------------------------------------------------------------------------


async def test_attach_needs_an_active_context() -> None:
    ma = MiniAgents()
    with pytest.raises(NoActiveContextError, match="attach"), ma.attach():
        pass
    with pytest.raises(NoActiveContextError, match="attach"):
        async with ma.attach():
            pass
    async with ma:
        pass
    with pytest.raises(NoActiveContextError, match="attach"):
        async with ma.attach():
            pass


async def test_an_attachment_is_entered_once() -> None:
    async with MiniAgents() as ma:
        attachment = ma.attach()
        with attachment:
            with pytest.raises(MiniAgentsError, match="entered already"), attachment:
                pass
            assert MiniAgents.current() is ma  # the refused entry changed nothing
        with pytest.raises(MiniAgentsError, match="entered already"):
            async with attachment:
                pass
        async with ma.attach():  # a new attachment for every block
            assert MiniAgents.current() is ma


async def test_starting_a_call_from_a_worker_thread_raises_wrong_event_loop_error() -> None:
    recorder = Recorder()
    async with MiniAgents(call_observers=[recorder]):
        # anyio copies the context variables into the worker thread: the context is "current" there.
        with pytest.raises(WrongEventLoopError, match="another thread"):
            await anyio.to_thread.run_sync(echo.inquire, "from a thread")
        with pytest.raises(WrongEventLoopError, match="another thread"):
            await anyio.to_thread.run_sync(MessageSequencePromise.open)
        assert recorder.started == {}  # nothing was started in the context's task groups
        assert contents(await echo.inquire("still works")) == ["still works"]


async def test_starting_a_call_from_a_worker_thread_of_an_agent_raises_wrong_event_loop_error() -> None:
    @miniagent
    async def offloads(ctx: InteractionContext) -> None:
        try:
            await anyio.to_thread.run_sync(echo.inquire, "from the agent's thread")
        except WrongEventLoopError as exc:
            ctx.reply(f"refused: {exc}")

    async with MiniAgents():
        [reply] = await offloads.inquire()
    assert reply.content.startswith(
        "refused: calling agent 'echo': this MiniAgents context runs in another thread"
    )


async def test_attach_from_a_worker_thread_raises_wrong_event_loop_error() -> None:
    def attach_in_thread(ma: MiniAgents) -> None:
        with ma.attach():
            pass

    async with MiniAgents() as ma:
        with pytest.raises(WrongEventLoopError, match="another thread"):
            await anyio.to_thread.run_sync(attach_in_thread, ma)
        assert MiniAgents.current() is ma


async def test_attach_in_an_event_loop_of_another_thread_raises_wrong_event_loop_error(
    anyio_backend: str,
) -> None:
    async def attach_there(ma: MiniAgents) -> None:
        async with ma.attach():
            pass

    async with MiniAgents() as ma:
        other_loop = functools.partial(anyio.run, attach_there, ma, backend=anyio_backend)
        with pytest.raises(WrongEventLoopError, match="another thread"):
            await anyio.to_thread.run_sync(other_loop)


async def test_a_worker_thread_hands_calls_to_the_contexts_loop_with_from_thread_run() -> None:
    async def ask(ma: MiniAgents) -> list[str]:
        async with ma.attach():
            return contents(await echo.inquire("handed back"))

    async with MiniAgents() as ma:
        answer = await anyio.to_thread.run_sync(lambda: anyio.from_thread.run(ask, ma))
    assert answer == ["handed back"]


def _run_other_event_loop(anyio_backend: str, fn: Callable[[], Awaitable[None]]) -> None:
    """Run *fn* to completion in a second event loop, synchronously, in this thread (so in this task).

    On asyncio the other loop is trio's; on trio it is asyncio's (trio cannot nest in trio).
    """
    if anyio_backend == "asyncio":
        trio.run(fn)
    else:

        async def main() -> None:
            await fn()

        asyncio.run(main())


async def test_attach_inside_another_event_loop_of_the_same_thread_raises_wrong_event_loop_error(
    anyio_backend: str,
) -> None:
    outcome: list[str] = []

    async def attach_there(ma: MiniAgents) -> None:
        try:
            with ma.attach():
                outcome.append("attached")
        except WrongEventLoopError as exc:
            outcome.append(f"refused: {exc}")

    async with MiniAgents() as ma:
        _run_other_event_loop(anyio_backend, functools.partial(attach_there, ma))
        assert contents(await echo.inquire("still works")) == ["still works"]
    assert len(outcome) == 1 and outcome[0].startswith("refused: attach(): "), outcome
    assert "another event loop" in outcome[0]


async def test_a_call_start_inside_another_event_loop_of_the_same_thread_raises_wrong_event_loop_error(
    anyio_backend: str,
) -> None:
    outcome: list[str] = []

    async def start_there() -> None:
        # The context variables of the outer task are copied into the other loop: the context is "current".
        try:
            call = echo.initiate_call()
        except WrongEventLoopError as exc:
            outcome.append(f"refused: {exc}")
        else:
            outcome.append("started")
            call.cancel()

    async with MiniAgents():
        _run_other_event_loop(anyio_backend, start_there)
        assert outcome and outcome[0].startswith("refused: calling agent 'echo': "), outcome
        assert "another event loop" in outcome[0]
        assert contents(await echo.inquire("still works")) == ["still works"]


# -- what is current before and after ------------------------------------------------------------------------


def recording_context() -> tuple[MiniAgents, list[str]]:
    """A context and the contents of the messages produced in it."""
    produced: list[str] = []
    return MiniAgents(on_persist_message=lambda message: produced.append(message.content)), produced


async def test_nested_attachments_of_two_contexts_restore_the_previous_one() -> None:
    (a, in_a), (b, in_b) = recording_context(), recording_context()

    async def handler() -> None:
        assert_no_context_here()
        with a.attach():
            assert MiniAgents.current() is a
            async with b.attach():
                assert MiniAgents.current() is b
                await echo.inquire("to b")
            assert MiniAgents.current() is a
            await echo.inquire("to a")
        assert_no_context_here()

    async with elsewhere() as other, a, b:
        await other.run(handler)
    assert (in_a, in_b) == (["to a"], ["to b"])


async def test_attach_inside_another_contexts_block_uses_the_attached_one_then_restores() -> None:
    (a, in_a), (b, in_b) = recording_context(), recording_context()
    async with a, b:
        assert MiniAgents.current() is b
        async with a.attach():
            assert MiniAgents.current() is a
            await echo.inquire("to a")
        assert MiniAgents.current() is b
        await echo.inquire("to b")
    assert (in_a, in_b) == (["to a"], ["to b"])


async def test_attach_inside_an_agent_call_starts_root_calls_that_outlive_the_agents_call() -> None:
    recorder = Recorder()
    handed_out: list[MessageSequencePromise] = []
    started = anyio.Event()
    gate = anyio.Event()

    @miniagent
    async def gated(ctx: InteractionContext) -> None:
        await gate.wait()
        ctx.reply("the root call finished")

    @miniagent
    async def inner(ctx: InteractionContext) -> None:
        # A child call (on asyncio its task runs in its parent's call group): attach makes a root call.
        async with MiniAgents.current().attach():
            handed_out.append(gated.inquire())
        started.set()
        await anyio.sleep_forever()

    @miniagent
    async def outer(ctx: InteractionContext) -> None:
        ctx.reply(inner.inquire())

    async with MiniAgents(call_observers=[recorder]):
        outer_call = outer.initiate_call()
        outer_replies = outer_call.reply_sequence()
        await started.wait()
        outer_call.cancel()  # cancels outer and inner, but not the root call inner started
        with pytest.raises(AgentCallCancelledError):
            await outer_replies
        [gated_id] = recorder.ids_of("gated")
        assert recorder.finished.get(gated_id) is None  # still running
        gate.set()
        assert contents(await handed_out[0]) == ["the root call finished"]
    [outer_id], [inner_id] = recorder.ids_of("outer"), recorder.ids_of("inner")
    assert recorder.parent_of(inner_id) == outer_id
    assert recorder.parent_of(gated_id) is None
    assert recorder.finished == {outer_id: "cancelled", inner_id: "cancelled", gated_id: "completed"}


# -- property: concurrent attached tasks --------------------------------------------------------------------

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)


class Labelled(Exception):
    """The failure of one call of the property, named by its label."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


@miniagent
async def replies_after(ctx: InteractionContext, label: str, delay: Delay, fail: bool) -> None:
    await pause(delay)
    ctx.reply(label)
    await pause(delay)
    if fail:
        raise Labelled(label)


# One request handler: how it attaches, and its calls as (delay, fails, awaited by the handler).
HandlerSpec = tuple[str, list[tuple[Delay, bool, bool]]]


@PROPERTY
@given(
    handlers=st.lists(
        st.tuples(
            st.sampled_from(["with", "async with"]),
            st.lists(st.tuples(delays(0.002), st.booleans(), st.booleans()), min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=4,
    )
)
async def test_concurrent_attached_tasks_each_get_their_replies_and_lose_no_error(
    handlers: list[HandlerSpec],
) -> None:
    recorder = Recorder()
    persisted: list[str] = []
    ma = MiniAgents(
        call_observers=[recorder], on_persist_message=lambda message: persisted.append(message.content)
    )

    async def handler(number: int, form: str, calls: list[tuple[Delay, bool, bool]]) -> list[str]:
        assert_no_context_here()
        seen: list[str] = []

        async def start_all() -> None:
            started = [
                (replies_after.inquire(label=f"h{number}.c{i}", delay=delay, fail=fail), awaited)
                for i, (delay, fail, awaited) in enumerate(calls)
            ]
            for replies, awaited in started:
                if awaited:
                    try:
                        seen.extend(contents(await replies))
                    except Labelled as exc:
                        seen.append(f"failed {exc.label}")

        if form == "with":
            with ma.attach():
                await start_all()
        else:
            async with ma.attach():
                await start_all()
        assert_no_context_here()
        return seen

    expected_unobserved = {
        f"h{n}.c{i}"
        for n, (_, calls) in enumerate(handlers)
        for i, (_, fail, awaited) in enumerate(calls)
        if fail and not awaited
    }
    exit_error: BaseException | None = None
    results: list[list[str]] = []
    async with elsewhere() as other:
        try:
            async with ma:
                jobs = [
                    other.start(functools.partial(handler, n, form, calls))
                    for n, (form, calls) in enumerate(handlers)
                ]
                results = [await job.result() for job in jobs]
        except Exception as error:
            exit_error = error
    raised = [] if exit_error is None else list(leaves(exit_error))
    assert all(isinstance(e, Labelled) for e in raised), exit_error

    # Each handler saw exactly its own awaited calls, in its order (a failure after the call's reply).
    for n, (_, calls) in enumerate(handlers):
        expected = [
            f"failed h{n}.c{i}" if fail else f"h{n}.c{i}"
            for i, (_, fail, awaited) in enumerate(calls)
            if awaited
        ]
        assert results[n] == expected
    # The failures nobody observed are raised at context exit, exactly those.
    assert sorted(e.label for e in raised if isinstance(e, Labelled)) == sorted(expected_unobserved)
    # Every call was a root call of the context and ended; every reply reached the persistence handler.
    total = sum(len(calls) for _, calls in handlers)
    assert len(recorder.started) == len(recorder.finished) == total
    assert all(parent is None for _, parent in recorder.started.values())
    assert sorted(persisted) == sorted(
        f"h{n}.c{i}" for n, (_, calls) in enumerate(handlers) for i in range(len(calls))
    )
