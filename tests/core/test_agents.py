"""Agents and calls: decoration, kwargs, parallelism, structure, full duplex, ordering, achain_loop."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from core_helpers import contents, echo, ignores_input

from miniagents import (
    AWAIT,
    CLEAR,
    InteractionContext,
    Message,
    MessagePromise,
    MiniAgent,
    MiniAgents,
    NoActiveContextError,
    SequenceClosedError,
    StopLoop,
    TextMessage,
    achain_loop,
    miniagent,
    share_by_reference,
)

pytestmark = pytest.mark.anyio


# -- decoration -----------------------------------------------------------------------------------------------
def test_bare_decorator_uses_function_name_and_docstring() -> None:
    @miniagent
    async def summarizer(ctx: InteractionContext) -> None:
        """Summarizes things."""

    assert isinstance(summarizer, MiniAgent)
    assert summarizer.alias == "summarizer"
    assert summarizer.description == "Summarizes things."


def test_decorator_with_options_and_fork() -> None:
    @miniagent(alias="custom", description="desc", style="short")
    async def agent(ctx: InteractionContext, style: str, lang: str = "en") -> None:
        pass

    assert (agent.alias, agent.description, dict(agent.default_kwargs)) == (
        "custom",
        "desc",
        {"style": "short"},
    )
    forked = agent.fork(alias="fr", lang="fr")
    assert forked.alias == "fr" and forked.description == "desc"
    assert dict(forked.default_kwargs) == {"style": "short", "lang": "fr"}
    assert dict(agent.default_kwargs) == {"style": "short"}  # the original is unchanged


def test_non_async_function_is_rejected_with_a_clear_error() -> None:
    def not_async(ctx: InteractionContext) -> None:
        pass

    with pytest.raises(TypeError, match="async def"):
        miniagent(not_async)  # type: ignore[arg-type]


def test_unknown_default_kwarg_is_rejected_naming_the_agent() -> None:
    async def agent(ctx: InteractionContext, a: int = 1) -> None:
        pass

    with pytest.raises(TypeError, match=r"'agent'.*\['b'\]"):
        miniagent(agent, b=2)  # type: ignore[call-overload]


# -- kwargs ---------------------------------------------------------------------------------------------------
async def test_call_kwargs_are_frozen_before_the_agent_sees_them() -> None:
    seen: list[Any] = []

    @miniagent
    async def agent(ctx: InteractionContext, data: Any) -> None:
        seen.append(data)
        seen.append(ctx.kwargs)

    data = {"items": [1, 2], "tags": {"x"}}
    async with MiniAgents():
        replies = agent.inquire(data=data)
        data["items"].append(3)  # mutating the caller's object after the call changes nothing
        await replies
    frozen, kwargs = seen
    assert frozen == {"items": (1, 2), "tags": frozenset({"x"})}
    with pytest.raises(TypeError):
        frozen["new"] = 1
    assert kwargs["data"] is frozen


async def test_unfreezable_kwarg_raises_type_error_naming_its_path() -> None:
    async with MiniAgents():
        with pytest.raises(TypeError, match=r"data\['k'\]\[2\]"):
            echo.inquire(data={"k": [1, 2, object()]})


async def test_unexpected_and_missing_kwargs_name_the_agent() -> None:
    @miniagent
    async def strict(ctx: InteractionContext, needed: int) -> None:
        pass

    async with MiniAgents():
        with pytest.raises(TypeError, match=r"agent 'strict' got unexpected kwargs \['typo'\]"):
            strict.inquire(needed=1, typo=2)
        with pytest.raises(TypeError, match=r"agent 'strict' is missing required kwargs \['needed'\]"):
            strict.inquire()


async def test_calling_an_agent_outside_a_context_is_a_clear_error() -> None:
    with pytest.raises(NoActiveContextError, match="'echo'"):
        echo.inquire("hi")


# -- running --------------------------------------------------------------------------------------------------
async def test_inquire_starts_the_call_without_being_awaited() -> None:
    ran = anyio.Event()

    @miniagent
    async def side_effect(ctx: InteractionContext) -> None:
        ran.set()

    async with MiniAgents():
        side_effect.inquire()
        with anyio.fail_after(5):
            await ran.wait()


async def test_independent_inquiries_run_in_parallel() -> None:
    # Each agent waits until all ten have started: this only finishes if they run concurrently.
    started = 0
    all_started = anyio.Event()

    @miniagent
    async def waiter(ctx: InteractionContext, index: int) -> None:
        nonlocal started
        started += 1
        if started == 10:
            all_started.set()
        await all_started.wait()
        ctx.reply(str(index))

    async with MiniAgents():
        with anyio.fail_after(5):
            replies = [waiter.inquire(index=i) for i in range(10)]
            results = [contents(await r) for r in replies]
    assert results == [[str(i)] for i in range(10)]


async def test_ten_sleeping_agents_finish_together_not_one_after_another() -> None:
    @miniagent
    async def sleeper(ctx: InteractionContext) -> None:
        await anyio.sleep(0.2)
        ctx.reply("done")

    async with MiniAgents():
        start = anyio.current_time()
        replies = [sleeper.inquire() for _ in range(10)]
        for r in replies:
            await r
        elapsed = anyio.current_time() - start
    assert elapsed < 1.0  # sequential would take 2 s; parallel takes ~0.2 s


async def test_reply_sequence_ends_only_after_the_agent_and_its_children_finished() -> None:
    events: list[str] = []

    async def child(ctx: InteractionContext) -> None:
        await anyio.sleep(0.01)
        ctx.reply("from child")
        events.append("child done")

    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        ctx.start_soon(child, ctx)
        ctx.reply("from parent")
        events.append("agent returned")

    async with MiniAgents():
        replies = await parent.inquire()
        events.append("replies complete")
    assert contents(replies) == ["from parent", "from child"]
    assert events == ["agent returned", "child done", "replies complete"]


async def test_leaving_the_context_waits_for_every_call() -> None:
    finished: list[int] = []

    @miniagent
    async def slow(ctx: InteractionContext, n: int) -> None:
        await anyio.sleep(0.01 * n)
        finished.append(n)

    async with MiniAgents():
        for n in range(5):
            slow.inquire(n=n)  # nobody awaits the replies
    assert sorted(finished) == [0, 1, 2, 3, 4]


async def test_context_run_works_on_both_backends_with_coroutine_or_function() -> None:
    # MiniAgents.run starts its own loop, so run it in a worker thread from this async test.
    async def main() -> tuple[str, ...]:
        return tuple(contents(await echo.inquire(["a", "b"])))

    for backend in ("trio", "asyncio"):
        result = await anyio.to_thread.run_sync(lambda b=backend: MiniAgents().run(main(), backend=b))
        assert result == ("echo: a", "echo: b")
        result = await anyio.to_thread.run_sync(lambda b=backend: MiniAgents().run(main, backend=b))
        assert result == ("echo: a", "echo: b")


async def test_contexts_nest_and_the_innermost_is_current() -> None:
    async with MiniAgents() as outer:
        assert MiniAgents.current() is outer
        async with MiniAgents() as inner:
            assert MiniAgents.current() is inner
            assert contents(await echo.inquire("x")) == ["echo: x"]
        assert MiniAgents.current() is outer
    with pytest.raises(NoActiveContextError):
        MiniAgents.current()


async def test_an_inquiry_rejected_with_type_error_starts_no_call() -> None:
    ran: list[list[str]] = []

    @miniagent
    async def recorder(ctx: InteractionContext) -> None:
        ran.append([m.content async for m in ctx.messages])

    async with MiniAgents():
        with pytest.raises(TypeError):
            recorder.inquire(["a", 5])
    assert ran == []


# -- full duplex ----------------------------------------------------------------------------------------------
async def test_full_duplex_replies_stream_while_input_is_still_open() -> None:
    async with MiniAgents():
        call = echo.initiate_call()
        replies = call.reply_sequence(finish_call=False)
        seen: list[str] = []
        iterator = replies.__aiter__()
        for word in ("a", "b", "c"):
            call.send(word)
            with anyio.fail_after(5):
                seen.append(str(await iterator.__anext__()))  # reply arrives before the input is finished
        call.finish()
        call.finish()  # idempotent
        assert seen == ["echo: a", "echo: b", "echo: c"]
        assert contents(await replies) == seen


async def test_send_is_chainable_and_sending_after_finish_is_an_error() -> None:
    async with MiniAgents():
        call = echo.initiate_call().send("a").send(["b", ("c",)])
        replies = call.reply_sequence()
        with pytest.raises(SequenceClosedError, match="'echo'"):
            call.send("late")
        assert contents(await replies) == ["echo: a", "echo: b", "echo: c"]


async def test_a_forgotten_finish_never_hangs_the_block() -> None:
    @miniagent
    async def collector(ctx: InteractionContext) -> None:
        ctx.reply(await ctx.messages)

    with anyio.fail_after(5):
        async with MiniAgents():
            call = collector.initiate_call().send(["a", "b"])
            replies = call.reply_sequence(finish_call=False)
    assert contents(await replies) == ["a", "b"]


async def test_calls_an_agent_leaves_open_are_finished_when_it_returns() -> None:
    @miniagent
    async def collector(ctx: InteractionContext) -> None:
        ctx.reply(await ctx.messages)

    @miniagent
    async def forgetful(ctx: InteractionContext) -> None:
        call = collector.initiate_call().send("x")
        ctx.reply(call.reply_sequence(finish_call=False))

    with anyio.fail_after(5):
        async with MiniAgents():
            assert contents(await forgetful.inquire()) == ["x"]


async def test_reply_after_the_call_finished_is_an_error_naming_the_agent() -> None:
    leaked: list[InteractionContext] = []

    @miniagent
    async def leaker(ctx: InteractionContext) -> None:
        leaked.append(ctx)

    async with MiniAgents():
        await leaker.inquire()
        with pytest.raises(SequenceClosedError, match="'leaker' replied after its call finished"):
            leaked[0].reply("too late")


# -- ordering -------------------------------------------------------------------------------------------------
async def test_ordered_replies_keep_their_order_whatever_the_timing() -> None:
    @miniagent
    async def sleeper(ctx: InteractionContext, delay: float, text: str) -> None:
        await anyio.sleep(delay)
        ctx.reply(text)

    @miniagent
    async def orderly(ctx: InteractionContext) -> None:
        ctx.reply(sleeper.inquire(delay=0.03, text="first"))
        ctx.reply("second")
        ctx.reply(sleeper.inquire(delay=0.0, text="third"))

    async with MiniAgents():
        assert contents(await orderly.inquire()) == ["first", "second", "third"]


async def test_out_of_order_replies_go_ahead_of_ordered_ones_not_ready_yet() -> None:
    gate = anyio.Event()

    @miniagent
    async def gated(ctx: InteractionContext) -> None:
        await gate.wait()
        ctx.reply("ordered, late")

    @miniagent
    async def mixed(ctx: InteractionContext) -> None:
        ctx.reply(gated.inquire())
        ctx.reply_out_of_order("out of order 1")
        ctx.reply_out_of_order(["out of order 2", "out of order 3"])
        gate.set()

    async with MiniAgents():
        assert contents(await mixed.inquire()) == [
            "out of order 1",
            "out of order 2",
            "out of order 3",
            "ordered, late",
        ]


async def test_replies_flatten_nested_values_in_order() -> None:
    async def agen() -> Any:
        yield "g1"
        yield ["g2", {"content": "g3", "kind": "dict"}]

    @miniagent
    async def flattener(ctx: InteractionContext) -> None:
        ctx.reply(
            ["a", ("b", ["c"]), TextMessage(content="d"), MessagePromise.resolved(Message(content="e"))]
        )
        ctx.reply(agen())
        ctx.reply(echo.inquire("f"))
        ctx.reply(x for x in ["h", "i"])

    async with MiniAgents():
        replies = await flattener.inquire()
    assert contents(replies) == ["a", "b", "c", "d", "e", "g1", "g2", "g3", "echo: f", "h", "i"]
    assert type(replies[0]) is TextMessage and type(replies[4]) is Message
    assert replies[7].kind == "dict"


async def test_a_value_that_is_not_a_message_is_rejected_at_reply_time() -> None:
    @miniagent
    async def bad(ctx: InteractionContext) -> None:
        ctx.reply(42)  # type: ignore[arg-type]

    async with MiniAgents():
        with pytest.raises(TypeError, match=r"cannot send a value of type builtins\.int"):
            await bad.inquire()


async def test_out_of_order_replies_available_at_the_same_moment_keep_the_order_they_were_sent_in() -> None:
    async def ready(text: str) -> AsyncIterator[str]:
        yield text  # available as soon as its pump runs

    @miniagent
    async def fan(ctx: InteractionContext) -> None:
        for text in "abcd":
            ctx.reply_out_of_order(ready(text))

    async with MiniAgents():
        orders = {"".join(contents(await fan.inquire())) for _ in range(20)}
    assert orders == {"abcd"}


# -- memory ---------------------------------------------------------------------------------------------------
async def test_finished_calls_and_their_promises_are_freed() -> None:
    async with MiniAgents():
        replies = echo.inquire(["a", "b"])
        await replies
        ref = weakref.ref(replies)
        del replies
        for _ in range(5):  # asyncio drops its reference to a finished task one loop iteration later
            await anyio.sleep(0)
        gc.collect()
        assert ref() is None


async def test_a_finished_call_whose_input_was_left_open_is_freed() -> None:
    async with MiniAgents():
        call = ignores_input.initiate_call().send("x")
        replies = call.reply_sequence(finish_call=False)
        assert contents(await replies) == ["done"]
        ref = weakref.ref(call)
        del call, replies
        for _ in range(5):
            await anyio.sleep(0)
        gc.collect()
        alive = ref() is not None
    assert not alive


# -- achain_loop ----------------------------------------------------------------------------------------------
async def test_achain_loop_feeds_each_agent_the_previous_output() -> None:
    @miniagent
    async def upper(ctx: InteractionContext) -> None:
        async for msg in ctx.messages:
            ctx.reply(str(msg).upper())

    async with MiniAgents():
        result = await achain_loop([echo, AWAIT, upper], initial_input="hi", max_rounds=1)
        assert contents(result) == ["ECHO: HI"]
        result = await achain_loop([echo, upper], initial_input="x", max_rounds=2)
        assert contents(result) == ["ECHO: ECHO: X"]


async def test_achain_loop_clear_drops_the_output() -> None:
    @miniagent
    async def count(ctx: InteractionContext) -> None:
        ctx.reply(f"got {len(await ctx.messages)}")

    async with MiniAgents():
        assert contents(await achain_loop([echo, CLEAR, count], initial_input=["a", "b"], max_rounds=1)) == [
            "got 0"
        ]


async def test_achain_loop_stops_on_stop_loop_and_returns_the_last_output() -> None:
    rounds = 0

    @miniagent
    async def counter(ctx: InteractionContext) -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            raise StopLoop
        ctx.reply(f"round {rounds}")

    async with MiniAgents():
        result = await achain_loop([counter, AWAIT, echo])
    assert rounds == 3
    assert contents(result) == ["echo: round 2"]


async def test_achain_loop_rejects_a_list_without_agents() -> None:
    with pytest.raises(ValueError, match="at least one agent"):
        await achain_loop([AWAIT])


async def test_agents_functions_and_registered_types_pass_through_kwargs_unfrozen() -> None:
    class Client:
        pass

    seen: list[Any] = []

    @miniagent
    async def uses(ctx: InteractionContext, tools: Any = (), client: Any = None) -> None:
        seen.append((ctx.kwargs["tools"], client))

    async def tool() -> None:
        pass

    async with MiniAgents():
        with pytest.raises(TypeError, match=r"client: cannot freeze .*share_by_reference"):
            uses.inquire(client=Client())
        share_by_reference(Client)
        client = Client()
        await uses.inquire(tools=[echo, tool, len], client=client)
    assert seen == [((echo, tool, len), client)]
    with pytest.raises(TypeError, match="cannot freeze"):
        Message(content="x", client=client)  # message fields must serialise: never by reference


async def test_a_finished_call_is_freed_by_reference_counting_alone() -> None:
    # No reference cycle outlives a call: in a long-running process nothing waits for the cycle collector.
    gc.disable()
    try:
        async with MiniAgents():
            call = echo.initiate_call().send("x")
            replies = call.reply_sequence()
            await replies
            for _ in range(5):  # asyncio drops its reference to a finished task one loop iteration later
                await anyio.sleep(0)
            refs = weakref.ref(call), weakref.ref(replies)
            del call, replies
            assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()


async def test_stop_loop_ends_achain_loop_with_errors_as_messages() -> None:
    rounds = 0

    @miniagent
    async def counter(ctx: InteractionContext) -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 2:
            raise StopLoop
        ctx.reply(f"round {rounds}")

    with anyio.move_on_after(2):
        async with MiniAgents(errors_as_messages=True):
            await achain_loop([counter])
    assert rounds == 2


async def test_stop_loop_from_an_agent_whose_output_is_cleared_still_ends_the_loop() -> None:
    rounds = 0

    @miniagent
    async def stopper(ctx: InteractionContext) -> None:
        nonlocal rounds
        rounds += 1
        raise StopLoop

    with anyio.move_on_after(2):
        async with MiniAgents():
            await achain_loop([stopper, CLEAR, ignores_input])
    assert rounds == 1
