"""Cancellation and failure in call trees end the same way on trio and on asyncio.

On trio a call's children live in its nursery, so a cancellation that reaches a call reaches its whole subtree at
once.  On asyncio a call's children are plain asyncio tasks inside scopes the call owns; these tests pin
that the two give the same outcomes (examples, and a hypothesis property that runs the same random call trees
with random cancellations, failures and deadlines on both backends and compares what the call observers saw).
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


class Outcomes:
    """A call observer: the outcome of every call, by the ``label`` kwarg (or the alias), and how often."""

    def __init__(self) -> None:
        self.by_label: dict[Any, tuple[CallOutcome, str | None]] = {}
        self.calls: dict[Any, AgentCall] = {}
        self.finished_twice: list[Any] = []

    @staticmethod
    def _label(call: AgentCall) -> Any:
        return call.kwargs.get("label", call.agent.alias)

    def call_started(self, call: AgentCall) -> None:
        self.calls[self._label(call)] = call

    def call_running(self, call: AgentCall, state: None) -> None:
        pass

    def call_finished(
        self, call: AgentCall, state: None, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        label = self._label(call)
        if label in self.by_label:
            self.finished_twice.append(label)
        self.by_label[label] = (outcome, None if error is None else type(error).__name__)


# -- examples --------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_call_cancelled_through_its_parent_cancels_its_own_children_at_once() -> None:
    """A call whose body waits (shielded) for its child to clean up must not hang when its parent is cancelled:
    the parent's cancellation reaches the grandchild directly, as in a nursery tree."""
    reached = anyio.Event()

    @miniagent
    async def inner(ctx: InteractionContext) -> None:
        cleaned = anyio.Event()

        async def child() -> None:
            try:
                reached.set()
                await anyio.sleep_forever()
            finally:
                cleaned.set()

        ctx.start_soon(child)
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await cleaned.wait()

    @miniagent
    async def outer(ctx: InteractionContext) -> None:
        ctx.reply(inner.inquire())
        await anyio.sleep_forever()

    outcomes = Outcomes()
    with anyio.fail_after(5):  # a hang guard only
        async with MiniAgents(call_observers=[outcomes]):
            call = outer.initiate_call()
            call.finish()
            await reached.wait()
            call.cancel()
            with pytest.raises(AgentCallCancelledError):
                await call.reply_sequence()
    assert outcomes.by_label == {"outer": ("cancelled", None), "inner": ("cancelled", None)}


@pytest.mark.anyio
async def test_a_child_started_after_the_parent_was_cancelled_starts_cancelled() -> None:
    """A call cancelled through its parent, starting a child in its cleanup: the child is cancelled at its
    first checkpoint (it is inside the cancelled tree), not left running until the call's group exits."""
    reached = anyio.Event()
    steps: list[str] = []

    @miniagent
    async def inner(ctx: InteractionContext) -> None:
        async def late_child() -> None:
            await anyio.lowlevel.checkpoint()
            steps.append("late child ran past a checkpoint")

        try:
            reached.set()
            await anyio.sleep_forever()
        finally:
            ctx.start_soon(late_child)
            with anyio.CancelScope(shield=True):
                for _ in range(5):
                    await anyio.lowlevel.checkpoint()

    @miniagent
    async def outer(ctx: InteractionContext) -> None:
        ctx.reply(inner.inquire())
        await anyio.sleep_forever()

    async with MiniAgents():
        call = outer.initiate_call()
        call.finish()
        await reached.wait()
        call.cancel()
        with pytest.raises(AgentCallCancelledError):
            await call.reply_sequence()
    assert steps == []


@pytest.mark.anyio
async def test_cancel_while_the_children_finish_by_themselves_reports_cancelled() -> None:
    """``cancel()`` of a running call gives its consumers ``AgentCallCancelledError`` (as documented), also when
    the body has returned and its last child ends without reaching a checkpoint (trio's nursery does not raise
    then, asyncio's scope group did)."""

    @miniagent
    async def cancels_itself(ctx: InteractionContext) -> None:
        async def quick() -> None:
            pass

        ctx.reply("before")
        ctx.start_soon(quick)
        ctx.call.cancel()

    outcomes = Outcomes()
    async with MiniAgents(call_observers=[outcomes]):
        seen: list[str] = []

        async def consume() -> None:
            async for message in cancels_itself.inquire():
                seen.append(str(message))

        with pytest.raises(AgentCallCancelledError):
            await consume()
    assert seen == ["before"]
    assert outcomes.by_label == {"cancels_itself": ("cancelled", None)}


# -- the property: random call trees, random disruptions, both backends ----------------------------------------

BODIES = ("return", "hang", "go_return", "go_fail", "shielded_cleanup", "shielded_wait")
MODES = ("await", "forward", "task")


@attrs.frozen
class Node:
    body: str
    guarded: bool  # the body's waiting happens inside a cancel scope whose deadline a disruption can expire
    child_task: str  # a ctx.start_soon child: "none", "return", "hang", "go_fail"
    subs: tuple[tuple[str, Node], ...]


def _nodes(depth: int) -> st.SearchStrategy[Node]:
    subs: st.SearchStrategy[tuple[tuple[str, Node], ...]]
    if depth == 0:
        subs = st.just(())
    else:
        subs = st.lists(st.tuples(st.sampled_from(MODES), _nodes(depth - 1)), max_size=2).map(tuple)
    return st.builds(
        Node,
        body=st.sampled_from(BODIES),
        guarded=st.booleans(),
        child_task=st.sampled_from(("none", "return", "hang", "go_fail")),
        subs=subs,
    )


DISRUPTIONS = st.one_of(
    st.tuples(st.sampled_from(("cancel", "go", "deadline")), st.integers(min_value=0, max_value=20)),
    st.tuples(st.sampled_from(("outer_cancel", "body_raises")), st.just(0)),
)


def _labels(node: Node, prefix: str = "r") -> dict[str, Node]:
    found = {prefix: node}
    for index, (_, sub) in enumerate(node.subs):
        found.update(_labels(sub, f"{prefix}.{index}"))
    return found


class BodyError(Exception):
    """Raised by the block's body as a disruption."""


class Run:
    """One run of a call tree: the agents, the events the disruptions set, and what the run observed."""

    def __init__(self, tree: Node) -> None:
        self.nodes = _labels(tree)
        self.go: dict[str, anyio.Event] = {}
        self.guards: dict[str, anyio.CancelScope] = {}
        self.running_code = 0
        self.agent = self._agent()

    def _event(self, label: str) -> anyio.Event:
        if label not in self.go:
            self.go[label] = anyio.Event()
        return self.go[label]

    def _agent(self) -> MiniAgent:
        run = self

        @miniagent
        async def node_agent(ctx: InteractionContext, label: str) -> None:
            node = run.nodes[label]
            run.running_code += 1
            try:
                await run._body(ctx, label, node)
            finally:
                run.running_code -= 1

        return node_agent

    async def _child_task(self, label: str, kind: str) -> None:
        self.running_code += 1
        try:
            if kind == "hang":
                await anyio.sleep_forever()
            elif kind == "go_fail":
                await self._event(label + "/task").wait()
                raise ValueError(f"child task of {label}")
        finally:
            self.running_code -= 1

    async def _body(self, ctx: InteractionContext, label: str, node: Node) -> None:
        cleaned = anyio.Event()
        if node.child_task != "none":
            ctx.start_soon(self._child_task, label, node.child_task)
        if node.body in ("shielded_cleanup", "shielded_wait"):

            async def cleanup_child() -> None:
                try:
                    await anyio.sleep_forever()
                finally:
                    cleaned.set()

            ctx.start_soon(cleanup_child)
        awaited = []
        for index, (mode, _) in enumerate(node.subs):
            sub_label = f"{label}.{index}"
            if mode == "forward":
                ctx.reply(self.agent.inquire(label=sub_label))
            elif mode == "task":

                async def consume(sub_label: str = sub_label) -> None:
                    ctx.reply_out_of_order(await self.agent.inquire(label=sub_label))

                ctx.start_soon(consume)
            else:
                awaited.append(sub_label)
        ctx.reply(f"{label} started")
        with anyio.CancelScope() as guard:
            if node.guarded:
                self.guards[label] = guard
            for sub_label in awaited:
                ctx.reply(await self.agent.inquire(label=sub_label))
            if node.body == "hang":
                await anyio.sleep_forever()
            elif node.body in ("go_return", "go_fail"):
                await self._event(label).wait()
                if node.body == "go_fail":
                    raise ValueError(label)
            elif node.body == "shielded_cleanup":
                try:
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        await cleaned.wait()
            elif node.body == "shielded_wait":  # returns normally once a cancellation ended its child
                with anyio.CancelScope(shield=True):
                    await cleaned.wait()
        ctx.reply(f"{label} timed out" if guard.cancelled_caught else f"{label} done")

    def _disrupt(self, kind: str, target: int, calls: list[str], scope: anyio.CancelScope) -> None:
        if kind == "outer_cancel":
            scope.cancel()
            return
        if kind == "body_raises":
            raise BodyError("the block's body failed")
        if not calls:
            return
        label = calls[target % len(calls)]
        if kind == "cancel":
            self.outcomes.calls[label].cancel()
        elif kind == "go":
            self._event(label).set()
            self._event(label + "/task").set()
        elif label in self.guards:
            self.guards[label].deadline = -math.inf

    async def main(self, disruptions: list[tuple[str, int]]) -> dict[str, Any]:
        self.outcomes = outcomes = Outcomes()
        snapshots: list[dict[Any, tuple[CallOutcome, str | None]]] = []
        raised: list[str] = []
        with anyio.CancelScope() as scope:
            try:
                async with MiniAgents(call_observers=[outcomes]):
                    root = self.agent.initiate_call(label="r")
                    root.finish()
                    for kind, target in disruptions:
                        await wait_all_tasks_blocked()
                        snapshots.append(dict(outcomes.by_label))
                        self._disrupt(kind, target, sorted(outcomes.calls), scope)
                    await wait_all_tasks_blocked()
                    snapshots.append(dict(outcomes.by_label))
                    scope.cancel()  # end whatever still hangs
            except anyio.get_cancelled_exc_class():
                raise  # the cleanup's own cancellation, caught by its scope
            except BaseException as exc:  # the observation is what was raised
                raised = sorted(_leaves(exc))
        return {
            "snapshots": snapshots,
            "final": dict(outcomes.by_label),
            "started": sorted(outcomes.calls),
            "raised": raised,
            "finished_twice": outcomes.finished_twice,
            "code_left_running": self.running_code,
        }


def _leaves(exc: BaseException) -> list[str]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [] if isinstance(exc, anyio.get_cancelled_exc_class()) else [type(exc).__name__]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_nodes(3), disruptions=st.lists(DISRUPTIONS, min_size=1, max_size=3))
def test_property_random_call_trees_end_the_same_on_trio_and_asyncio(
    tree: Node, disruptions: list[tuple[str, int]]
) -> None:
    """Random call trees (3 levels below the root; each call awaits, forwards or consumes in a child task up to
    two sub-calls, then returns, hangs, waits for a signal to return or to fail, or waits shielded for a child's
    cleanup (after its own cancellation, or returning normally after it); some with a `ctx.start_soon` child that returns, hangs or fails on a signal; some waiting inside a
    cancel scope whose deadline can expire), disrupted 1-3 times once every task is blocked (`call.cancel()`
    of a random call, a signal, an expired deadline inside an agent, a cancelled scope around the block, the
    block's body raising): after each disruption the outcomes of the calls are the same on trio and asyncio,
    every call ends exactly once, and no agent code is left running after the block."""
    results = [anyio.run(Run(tree).main, disruptions, backend=backend) for backend in BACKENDS]
    for result in results:
        assert result["finished_twice"] == []
        assert result["code_left_running"] == 0
        assert set(result["final"]) == set(result["started"])
    assert results[0] == results[1]
