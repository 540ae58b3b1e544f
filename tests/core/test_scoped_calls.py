"""Scoped calls: ``async with agent.inquire(...) as replies:`` and ``async with agent.initiate_call() as call:``.

Leaving the block by any path (its end, ``break``, an exception, a cancellation of the task) cancels the call if
it is still running and waits until it has ended, with everything it started (its HTTP streams included).  What
it replied stays readable afterwards; a failure nobody observed is raised when the block is left normally.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import anyio
import anyio.lowlevel
import attrs
import pytest
from core_helpers import Boom
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from miniagents import (
    AgentCall,
    AgentCallCancelledError,
    CallOutcome,
    InteractionContext,
    Message,
    MessageSequencePromise,
    MiniAgent,
    MiniAgents,
    MiniAgentsError,
    SequenceClosedError,
    TextMessage,
    miniagent,
)
from miniagents.llms import openai_agent
from miniagents.testing._strategies import Delay, delays
from miniagents.testing.fake_llm_server import FakeLLMServer, openai_stream

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

HANG_GUARD = 10  # seconds: only so that a bug fails a test instead of hanging it; never a timing assertion


class BodyError(Exception):
    pass


class Recorder:
    """A call observer: every call started and how it finished."""

    def __init__(self) -> None:
        self.started: dict[int, str] = {}
        self.finished: dict[int, CallOutcome] = {}

    def call_started(self, call: AgentCall) -> None:
        self.started[call.call_id] = call.agent.alias

    def call_running(self, call: AgentCall, state: None) -> None:
        pass

    def call_finished(
        self, call: AgentCall, state: None, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        self.finished[call.call_id] = outcome

    def outcomes(self) -> dict[str, CallOutcome]:
        """The outcome of each finished call, by agent alias (the examples call each agent once)."""
        return {
            alias: self.finished[call_id]
            for call_id, alias in self.started.items()
            if call_id in self.finished
        }

    def outcome_list(self) -> list[tuple[str, CallOutcome]]:
        """Every finished call as (agent alias, outcome), sorted."""
        return sorted((self.started[call_id], outcome) for call_id, outcome in self.finished.items())

    def unfinished(self) -> list[str]:
        return [alias for call_id, alias in self.started.items() if call_id not in self.finished]


async def drain(replies: MessageSequencePromise) -> tuple[list[str], Exception | None]:
    """Iterate *replies* to the end: the contents, then the error that ended them (``None``: completed)."""
    seen: list[str] = []
    try:
        async for message in replies:
            seen.append(message.content)
    except Exception as exc:
        return seen, exc
    return seen, None


async def until_done(replies: MessageSequencePromise) -> None:
    """Wait until the call has ended, without reading its replies (so a failure stays unobserved)."""
    with anyio.fail_after(HANG_GUARD):
        while not replies.done:
            await anyio.lowlevel.checkpoint()


def contents(messages: tuple[Message, ...]) -> list[str]:
    return [message.content for message in messages]


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions in *error*, exception groups flattened."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


class Streamer:
    """An agent that starts a child call that never ends, replies ``"first"``, then hangs until cancelled."""

    def __init__(self) -> None:
        self.first_replied = anyio.Event()
        self.entered: list[str] = []
        self.exited: list[str] = []

        @miniagent
        async def grandchild(ctx: InteractionContext) -> None:
            self.entered.append("grandchild")
            try:
                await anyio.sleep_forever()
            finally:
                self.exited.append("grandchild")

        @miniagent
        async def streamer(ctx: InteractionContext) -> None:
            self.entered.append("streamer")
            try:
                grandchild.inquire()
                ctx.reply("first")
                self.first_replied.set()
                await anyio.sleep_forever()
            finally:
                self.exited.append("streamer")

        self.agent = streamer

    def check_ended(self, replies: MessageSequencePromise, recorder: Recorder) -> None:
        """What must hold right after the block: the call and every call it started have ended, cancelled."""
        assert replies.done
        assert sorted(self.exited) == sorted(self.entered)  # every agent body that started has left it
        assert recorder.unfinished() == []
        assert set(recorder.outcomes().values()) == {"cancelled"}


async def check_cancelled_after(replies: MessageSequencePromise, expected: list[str]) -> None:
    """Iterating after the block gives the replies made before the cancellation, then the cancellation."""
    seen, error = await drain(replies)
    assert seen == expected
    assert isinstance(error, AgentCallCancelledError), error


@miniagent
async def echo(ctx: InteractionContext) -> None:
    ctx.reply(ctx.messages)


@miniagent
async def echo_each(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(message)


@miniagent
async def fails(ctx: InteractionContext) -> None:
    ctx.reply("before the failure")
    raise Boom("the call failed")


@miniagent
async def forwards_failure(ctx: InteractionContext) -> None:
    ctx.reply(fails.inquire())


# -- exit paths ---------------------------------------------------------------------------------------------


async def test_the_end_of_the_block_cancels_a_running_call_and_waits_for_everything_it_started() -> None:
    streamer, recorder = Streamer(), Recorder()
    async with MiniAgents(call_observers=[recorder]):
        async with streamer.agent.inquire() as replies:
            assert isinstance(replies, MessageSequencePromise)
            await streamer.first_replied.wait()
        streamer.check_ended(replies, recorder)
        assert recorder.outcomes() == {"streamer": "cancelled", "grandchild": "cancelled"}
        await check_cancelled_after(replies, ["first"])


async def test_a_block_left_at_once_cancels_the_call_before_any_agent_code_runs() -> None:
    streamer, recorder = Streamer(), Recorder()
    async with MiniAgents(call_observers=[recorder]):
        async with streamer.agent.inquire() as replies:
            pass
        streamer.check_ended(replies, recorder)
        assert streamer.entered == []
        await check_cancelled_after(replies, [])


@pytest.mark.parametrize("how", ["messages", "promises"])
async def test_breaking_out_of_the_replies_cancels_the_call(how: str) -> None:
    streamer, recorder = Streamer(), Recorder()
    seen: list[str] = []
    async with MiniAgents(call_observers=[recorder]):
        async with streamer.agent.inquire() as replies:
            if how == "messages":
                async for message in replies:
                    seen.append(message.content)
                    break
            else:
                async for promise in replies.promises():
                    seen.append((await promise).content)
                    break
        streamer.check_ended(replies, recorder)
        assert seen == ["first"]
        await check_cancelled_after(replies, ["first"])


async def test_an_exception_in_the_body_cancels_the_call_and_propagates() -> None:
    streamer, recorder = Streamer(), Recorder()
    async with MiniAgents(call_observers=[recorder]):
        with pytest.raises(BodyError, match="from the body"):  # noqa: PT012 - raised in the scoped block
            async with streamer.agent.inquire() as replies:
                await streamer.first_replied.wait()
                raise BodyError("from the body")
        streamer.check_ended(replies, recorder)
        await check_cancelled_after(replies, ["first"])


@pytest.mark.parametrize("cancelled_by", ["cancel scope", "task group", "move_on_after"])
async def test_cancelling_the_body_from_outside_cancels_the_call_and_the_cancellation_propagates(
    cancelled_by: str,
) -> None:
    streamer, recorder = Streamer(), Recorder()
    seen: list[str] = []
    held: list[MessageSequencePromise] = []
    checked_right_after_the_block: list[bool] = []
    reached_after_the_block: list[bool] = []

    async def body() -> None:
        try:
            async with streamer.agent.inquire() as replies:
                held.append(replies)
                async for message in replies:  # "first", then nothing: only the cancellation ends this
                    seen.append(message.content)
        except anyio.get_cancelled_exc_class():
            streamer.check_ended(replies, recorder)
            checked_right_after_the_block.append(True)
            raise
        reached_after_the_block.append(True)

    async with MiniAgents(call_observers=[recorder]):
        if cancelled_by == "cancel scope":
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:

                    async def cancel_mid_stream() -> None:
                        await streamer.first_replied.wait()
                        scope.cancel()

                    tg.start_soon(cancel_mid_stream)
                    await body()
            assert scope.cancelled_caught
        elif cancelled_by == "task group":
            async with anyio.create_task_group() as tg:
                tg.start_soon(body)
                await streamer.first_replied.wait()
                tg.cancel_scope.cancel()
        else:
            with anyio.move_on_after(0.05) as deadline:  # the body never ends by itself
                await body()
            assert deadline.cancelled_caught
        assert checked_right_after_the_block == [True]
        assert reached_after_the_block == []  # the cancellation propagated out of the block
        replied, error = await drain(held[0])
        assert isinstance(error, AgentCallCancelledError), error
        if cancelled_by == "move_on_after":  # the deadline may come before the call replied, or was read
            assert replied == ["first"][: len(replied)] and seen == replied[: len(seen)]
        else:
            assert seen == replied == ["first"]


async def test_an_agent_cancelled_inside_a_scoped_block_ends_after_the_scoped_call() -> None:
    streamer, recorder = Streamer(), Recorder()

    @miniagent
    async def outer(ctx: InteractionContext) -> None:
        async with streamer.agent.inquire() as replies:
            async for message in replies:
                ctx.reply(message)

    async with MiniAgents(call_observers=[recorder]):
        call = outer.initiate_call()
        replies = call.reply_sequence()
        assert (await replies.__aiter__().__anext__()).content == "first"
        call.cancel()  # while outer waits in the block for more
        await check_cancelled_after(replies, ["first"])
        streamer.check_ended(replies, recorder)
        assert recorder.outcomes() == {
            "outer": "cancelled",
            "streamer": "cancelled",
            "grandchild": "cancelled",
        }


async def test_a_call_scoped_inside_an_agent_ends_with_the_block_and_the_agent_goes_on() -> None:
    streamer, recorder = Streamer(), Recorder()

    @miniagent
    async def reads_one(ctx: InteractionContext) -> None:
        async with streamer.agent.inquire() as replies:
            async for message in replies:
                ctx.reply(f"got {message.content}")
                break
        ctx.reply(f"the scoped call is done: {replies.done}")

    async with MiniAgents(call_observers=[recorder]):
        assert contents(await reads_one.inquire()) == ["got first", "the scoped call is done: True"]
    assert recorder.outcomes() == {
        "reads_one": "completed",
        "streamer": "cancelled",
        "grandchild": "cancelled",
    }


# -- completed and failed calls -----------------------------------------------------------------------------


async def test_a_call_that_completed_inside_the_block_is_not_affected() -> None:
    recorder = Recorder()
    async with MiniAgents(call_observers=[recorder]):
        async with echo.inquire(["a", "b"]) as replies:
            assert contents(await replies) == ["a", "b"]
        assert await drain(replies) == (["a", "b"], None)
        async with echo_each.inquire(["c"]) as unread:
            await until_done(unread)  # completed, never read in the block
        assert await drain(unread) == (["c"], None)
    assert recorder.outcomes() == {"echo": "completed", "echo_each": "completed"}


@pytest.mark.parametrize("agent", [fails, forwards_failure], ids=["failing", "forwarding a failure"])
async def test_an_unobserved_failure_is_raised_when_the_block_is_left_normally(agent: MiniAgent) -> None:
    async with MiniAgents():  # ...and only there: the context exits without raising it again
        with pytest.raises(Boom, match="the call failed"):
            async with agent.inquire() as replies:
                await until_done(replies)
        seen, error = await drain(replies)
        assert seen == ["before the failure"] and isinstance(error, Boom)


async def test_a_failure_observed_in_the_block_is_not_raised_again() -> None:
    async with MiniAgents(), fails.inquire() as replies:
        with pytest.raises(Boom):
            await replies


async def test_when_the_body_raises_the_unobserved_failure_is_raised_at_context_exit() -> None:
    with pytest.raises(Boom, match="the call failed"):  # noqa: PT012 - the context's exit raises it
        async with MiniAgents():
            with pytest.raises(BodyError):  # noqa: PT012 - raised in the scoped block
                async with fails.inquire() as replies:
                    await until_done(replies)
                    raise BodyError("the body's own error wins")


async def test_when_the_body_is_cancelled_the_unobserved_failure_is_raised_at_context_exit() -> None:
    reached_after_the_scope: list[bool] = []
    with pytest.raises(Boom, match="the call failed"):  # noqa: PT012 - the context's exit raises it
        async with MiniAgents():
            with anyio.CancelScope() as scope:
                async with fails.inquire() as replies:
                    await until_done(replies)
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
            assert scope.cancelled_caught  # the block let the cancellation through, not the failure
            reached_after_the_scope.append(True)
    assert reached_after_the_scope == [True]


async def test_when_the_body_raises_a_failure_observed_afterwards_is_not_raised_at_context_exit() -> None:
    async with MiniAgents():
        with pytest.raises(BodyError):  # noqa: PT012 - raised in the scoped block
            async with fails.inquire() as replies:
                await until_done(replies)
                raise BodyError("the body's own error wins")
        with pytest.raises(Boom):
            await replies


# -- sequences that are no call's replies --------------------------------------------------------------------


async def test_an_opened_sequence_in_a_block_is_only_read() -> None:
    async with MiniAgents():
        sequence, writer = MessageSequencePromise.open()
        writer.send("a")
        async with sequence as same:
            assert same is sequence
            async for message in sequence:
                assert message.content == "a"
                break
        writer.send("b")  # still open: nothing was cancelled
        writer.finish()
        assert contents(await sequence) == ["a", "b"]
        resolved = MessageSequencePromise.resolved([TextMessage("r")])
        async with resolved:
            pass
        assert contents(await resolved) == ["r"]


async def test_an_agents_input_in_a_block_is_only_read() -> None:
    @miniagent
    async def reads_first_then_all(ctx: InteractionContext) -> None:
        async with ctx.messages as inputs:
            async for message in inputs:
                ctx.reply(f"first {message.content}")
                break
        ctx.reply(await ctx.messages)

    async with MiniAgents():
        assert contents(await reads_first_then_all.inquire(["a", "b"])) == ["first a", "a", "b"]


async def test_an_agents_input_that_is_another_calls_replies_is_only_read_in_a_block() -> None:
    gate = anyio.Event()

    @miniagent
    async def produces(ctx: InteractionContext) -> None:
        ctx.reply("a")
        await gate.wait()
        ctx.reply("b")

    @miniagent
    async def reads_first_then_all(ctx: InteractionContext) -> None:
        async with ctx.messages as inputs:  # ctx.messages: "nothing to cancel", whatever feeds the input
            async for message in inputs:
                ctx.reply(f"first {message.content}")
                break
        gate.set()
        ctx.reply(await ctx.messages)

    async with MiniAgents():
        replies = reads_first_then_all.inquire(produces.inquire())  # the input *is* produces' replies
        assert await drain(replies) == (["first a", "a", "b"], None)


# -- initiate_call ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["the call itself", "a child call"])
async def test_a_block_scoping_a_call_cannot_run_inside_that_call(where: str) -> None:
    # Leaving it would wait for the call the block is part of: refused at once instead of hanging.
    refused: list[str] = []

    async def scope_the_outer_call(outer_call: AgentCall) -> None:
        try:
            async with outer_call.reply_sequence(finish_call=False):
                pass
        except MiniAgentsError as error:
            refused.append(str(error))

    @miniagent
    async def outer(ctx: InteractionContext) -> None:
        outer_call = ctx.call
        if where == "the call itself":
            await scope_the_outer_call(outer_call)
        else:

            @miniagent
            async def child(child_ctx: InteractionContext) -> None:
                await scope_the_outer_call(outer_call)

            await child.inquire()
        ctx.reply("still running")

    with anyio.fail_after(HANG_GUARD):
        async with MiniAgents():
            assert [m.content for m in await outer.inquire()] == ["still running"]
    assert len(refused) == 1 and "'outer'" in refused[0] and "inside that call" in refused[0]


async def test_an_initiate_call_block_finishes_the_input_and_cancels_the_running_call() -> None:
    recorder = Recorder()
    async with MiniAgents(call_observers=[recorder]):
        async with echo_each.initiate_call() as call:
            assert isinstance(call, AgentCall)
            call.send("a")
            replies = call.reply_sequence(finish_call=False)
            first = await replies.__aiter__().__anext__()
            assert first.content == "a"
        assert call.done
        with anyio.fail_after(HANG_GUARD):
            assert contents(await call.input_sequence()) == ["a"]  # the input was finished
        with pytest.raises(SequenceClosedError):
            call.send("b")
        await check_cancelled_after(replies, ["a"])
    assert recorder.outcomes() == {"echo_each": "cancelled"}


async def test_an_initiate_call_block_leaves_a_completed_call_unaffected() -> None:
    recorder = Recorder()
    async with MiniAgents(call_observers=[recorder]):
        async with echo.initiate_call() as call:
            call.send("x")
            assert contents(await call.reply_sequence()) == ["x"]
        assert await drain(call.reply_sequence()) == (["x"], None)
    assert recorder.outcomes() == {"echo": "completed"}


async def test_an_exception_in_an_initiate_call_block_ends_the_call_and_propagates() -> None:
    recorder = Recorder()
    async with MiniAgents(call_observers=[recorder]):
        with pytest.raises(BodyError):  # noqa: PT012 - raised in the scoped block
            async with echo_each.initiate_call() as call:
                call.send("a")  # the input stays open: the call waits for more
                raise BodyError("from the body")
        assert call.done
        seen, error = await drain(call.reply_sequence())
        assert seen == ["a"][: len(seen)] and isinstance(error, AgentCallCancelledError)
    assert recorder.outcomes() == {"echo_each": "cancelled"}


async def test_an_initiate_call_block_raises_an_unobserved_failure_when_left_normally() -> None:
    async with MiniAgents():
        with pytest.raises(Boom, match="the call failed"):
            async with fails.initiate_call() as call:
                await until_done(call.reply_sequence())


# -- LLM streams --------------------------------------------------------------------------------------------


def openai_options(server: FakeLLMServer) -> dict[str, Any]:
    return {"model": "gpt-test", "base_url": server.openai_base_url, "api_key": "sk-test"}


async def test_leaving_a_scoped_llm_call_after_its_first_token_closes_the_http_stream() -> None:
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["a", "b"], hang_after=2))  # the role chunk, "a", then nothing
        tokens: list[str] = []
        # The context (and its pooled HTTP client) stays open: only leaving the block can close the stream.
        async with MiniAgents():
            async with openai_agent.inquire("q", **openai_options(server)) as replies:
                async for promise in replies.promises():
                    async for token in promise:
                        tokens.append(token)
                        break
                    break
            assert replies.done
            assert tokens == ["a"]
            with anyio.fail_after(HANG_GUARD):
                await server.requests[0].wait_disconnected()
            assert not server.requests[0].response_complete
            await check_cancelled_after(replies, [])


async def test_leaving_after_the_first_message_closes_the_http_stream_of_a_nested_llm_call() -> None:
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["first answer"]), openai_stream(["second", " answer"], hang_after=2))

        @miniagent
        async def asks_twice(ctx: InteractionContext) -> None:
            ctx.reply(await openai_agent.inquire("one", **openai_options(server)))
            ctx.reply(openai_agent.inquire("two", **openai_options(server)))

        recorder = Recorder()
        async with MiniAgents(call_observers=[recorder]):
            async with asks_twice.inquire() as replies:
                async for message in replies:
                    assert message.content == "first answer"
                    with anyio.fail_after(HANG_GUARD):
                        await server.wait_for_requests(2)  # the nested call is streaming its answer
                    break
            assert recorder.unfinished() == []
            with anyio.fail_after(HANG_GUARD):
                await server.requests[1].wait_disconnected()
            assert server.requests[0].response_complete and not server.requests[1].response_complete
            await check_cancelled_after(replies, ["first answer"])
        assert recorder.outcome_list() == [
            ("asks_twice", "cancelled"),
            ("openai_agent", "cancelled"),
            ("openai_agent", "completed"),
        ]


# -- property: random call trees, random ways to leave the block ---------------------------------------------


class TreeError(Exception):
    """The failure of a node of a call tree."""

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node} failed")
        self.node = node


StepKind = Literal["reply", "stream", "pause", "forward", "await", "background"]


@attrs.frozen
class Step:
    """One step of a node: reply a text (or stream it), pause, or call a child (forward / await / ignore it)."""

    kind: StepKind
    delay: Delay = None
    child: Node | None = None


@attrs.frozen
class Node:
    """An agent of a call tree: its steps in order, then it returns, hangs forever or fails."""

    name: str
    steps: tuple[Step, ...]
    ending: Literal["return", "hang", "fail"]

    def label(self, index: int) -> str:
        return f"{self.name}/{index}"

    def ideal(self) -> tuple[str, ...]:
        """The replies if nothing hung or failed, in order: every observation is a subsequence of them."""
        replies: list[str] = []
        for index, step in enumerate(self.steps):
            if step.kind in ("reply", "stream"):
                replies.append(self.label(index))
            elif step.kind == "forward":
                assert step.child is not None
                replies.extend(step.child.ideal())
            elif step.kind == "await":
                assert step.child is not None
                replies.append(f"{self.label(index)} got {len(step.child.ideal())}")
        return tuple(replies)


def is_subsequence(items: list[str], of: list[str]) -> bool:
    """Whether *items* are elements of *of*, each at most once, in the same order."""
    rest = iter(of)
    return all(item in rest for item in items)


@st.composite
def call_trees(draw: st.DrawFn, name: str = "r", depth: int = 0, max_depth: int = 2) -> Node:
    kinds: list[StepKind] = ["reply", "stream", "pause"]
    if depth < max_depth:
        kinds += ["forward", "await", "background"]
    steps = []
    for index in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(kinds))
        child = None
        if kind in ("forward", "await", "background"):
            child = draw(call_trees(f"{name}.{index}", depth + 1, max_depth))
        steps.append(Step(kind, draw(delays(0.002)), child))
    endings: list[Literal["return", "hang", "fail"]] = ["return", "return", "hang", "fail"]
    ending = draw(st.sampled_from(endings))
    return Node(name, tuple(steps), ending)


@attrs.define
class Probe:
    """Agent bodies that are running, and pauses in progress (a pause ends by itself: not a hang)."""

    running: dict[str, int] = attrs.field(factory=dict)
    pausing: int = 0

    def enter(self, name: str) -> None:
        self.running[name] = self.running.get(name, 0) + 1

    def exit(self, name: str) -> None:
        self.running[name] -= 1
        if not self.running[name]:
            del self.running[name]

    async def pause(self, delay: Delay) -> None:
        if delay is None:
            return
        if delay <= 0:
            await anyio.lowlevel.checkpoint()
            return
        self.pausing += 1
        try:
            await anyio.sleep(delay)
        finally:
            self.pausing -= 1


def tree_agent(node: Node, probe: Probe) -> MiniAgent:
    async def tokens(label: str, delay: Delay) -> AsyncIterator[str]:
        yield label[:1]
        await probe.pause(delay)
        yield label[1:]

    async def body(ctx: InteractionContext) -> None:
        probe.enter(node.name)
        try:
            for index, step in enumerate(node.steps):
                if step.kind == "reply":
                    ctx.reply(node.label(index))
                elif step.kind == "stream":
                    ctx.reply(TextMessage.stream(tokens(node.label(index), step.delay)))
                elif step.kind == "pause":
                    await probe.pause(step.delay)
                else:
                    assert step.child is not None
                    child_replies = tree_agent(step.child, probe).inquire()
                    if step.kind == "forward":
                        ctx.reply(child_replies)
                    elif step.kind == "await":
                        got = await child_replies
                        ctx.reply(f"{node.label(index)} got {len(got)}")
            if node.ending == "hang":
                await anyio.sleep_forever()
            elif node.ending == "fail":
                raise TreeError(node.name)
        finally:
            probe.exit(node.name)

    return MiniAgent(body, alias=node.name)


#: How the body leaves the block: break (or end) / raise after k messages, or be cancelled from outside after
#: it saw k messages and another task made j checkpoints.
Exit = tuple[Literal["break", "raise", "cancel"], int, int]

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)


@PROPERTY
@given(
    tree=call_trees(),
    leave=st.one_of(
        st.tuples(st.sampled_from(["break", "raise"]), st.integers(0, 6), st.just(0)),
        st.tuples(st.just("cancel"), st.integers(0, 4), st.integers(0, 12)),
    ),
    via_promises=st.booleans(),
)
async def test_leaving_a_scoped_call_leaves_no_running_call_and_loses_no_completed_message(
    tree: Node, leave: Exit, via_promises: bool
) -> None:
    how, count, checkpoints = leave
    recorder, probe = Recorder(), Probe()
    persisted: set[str] = set()
    seen: list[Message] = []
    progress = [anyio.Event()]  # set (and replaced) whenever the body saw one more message
    held: list[MessageSequencePromise] = []
    at_exit: list[tuple[bool, list[str], dict[str, int]]] = []
    body_scope = anyio.CancelScope()

    async def body() -> None:
        with body_scope:
            try:
                try:
                    async with tree_agent(tree, probe).inquire() as replies:
                        held.append(replies)
                        if how == "raise" and count == 0:
                            raise BodyError("at once")
                        if how == "cancel" or count > 0:
                            items: AsyncIterator[Any] = (
                                replies.promises() if via_promises else replies.__aiter__()
                            )
                            async for item in items:
                                seen.append(await item if via_promises else item)
                                progress[0].set()
                                progress[0] = anyio.Event()
                                if how != "cancel" and len(seen) >= count:
                                    if how == "raise":
                                        raise BodyError(f"after {count} messages")
                                    break
                finally:
                    # Right after the block, by whatever path it was left.
                    at_exit.append((held[0].done, recorder.unfinished(), dict(probe.running)))
            except (BodyError, TreeError, AgentCallCancelledError):
                # The body's own error, or how the replies ended while the body read them (a message streamed
                # by a child that the tree's failure cancelled ends cancelled).
                pass

    async def cancel_from_outside() -> None:
        while len(seen) < count:
            await progress[0].wait()
        for _ in range(checkpoints):
            await anyio.lowlevel.checkpoint()
        body_scope.cancel()

    async def hang_guard() -> None:
        # The tree may hang before the body reached its exit point: when nothing can make progress any more
        # (pauses end by themselves), the body is cancelled from outside, another way of leaving the block.
        while True:
            await anyio.wait_all_tasks_blocked()
            if probe.pausing:
                await anyio.sleep(0.002)
                continue
            event("the tree hung: the body was cancelled from outside")
            body_scope.cancel()
            return

    after: list[str] = []
    error: Exception | None = None
    exit_error: Exception | None = None
    try:
        async with MiniAgents(
            call_observers=[recorder], on_persist_message=lambda message: persisted.add(message.hash_key)
        ):
            async with anyio.create_task_group() as helpers:
                helpers.start_soon(hang_guard)
                if how == "cancel":
                    helpers.start_soon(cancel_from_outside)
                await body()
                helpers.cancel_scope.cancel()
            after, error = await drain(held[0])
    except Exception as exc:
        exit_error = exc

    event(f"left by {how}; saw {min(len(seen), 3)}{'+' if len(seen) >= 3 else ''} messages")
    event(f"replies ended with {type(error).__name__ if error else 'completion'}")
    # No orphan: when the block was left, the call and every call it started had ended.
    assert at_exit == [(True, [], {})], at_exit
    assert recorder.unfinished() == [] and len(recorder.finished) == len(recorder.started)
    # No lost message: what the body saw comes first, in order, when the replies are read afterwards...
    seen_contents = [message.content for message in seen]
    assert after[: len(seen_contents)] == seen_contents, (seen_contents, after)
    # ...and the replies are what the tree makes, each once, in its order.  (Not always a prefix of it: replies
    # queued behind a forwarded sequence that the cancellation or failure cut short are salvaged after the
    # part of it that was produced.)
    ideal = list(tree.ideal())
    assert is_subsequence(after, ideal), (after, ideal)
    if error is None:
        assert after == ideal
    else:
        assert isinstance(error, (AgentCallCancelledError, TreeError)), error
    # Every message the body saw reached the persistence handler by the context's exit.
    assert {message.hash_key for message in seen} <= persisted
    # The context only raises failures of the tree that nobody observed (e.g. of an ignored child).
    if exit_error is not None:
        assert all(isinstance(leaf, TreeError) for leaf in leaves(exit_error)), exit_error
