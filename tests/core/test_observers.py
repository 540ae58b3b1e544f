"""Call observers: told when every call starts, runs and ends, with the call tree and the outcome."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import AgentCall, CallOutcome, InteractionContext, MiniAgents, miniagent

pytestmark = pytest.mark.anyio

_where: contextvars.ContextVar[int | None] = contextvars.ContextVar("_where", default=None)


class Recorder:
    """Records the three events of every call and sets a context variable in the call's task."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, Any]] = []
        self.parents: dict[int, int | None] = {}
        self.started_in: dict[int, int | None] = {}

    def call_started(self, call: AgentCall) -> str:
        self.events.append(("started", call.call_id, call.agent.alias))
        self.parents[call.call_id] = None if call.parent is None else call.parent.call_id
        self.started_in[call.call_id] = _where.get()
        return f"state-{call.call_id}"

    def call_running(self, call: AgentCall, state: str) -> None:
        assert state == f"state-{call.call_id}"
        _where.set(call.call_id)
        self.events.append(("running", call.call_id, None))

    def call_finished(
        self, call: AgentCall, state: str, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        assert state == f"state-{call.call_id}"
        stats = call.statistics()
        assert stats.done and stats.call_id == call.call_id
        self.events.append(
            (
                "finished",
                call.call_id,
                (outcome, type(error).__name__ if error else None, stats.reply_messages),
            )
        )


@miniagent
async def echo(ctx: InteractionContext) -> None:
    ctx.reply(await ctx.messages)


@miniagent
async def boss(ctx: InteractionContext) -> None:
    ctx.reply(echo.inquire(ctx.messages))

    async def child() -> None:
        ctx.reply_out_of_order(await echo.inquire("from a child task"))

    ctx.start_soon(child)


@miniagent
async def failing(ctx: InteractionContext) -> None:
    ctx.reply("partial")
    raise ValueError("boom")


async def test_every_call_is_observed_once_with_its_parent_and_outcome() -> None:
    recorder = Recorder()
    async with MiniAgents(call_observers=[recorder]):
        replies = await boss.inquire(["a", "b"])
    assert [str(m) for m in replies] == ["a", "b", "from a child task"]
    started = [e for e in recorder.events if e[0] == "started"]
    finished = {e[1]: e[2] for e in recorder.events if e[0] == "finished"}
    running = [e[1] for e in recorder.events if e[0] == "running"]
    assert [alias for _, _, alias in started] == ["boss", "echo", "echo"]
    boss_id = started[0][1]
    for _, call_id, _ in started[1:]:
        # Started from the agent function and from a ctx.start_soon child: both are children of boss, and
        # a context variable set in call_running is seen where the children were started.
        assert recorder.parents[call_id] == boss_id
        assert recorder.started_in[call_id] == boss_id
    assert sorted(running) == sorted(finished) == sorted(e[1] for e in started)
    assert finished[boss_id] == ("completed", None, 3)


async def test_failed_and_cancelled_outcomes() -> None:
    recorder = Recorder()
    with pytest.raises(ValueError, match="boom"):
        async with MiniAgents(call_observers=[recorder]):
            await failing.inquire()
    assert [e[2] for e in recorder.events if e[0] == "finished"] == [("failed", "ValueError", 1)]

    recorder = Recorder()
    async with MiniAgents(call_observers=[recorder]):
        call = echo.initiate_call()
        while ("running", call.call_id, None) not in recorder.events:
            await anyio.sleep(0)  # the call waits for its input, which never comes
        call.cancel()
        cancelled_before_start = echo.initiate_call()
        cancelled_before_start.cancel()
        for c in (call, cancelled_before_start):
            with pytest.raises(Exception, match="cancelled"):
                await c.reply_sequence()
    outcomes = [e[2][0] for e in recorder.events if e[0] == "finished"]
    assert outcomes == ["cancelled", "cancelled"]
    # A call cancelled before its task ran is never "running".
    assert [e[1] for e in recorder.events if e[0] == "running"] == [call.call_id]


async def test_an_observer_error_at_start_is_raised_to_the_caller() -> None:
    class Refuses(Recorder):
        def call_started(self, call: AgentCall) -> str:
            raise RuntimeError("observer says no")

    async with MiniAgents(call_observers=[Refuses()]):
        with pytest.raises(RuntimeError, match="observer says no"):
            echo.inquire("x")


async def test_an_observer_error_at_finish_is_raised_when_the_block_exits() -> None:
    class Broken(Recorder):
        def call_finished(self, *args: Any) -> None:
            raise RuntimeError("observer broke")

    with pytest.raises(RuntimeError, match="observer broke"):
        async with MiniAgents(call_observers=[Broken()]):
            assert [str(m) for m in await echo.inquire("x")] == ["x"]


async def test_no_observers_means_no_observation_state() -> None:
    async with MiniAgents() as mas:
        assert mas.observers == ()
        call = echo.initiate_call()
        assert call._observations is None
        call.send("x")
        assert [str(m) for m in await call.reply_sequence()] == ["x"]
        assert call.statistics().input_messages == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fanout=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=4),
    cancel_at=st.integers(0, 6),
)
async def test_property_each_call_is_started_and_finished_exactly_once(
    fanout: list[int], cancel_at: int
) -> None:
    """For random trees of nested calls with a cancellation somewhere, every started call ends exactly once,
    its `running` comes between the two (or never), and the recorded parents form the tree that ran."""

    @miniagent
    async def node(ctx: InteractionContext, depth: int) -> None:
        if depth >= len(fanout):
            ctx.reply(f"leaf {depth}")
            await anyio.sleep(0)
            return
        for _ in range(fanout[depth]):
            ctx.reply(node.inquire(depth=depth + 1))

    recorder = Recorder()
    async with MiniAgents(call_observers=[recorder]):
        call = node.initiate_call(depth=0)
        replies = call.reply_sequence()
        for _ in range(cancel_at):
            await anyio.sleep(0)
        call.cancel()
        with contextlib.suppress(Exception):
            await replies
    per_call: dict[int, list[str]] = {}
    for kind, call_id, _ in recorder.events:
        per_call.setdefault(call_id, []).append(kind)
    for kinds in per_call.values():
        assert kinds in (["started", "running", "finished"], ["started", "finished"])
    ids = set(per_call)
    roots = [c for c in ids if recorder.parents[c] is None]
    assert roots == [call.call_id]
    assert all(recorder.parents[c] in ids for c in ids - {call.call_id})
