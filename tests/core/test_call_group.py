"""A call's own task group (trio's nursery on trio, a scoped child group on asyncio) behaves like a task group.

On asyncio a call runs its agent function in a cancel scope of its own and its children as plain asyncio tasks
(each in a scope the call owns, a watcher carrying the context's cancellation down), which is much cheaper than
an anyio task group per call.  These tests pin the
task-group guarantees the runtime relies on, on both backends.

A child task a call starts belongs to that call: it can keep sending to calls it started after the agent
function returned, a call it forgets to finish never hangs the block, and it stays the call's even when started
inside a nested ``MiniAgents`` block.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from core_helpers import contents, echo, outcome
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import (
    AgentCall,
    CallOutcome,
    InteractionContext,
    MiniAgents,
    miniagent,
)

pytestmark = pytest.mark.anyio


class Outcomes:
    def __init__(self) -> None:
        self.by_alias: dict[str, list[CallOutcome]] = {}

    def call_started(self, call: AgentCall) -> None:
        return None

    def call_running(self, call: AgentCall, state: None) -> None:
        pass

    def call_finished(self, call: AgentCall, state: None, outcome: CallOutcome, error: Any) -> None:
        self.by_alias.setdefault(call.agent.alias, []).append(outcome)


@miniagent
async def returns_at_once_with_a_waiting_child(ctx: InteractionContext) -> None:
    async def child() -> None:
        await anyio.sleep_forever()

    ctx.reply("started")
    ctx.start_soon(child)


async def test_an_outer_cancellation_while_a_call_waits_for_its_children_cancels_the_call() -> None:
    outcomes = Outcomes()
    with anyio.CancelScope() as scope:
        async with MiniAgents(call_observers=[outcomes]):
            async for _ in returns_at_once_with_a_waiting_child.inquire():
                scope.cancel()
    assert scope.cancelled_caught
    assert outcomes.by_alias == {"returns_at_once_with_a_waiting_child": ["cancelled"]}


async def test_the_replies_end_only_after_every_child_finished() -> None:
    finished: list[str] = []

    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        async def child(n: int) -> None:
            for _ in range(n):
                await anyio.lowlevel.checkpoint()
            finished.append(f"child {n}")

        for n in (3, 1, 2):
            ctx.start_soon(child, n)

    async with MiniAgents():
        await parent.inquire()
        assert sorted(finished) == ["child 1", "child 2", "child 3"]


async def test_a_child_started_by_a_cancelled_call_never_runs_its_body() -> None:
    ran: list[str] = []

    @miniagent
    async def cancels_itself(ctx: InteractionContext) -> None:
        ctx.call.cancel()

        async def child() -> None:
            await anyio.lowlevel.checkpoint()
            ran.append("child")

        ctx.start_soon(child)
        await anyio.sleep_forever()

    async with MiniAgents():
        with pytest.raises(Exception, match="cancelled"):
            await cancels_itself.inquire()
    assert ran == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    children=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=4),
    cancel_after=st.integers(min_value=0, max_value=8),
    cancel_outer=st.booleans(),
)
async def test_property_cancellation_reaches_every_child_and_every_call_ends_once(
    children: list[int], cancel_after: int, cancel_outer: bool
) -> None:
    """Calls whose children take random numbers of steps (or forever), cancelled from outside the context
    or by `AgentCall.cancel()` after a random number of steps: every call ends exactly once, a call that
    still had a running child ends "cancelled", and no child is left running."""
    running: set[tuple[int, int]] = set()
    outcomes = Outcomes()

    @miniagent
    async def worker(ctx: InteractionContext, index: int, steps: int) -> None:
        async def child(k: int) -> None:
            running.add((index, k))
            try:
                if steps == 4:
                    await anyio.sleep_forever()
                for _ in range(steps):
                    await anyio.lowlevel.checkpoint()
            finally:
                running.discard((index, k))

        for k in range(2):
            ctx.start_soon(child, k)
        ctx.reply(f"worker {index}")

    calls: list[AgentCall] = []
    with anyio.CancelScope() as scope:
        async with MiniAgents(call_observers=[outcomes]):
            for index, steps in enumerate(children):
                calls.append(worker.initiate_call(index=index, steps=steps))
                calls[-1].finish()
            for _ in range(cancel_after):
                await anyio.lowlevel.checkpoint()
            if cancel_outer:
                scope.cancel()
            for call in calls:
                call.cancel()
            errors: list[str] = []
            for call in calls:
                try:
                    await call.reply_sequence()
                except Exception as exc:
                    errors.append(str(exc))
            assert all("cancelled" in e for e in errors), errors
    assert running == set()
    ended = outcomes.by_alias.get("worker", [])
    assert len(ended) == len(children)
    assert set(ended) <= {"completed", "cancelled"}
    if any(steps == 4 for steps in children):
        assert "cancelled" in ended  # a child that never ends can only be stopped by the cancellation


# -- child tasks of a call -----------------------------------------------------------------------------------
async def test_a_call_a_child_task_starts_after_the_agent_returned_never_hangs_the_block() -> None:
    @miniagent
    async def collector(ctx: InteractionContext) -> None:
        ctx.reply(await ctx.messages)

    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        async def child() -> None:
            await anyio.sleep(0.02)  # the agent function has returned by now
            collector.initiate_call().send("x")  # forgotten finish()

        ctx.start_soon(child)

    with anyio.fail_after(2):
        async with MiniAgents():
            await parent.inquire()


async def test_a_child_task_can_keep_sending_to_a_call_it_started_while_the_agent_returns() -> None:
    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        async def child() -> None:
            call = echo.initiate_call().send("a")
            await anyio.sleep(0.05)  # the agent function returns meanwhile
            call.send("b")
            ctx.reply(call.reply_sequence())

        ctx.start_soon(child)
        await anyio.sleep(0.01)

    with anyio.fail_after(3):
        async with MiniAgents():
            result = await outcome(parent.inquire())
    assert not isinstance(result, BaseException), result
    assert contents(result) == ["echo: a", "echo: b"]


async def test_a_child_task_of_a_call_belongs_to_that_call_even_if_started_inside_a_nested_block() -> None:
    @miniagent
    async def parent(ctx: InteractionContext) -> None:
        async def child() -> None:
            await anyio.sleep(0.02)  # the nested block has exited by now; the call is still running
            ctx.reply(echo.inquire("x"))

        async with MiniAgents():
            ctx.start_soon(child)

    with anyio.fail_after(3):
        async with MiniAgents():
            result = await outcome(parent.inquire())
    assert not isinstance(result, BaseException), result
    assert contents(result) == ["echo: x"]
