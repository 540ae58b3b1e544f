"""Property-based tests of the core runtime, on trio and asyncio, with the shipped strategies.

Assertions never depend on timing: the strategies vary the timing (no pause, checkpoints, sleeps of a few ms)
and the reference models say what must hold whatever it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from miniagents import (
    InteractionContext,
    Message,
    MessageSequencePromise,
    MiniAgent,
    MiniAgents,
    miniagent,
)
from miniagents.testing._graphs import (
    GRAPH_INPUT,
    GraphProbe,
    GraphSpec,
    NodeSpec,
    Observed,
    agent_graphs,
    start_graph,
)
from miniagents.testing._strategies import Delay, MessageSpec, delays, message_types, pause

pytestmark = pytest.mark.anyio

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    print_blob=True,
)


@miniagent
async def echo(ctx: InteractionContext) -> None:
    """Reply the whole input sequence at once (the forwarding path)."""
    ctx.reply(ctx.messages)


@miniagent
async def echo_each(ctx: InteractionContext) -> None:
    """Reply each input message as it arrives."""
    async for message in ctx.messages:
        ctx.reply(message)


def _agent_replying(spec: MessageSpec, out_of_order: bool) -> MiniAgent:
    async def reply_spec(ctx: InteractionContext) -> None:
        value = spec.build()
        if out_of_order:
            ctx.reply_out_of_order(value)
        else:
            ctx.reply(value)

    return MiniAgent(reply_spec)


PATHS = ("inquire", "inquire_each", "reply", "reply_out_of_order", "writer", "send_in_parts")


def _flatten_through(path: str, spec: MessageSpec) -> MessageSequencePromise:
    """Flatten ``spec.build()`` through one of the ways a value becomes a sequence."""
    if path == "inquire":
        return echo.inquire(spec.build())
    if path == "inquire_each":
        return echo_each.inquire(spec.build())
    if path in ("reply", "reply_out_of_order"):
        return _agent_replying(spec, path == "reply_out_of_order").inquire()
    if path == "writer":
        sequence, writer = MessageSequencePromise.open()
        writer.send(spec.build())
        writer.finish()
        return sequence
    call = echo.initiate_call()
    call.send(spec.build()).send(spec.build())
    return call.reply_sequence()


async def _contents_by_tokens(sequence: MessageSequencePromise) -> list[Message]:
    messages: list[Message] = []
    async for promise in sequence.promises():
        tokens = [token async for token in promise]
        message = await promise
        assert "".join(tokens) == message.content
        messages.append(message)
    return messages


# -- 1. flattening equals the reference flattening ----------------------------------------------------------


@PROPERTY
@given(spec=message_types(), path=st.sampled_from(PATHS))
async def test_flattening_equals_reference_flattening(spec: MessageSpec, path: str) -> None:
    expected = spec.expected_messages()
    if path == "send_in_parts":
        expected = expected + expected
    async with MiniAgents():
        sequence = _flatten_through(path, spec)
        assert await sequence == expected
        assert tuple([message async for message in sequence]) == expected
        assert tuple(await _contents_by_tokens(sequence)) == expected


# -- 2. every consumer, including late ones, sees the same sequence -----------------------------------------


@PROPERTY
@given(
    spec=message_types(),
    starts=st.lists(st.integers(0, 12), min_size=1, max_size=4),
    how=st.lists(st.sampled_from(["iterate", "tokens", "await"]), min_size=4, max_size=4),
)
async def test_every_consumer_sees_the_same_sequence(
    spec: MessageSpec, starts: list[int], how: list[str]
) -> None:
    expected = spec.expected_messages()
    seen: list[tuple[Message, ...]] = []

    async def consume(sequence: MessageSequencePromise, start_after: int, mode: str) -> None:
        for _ in range(start_after):
            await anyio.lowlevel.checkpoint()
        if mode == "iterate":
            seen.append(tuple([message async for message in sequence]))
        elif mode == "tokens":
            seen.append(tuple(await _contents_by_tokens(sequence)))
        else:
            seen.append(await sequence)

    async with MiniAgents():
        sequence = _agent_replying(spec, out_of_order=False).inquire()
        async with anyio.create_task_group() as tg:
            for index, start_after in enumerate(starts):
                tg.start_soon(consume, sequence, start_after, how[index])
        for mode in ("iterate", "tokens", "await"):  # late consumers, after the sequence ended
            await consume(sequence, 0, mode)
    assert seen == [expected] * (len(starts) + 3)


# -- 3. ordered replies keep their order whatever the timing ------------------------------------------------


def _is_interleaving(observed: Sequence[Message], parts: Sequence[Sequence[Message]]) -> bool:
    """Whether *observed* interleaves every part, each part keeping its own order."""
    if len(observed) != sum(len(part) for part in parts):
        return False
    failed: set[tuple[int, ...]] = set()

    def search(positions: tuple[int, ...]) -> bool:
        done = sum(positions)
        if done == len(observed):
            return True
        if positions in failed:
            return False
        for index, part in enumerate(parts):
            at = positions[index]
            if (
                at < len(part)
                and part[at] == observed[done]
                and search((*positions[:index], at + 1, *positions[index + 1 :]))
            ):
                return True
        failed.add(positions)
        return False

    return search(tuple(0 for _ in parts))


@PROPERTY
@given(
    replies=st.lists(
        st.tuples(message_types(max_leaves=5), st.booleans(), delays()),
        max_size=5,
    )
)
async def test_ordered_replies_keep_their_order(replies: list[tuple[MessageSpec, bool, Delay]]) -> None:
    async def replier(ctx: InteractionContext) -> None:
        for spec, ordered, delay in replies:
            await pause(delay)
            if ordered:
                ctx.reply(spec.build())
            else:
                ctx.reply_out_of_order(spec.build())

    ordered_part = tuple(m for spec, ordered, _ in replies if ordered for m in spec.expected_messages())
    out_of_order_parts = [spec.expected_messages() for spec, ordered, _ in replies if not ordered]
    async with MiniAgents():
        sequence = MiniAgent(replier).inquire()
        observed = await sequence
        # Forwarding through another agent keeps exactly the order the first consumer saw.
        assert await echo_each.inquire(sequence) == observed
    # Ordered replies in order; each out-of-order reply keeps its own order; nothing lost or added.
    assert _is_interleaving(observed, [ordered_part, *out_of_order_parts]), observed
    if not out_of_order_parts:
        assert observed == ordered_part


# -- 4/5. graphs: nothing lost or duplicated; failures after exactly the messages before them ----------------


def _check_graph(spec: GraphSpec, observed: dict[str, list[Observed]]) -> None:
    for name, expected in spec.expected().items():
        observations = observed[name]
        for index, observation in enumerate(observations):
            expected.check(observation, f"consumer #{index} of {name}")
        # Every consumer (early, streaming tokens, late, awaiting) saw the very same sequence.
        assert all(o == observations[0] for o in observations), (name, observations)


@PROPERTY
@given(spec=agent_graphs(failures=False))
async def test_graphs_lose_and_duplicate_no_message(spec: GraphSpec) -> None:
    async with MiniAgents():
        observed = await start_graph(spec).observe_all()
    _check_graph(spec, observed)


# The smallest graph where an error must travel through a sequence that another agent consumes: n0 replies
# "n0(m0)" then fails; n1 forwards n0's replies, so n1's consumers must see "n0(m0)" then n0's error.
FAILURE_FORWARDED = GraphSpec(
    ("m0", "m1"),
    (
        NodeSpec("n0", (GRAPH_INPUT,), "transform", fail_after=1),
        NodeSpec("n1", (0,), "forward"),
    ),
)


@PROPERTY
@example(spec=FAILURE_FORWARDED)
@given(spec=agent_graphs(failures=True))
async def test_failures_surface_at_every_consumer_after_prior_messages(spec: GraphSpec) -> None:
    async with MiniAgents():
        observed = await start_graph(spec).observe_all()
    _check_graph(spec, observed)


# -- 6. cancellation leaves no running task ------------------------------------------------------------------


def _task_ids() -> set[int]:
    return {task.id for task in anyio.get_running_tasks()}


@PROPERTY
@given(
    spec=agent_graphs(failures=False),
    cancel_after=st.integers(0, 40),
    cancel_from=st.sampled_from(["outside", "inside"]),
)
async def test_cancellation_leaves_no_running_task(
    spec: GraphSpec, cancel_after: int, cancel_from: str
) -> None:
    probe = GraphProbe()
    before = _task_ids()
    consumed: list[Any] = []

    async def endless(ctx: InteractionContext) -> None:
        """Keeps working until cancelled, with a child task and a streaming reply."""
        probe.enter("endless")
        try:

            async def child() -> None:
                probe.enter("endless.child")
                try:
                    await anyio.sleep_forever()
                finally:
                    probe.exit("endless.child")

            ctx.start_soon(child)
            while True:
                probe.step()
                ctx.reply(f"tick {probe.steps}")
                await anyio.sleep(0.001)
        finally:
            probe.exit("endless")

    with anyio.CancelScope() as scope:

        async def canceller(ctx: InteractionContext) -> None:
            for _ in range(cancel_after):
                await anyio.lowlevel.checkpoint()
            scope.cancel()  # from inside an agent call

        async with MiniAgents():
            run = start_graph(spec, probe)
            endless_replies = MiniAgent(endless).inquire()
            if cancel_from == "inside":
                MiniAgent(canceller).inquire()
            else:
                for _ in range(cancel_after):
                    await anyio.lowlevel.checkpoint()
                scope.cancel()
            consumed.append(await endless_replies)  # never ends: only the cancellation stops it
    assert scope.cancelled_caught
    assert not consumed
    # Every agent body that started has left it (its finally ran)...
    assert probe.running == {}, probe.running
    assert probe.entered == probe.exited
    # ...every reply sequence is closed, so no consumer can hang on it...
    assert all(sequence.done for sequence in run.replies.values())
    assert endless_replies.done
    # ...no task is left over, and no agent code runs any more.
    assert _task_ids() <= before
    steps = probe.steps
    for _ in range(5):
        await anyio.lowlevel.checkpoint()
    await anyio.sleep(0.003)
    assert probe.steps == steps
