"""Deep call chains: thousands of nested agent calls complete, fail and cancel cleanly, on trio and asyncio.

A chain is agent k calling agent k+1, down to depth N, either forwarding the replies (``ctx.reply(next.inquire())``)
or awaiting them (``ctx.reply(await next.inquire())``).  The depth is well past Python's recursion limit: nothing
in the runtime (nor in what it asks of trio or anyio) may recurse once per level.  The ``fail_after`` around each
block is only a hang detector, never a timing assertion.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import anyio
import attrs
import pytest
from core_helpers import BACKENDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import (
    AgentCall,
    AgentCallCancelledError,
    CallOutcome,
    InteractionContext,
    MiniAgent,
    MiniAgents,
    miniagent,
)
from miniagents.testing.limits import wait_all_tasks_blocked

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

#: Deeper than the recursion limit (1,000 by default), twice over: a per-level recursion anywhere fails here.
DEPTH = max(2000, 2 * sys.getrecursionlimit())
HANG_GUARD = 120  # seconds; a chain of DEPTH takes well under one on the 2-core machine
SHAPES = ("forward", "await")


class Outcomes:
    """A call observer: each call's outcome by its ``level`` kwarg, and calls that ended twice."""

    def __init__(self) -> None:
        self.by_level: dict[Any, CallOutcome] = {}
        self.calls: dict[Any, AgentCall] = {}
        self.finished_twice: list[Any] = []

    def call_started(self, call: AgentCall) -> None:
        self.calls[call.kwargs["level"]] = call

    def call_running(self, call: AgentCall, state: None) -> None:
        pass

    def call_finished(
        self, call: AgentCall, state: None, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        level = call.kwargs["level"]
        if level in self.by_level:
            self.finished_twice.append(level)
        self.by_level[level] = outcome


class Chain:
    """A chain of *depth* calls below the top one; the bottom returns, hangs or fails."""

    def __init__(self, depth: int, shape: str, bottom: str = "return") -> None:
        self.depth = depth
        self.shape = shape
        self.bottom = bottom
        self.bottom_reached = anyio.Event()
        self.running_code = 0
        self.agent = self._agent()

    def _agent(self) -> MiniAgent:
        chain = self

        @miniagent
        async def link(ctx: InteractionContext, level: int) -> None:
            chain.running_code += 1
            try:
                if level < chain.depth:
                    replies = link.inquire(ctx.messages, level=level + 1)
                    ctx.reply(replies if chain.shape == "forward" else await replies)
                    return
                chain.bottom_reached.set()
                if chain.bottom == "hang":
                    await anyio.sleep_forever()
                elif chain.bottom == "fail":
                    raise ValueError("the bottom of the chain failed")
                ctx.reply(f"bottom of {level}")
            finally:
                chain.running_code -= 1

        return link


def _assert_every_level_ended_once(outcomes: Outcomes, depth: int, outcome: CallOutcome) -> None:
    assert outcomes.finished_twice == []
    assert len(outcomes.by_level) == depth + 1
    assert set(outcomes.by_level.values()) == {outcome}


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_chain_deeper_than_the_recursion_limit_completes(shape: str) -> None:
    chain = Chain(DEPTH, shape)
    outcomes = Outcomes()
    with anyio.fail_after(HANG_GUARD):
        async with MiniAgents(call_observers=[outcomes]):
            replies = await chain.agent.inquire("go", level=0)
    assert [str(message) for message in replies] == [f"bottom of {DEPTH}"]
    _assert_every_level_ended_once(outcomes, DEPTH, "completed")


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_failure_at_the_bottom_of_a_deep_chain_reaches_the_top_caller(shape: str) -> None:
    chain = Chain(DEPTH, shape, bottom="fail")
    outcomes = Outcomes()
    with anyio.fail_after(HANG_GUARD):
        async with MiniAgents(call_observers=[outcomes]):
            with pytest.raises(ValueError, match="the bottom of the chain failed"):
                await chain.agent.inquire("go", level=0)
    _assert_every_level_ended_once(outcomes, DEPTH, "failed")
    assert chain.running_code == 0


@pytest.mark.parametrize("shape", SHAPES)
async def test_cancelling_the_top_call_of_a_deep_chain_cancels_every_level(shape: str) -> None:
    chain = Chain(DEPTH, shape, bottom="hang")
    outcomes = Outcomes()
    with anyio.fail_after(HANG_GUARD):
        async with MiniAgents(call_observers=[outcomes]):
            top = chain.agent.initiate_call(level=0)
            top.finish()
            await chain.bottom_reached.wait()
            top.cancel()
            with pytest.raises(AgentCallCancelledError):
                await top.reply_sequence()
    _assert_every_level_ended_once(outcomes, DEPTH, "cancelled")
    assert chain.running_code == 0


@pytest.mark.parametrize("shape", SHAPES)
async def test_cancelling_a_call_in_the_middle_of_a_deep_chain_cancels_the_part_below_it(shape: str) -> None:
    chain = Chain(DEPTH, shape, bottom="hang")
    outcomes = Outcomes()
    middle = DEPTH // 2
    with anyio.fail_after(HANG_GUARD):
        async with MiniAgents(call_observers=[outcomes]):
            top = chain.agent.initiate_call(level=0)
            top.finish()
            await chain.bottom_reached.wait()
            outcomes.calls[middle].cancel()
            with pytest.raises(AgentCallCancelledError):
                await top.reply_sequence()
    assert outcomes.finished_twice == []
    assert {outcomes.by_level[level] for level in range(middle, DEPTH + 1)} == {"cancelled"}
    # Above it, each call got its child's cancellation as the end of what it forwarded or awaited.
    assert {outcomes.by_level[level] for level in range(middle)} == {"failed"}
    assert chain.running_code == 0


@pytest.mark.parametrize("shape", SHAPES)
async def test_cancelling_the_scope_around_a_deep_block_ends_every_call(shape: str) -> None:
    chain = Chain(DEPTH, shape, bottom="hang")
    outcomes = Outcomes()
    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as scope:
            async with MiniAgents(call_observers=[outcomes]):
                top = chain.agent.initiate_call(level=0)
                top.finish()
                await chain.bottom_reached.wait()
                scope.cancel()
                await top.reply_sequence()
    assert scope.cancelled_caught
    _assert_every_level_ended_once(outcomes, DEPTH, "cancelled")
    assert chain.running_code == 0


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_move_on_after_around_a_deep_block_ends_it_cleanly(shape: str) -> None:
    """The deadline expires with the whole chain running: the block ends, nothing is left behind, and what
    reaches the deadline's scope is a cancellation it catches (not a cancel-scope or recursion error)."""
    chain = Chain(DEPTH, shape, bottom="hang")
    outcomes = Outcomes()
    with anyio.fail_after(HANG_GUARD):
        with anyio.move_on_after(HANG_GUARD) as scope:
            async with MiniAgents(call_observers=[outcomes]):
                chain.agent.inquire("go", level=0)
                await chain.bottom_reached.wait()
                scope.deadline = anyio.current_time()  # expires now, with every level running
                await anyio.sleep_forever()
    assert scope.cancelled_caught
    _assert_every_level_ended_once(outcomes, DEPTH, "cancelled")
    assert chain.running_code == 0


async def test_a_cancelled_deep_chain_leaves_its_block_as_a_flat_cancellation() -> None:
    """What a cancelled chain raises does not nest one exception group per level (trio takes ``repr()`` of a
    task's exception when the task ends: an exception nested thousands deep breaks trio's own run loop)."""
    chain = Chain(DEPTH, "forward", bottom="hang")
    raised: list[BaseException] = []
    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as scope:
            try:
                async with MiniAgents():
                    chain.agent.inquire("go", level=0)
                    await chain.bottom_reached.wait()
                    scope.cancel()
                    await anyio.sleep_forever()
            except BaseException as exc:
                raised.append(exc)
                raise
    assert scope.cancelled_caught
    assert len(raised) == 1
    assert _group_nesting(raised[0]) <= 2  # the block's own task groups, whatever the depth of the chain


def _group_nesting(exc: BaseException) -> int:
    deepest = 0
    pending = [(exc, 0)]
    while pending:
        current, depth = pending.pop()
        if isinstance(current, BaseExceptionGroup):
            pending.extend((sub, depth + 1) for sub in current.exceptions)
        else:
            deepest = max(deepest, depth)
    return deepest


@pytest.mark.parametrize("depth", [0, DEPTH])
async def test_an_outer_cancellation_reaches_the_children_of_a_call_whose_body_is_shielded(
    depth: int,
) -> None:
    """The bottom call waits, shielded, for its own child to end: a cancellation of the scope around the block
    must reach that child directly (as it reaches a nursery's children), not through the shielded body."""
    cleaned = anyio.Event()
    reached = anyio.Event()

    @miniagent
    async def link(ctx: InteractionContext, level: int) -> None:
        if level < depth:
            ctx.reply(link.inquire(level=level + 1))
            return

        async def child() -> None:
            try:
                reached.set()
                await anyio.sleep_forever()
            finally:
                cleaned.set()

        ctx.start_soon(child)
        with anyio.CancelScope(shield=True):
            await cleaned.wait()
        ctx.reply("the child was cancelled")

    outcomes = Outcomes()
    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as scope:
            async with MiniAgents(call_observers=[outcomes]):
                link.inquire(level=0)
                await reached.wait()
                scope.cancel()
    assert cleaned.is_set()
    assert outcomes.finished_twice == []
    assert len(outcomes.by_level) == depth + 1


# -- the property: deep and wide trees, cancelled at random points, on both backends --------------------------


@attrs.frozen
class Tree:
    """A spine of *depth* calls below the top; spine call k also starts ``widths[k]`` leaf calls."""

    depth: int
    shapes: tuple[str, ...]  # spine call k forwards or awaits its spine child: shapes[k % len(shapes)]
    widths: tuple[tuple[int, int], ...]  # (spine level, how many leaves it starts)
    leaves: str  # "hang" or "return"
    bottom: str  # "hang" or "return"


@attrs.frozen
class Disruption:
    kind: str  # "cancel_call", "outer_cancel", "deadline"
    trigger: int  # when the spine call at this level starts (clamped to the depth); -1: once all is blocked
    target: int  # cancel_call: the spine level cancelled (clamped to what has started)


@st.composite
def trees(draw: st.DrawFn) -> Tree:
    depth = draw(st.one_of(st.integers(1, 40), st.integers(300, 1500)))
    levels = st.integers(0, depth)
    return Tree(
        depth=depth,
        shapes=tuple(draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3))),
        widths=tuple(draw(st.lists(st.tuples(levels, st.integers(1, 30)), max_size=4))),
        leaves=draw(st.sampled_from(("hang", "return"))),
        bottom=draw(st.sampled_from(("hang", "return"))),
    )


DISRUPTIONS = st.builds(
    Disruption,
    kind=st.sampled_from(("cancel_call", "outer_cancel", "deadline")),
    trigger=st.one_of(st.just(-1), st.integers(0, 1500)),
    target=st.integers(0, 1500),
)


class TreeRun:
    """One run of a tree on one backend: what the call observers saw, and whether any agent code was left."""

    def __init__(self, tree: Tree, disruption: Disruption) -> None:
        self.tree = tree
        self.disruption = disruption
        self.widths = dict(tree.widths)
        self.trigger_level = min(disruption.trigger, tree.depth)
        self.triggered = anyio.Event()
        self.running_code = 0
        self.agent = self._agent()

    def _agent(self) -> MiniAgent:
        run = self
        tree = self.tree

        @miniagent
        async def node(ctx: InteractionContext, level: Any) -> None:
            run.running_code += 1
            try:
                if isinstance(level, str):  # a leaf: "k/i"
                    if tree.leaves == "hang":
                        await anyio.sleep_forever()
                    ctx.reply(level)
                    return
                if level == run.trigger_level:
                    run.triggered.set()
                for index in range(run.widths.get(level, 0)):
                    ctx.reply_out_of_order(node.inquire(level=f"{level}/{index}"))
                if level < tree.depth:
                    replies = node.inquire(level=level + 1)
                    forward = tree.shapes[level % len(tree.shapes)] == "forward"
                    ctx.reply(replies if forward else await replies)
                elif tree.bottom == "hang":
                    await anyio.sleep_forever()
                else:
                    ctx.reply("bottom")
            finally:
                run.running_code -= 1

        return node

    def hangs_below(self, level: Any) -> bool:
        """Whether the call at *level* cannot complete: a call below it (or itself) sleeps forever."""
        tree = self.tree
        if isinstance(level, str):
            return tree.leaves == "hang"
        leaves_below = any(count for at, count in tree.widths if at >= level)
        return tree.bottom == "hang" or (tree.leaves == "hang" and leaves_below)

    async def main(self) -> dict[str, Any]:
        outcomes = Outcomes()
        disruption = self.disruption
        finished_before: set[Any] = set()
        started_before: set[Any] = set()
        cancelled_level = 0
        with anyio.fail_after(HANG_GUARD):  # a hang guard only
            with anyio.CancelScope() as scope:
                async with MiniAgents(call_observers=[outcomes]):
                    top = self.agent.initiate_call(level=0)
                    top.finish()
                    if disruption.trigger < 0:
                        await wait_all_tasks_blocked()
                    else:
                        await self.triggered.wait()
                    finished_before = set(outcomes.by_level)
                    started_before = set(outcomes.calls)
                    if disruption.kind == "outer_cancel":
                        scope.cancel()
                    elif disruption.kind == "deadline":
                        scope.deadline = -math.inf
                    else:
                        spine = [level for level in started_before if isinstance(level, int)]
                        cancelled_level = min(disruption.target, max(spine))
                        outcomes.calls[cancelled_level].cancel()
                    await wait_all_tasks_blocked()
                    scope.cancel()  # end whatever still hangs
        running = started_before - finished_before
        if disruption.kind == "cancel_call":  # that call and its subtree: the spine below it, their leaves
            covered = {level for level in running if int(str(level).split("/")[0]) >= cancelled_level}
        else:
            covered = running
        return {
            "final": outcomes.by_level,
            "started": set(outcomes.calls),
            "must_be_cancelled": {level for level in covered if self.hangs_below(level)},
            "finished_twice": outcomes.finished_twice,
            "code_left_running": self.running_code,
        }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees(), disruption=DISRUPTIONS)
def test_property_deep_and_wide_trees_cancelled_at_random_points_end_cleanly(
    tree: Tree, disruption: Disruption
) -> None:
    """Random trees (a spine up to 1,500 calls deep, each spine call forwarding or awaiting the next, some
    starting up to 30 leaf calls that hang or return; the bottom hangs or returns), disrupted once, when a
    random spine call starts or once every task is blocked: ``cancel()`` of a spine call that has started, a
    cancelled scope around the block, or that scope's deadline expiring.  On each backend the block ends, every
    call that started ends exactly once, no agent code is left running, and every call the disruption covered
    (the scope: all of them; ``cancel()``: that call's subtree) that was running and could not complete (it, or
    a call below it, sleeps forever) ends cancelled.  Disrupted once every task is blocked (so no scheduling
    order decides anything), trio and asyncio end every call the same way."""
    results = [anyio.run(TreeRun(tree, disruption).main, backend=backend) for backend in BACKENDS]
    for result in results:
        assert result["finished_twice"] == []
        assert result["code_left_running"] == 0
        assert set(result["final"]) == result["started"]
        assert {result["final"][level] for level in result["must_be_cancelled"]} <= {"cancelled"}
    if disruption.trigger < 0:
        assert results[0]["final"] == results[1]["final"]
