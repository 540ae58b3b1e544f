"""Random DAGs of agents, a way to run them, and a reference model of what every consumer must see.

:func:`agent_graphs` draws a :class:`GraphSpec`: plain data describing the graph's input messages and its nodes
in topological order.  Each node (:class:`NodeSpec`) is an agent whose input is the concatenation of the replies
of its sources (earlier nodes, or the graph's input), and which

* forwards each message (``"forward"``), forwards its whole input sequence at once (``"forward_all"``),
  transforms each message (``"transform"``), fans each message out to ``fan`` sub-calls of a helper agent and
  replies their replies in order (``"fan_out"``), or replies each transformed message out of order after a
  varying pause (``"out_of_order"``);
* shapes each reply as a ``str``, a mapping, a message, a resolved or streamed promise, an async generator or a
  nested iterable (``form``), and pauses (``delay``: none, a checkpoint, or a few ms);
* sometimes fails (``fail_after=k``): it raises :class:`GraphNodeError` before reading its ``k``-th input
  message (or at the end of a shorter input).  A node that fails first waits until every reply it made is
  delivered, so what consumers must see does not depend on timing.

Contents name their path through the graph (``"n3(n1.0(m2))"``), so a lost or duplicated message is visible.

:meth:`GraphSpec.expected` is the reference model: for every node an :class:`Expected` — the messages a consumer
must see, as segments whose order is guaranteed (``ordered=True``) or not (replies out of order), and the node
whose :class:`GraphNodeError` must end the sequence, if any.  The strategy only draws failure points whose outcome
does not depend on timing (never in the middle of an unordered segment).

Run a graph inside ``async with MiniAgents():`` with :func:`start_graph` (starts every call, returns a
:class:`GraphRun`) and :meth:`GraphRun.observe` / :meth:`GraphRun.observe_all` (consume the replies as several
concurrent consumers, then late ones).  :meth:`Expected.check` compares an observation with the model.  A
:class:`GraphProbe` records which agent bodies are running and counts their steps (for cancellation tests).

Example::

    @given(spec=agent_graphs())
    @settings(deadline=None)
    async def test_graph(spec):   # with pytest.mark.anyio
        async with MiniAgents():
            observed = await start_graph(spec).observe_all()
        for name, expected in spec.expected().items():
            for observation in observed[name]:
                expected.check(observation)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Literal

import anyio
import attrs
from hypothesis import strategies as st

from miniagents._agents import MiniAgent
from miniagents._calls import InteractionContext
from miniagents._messages import Message, TextMessage
from miniagents._promises import MessagePromise
from miniagents._sequence import MessageSequencePromise, MessageType
from miniagents.testing._strategies import Delay, delays, pause

__all__ = [
    "Expected",
    "GraphNodeError",
    "GraphProbe",
    "GraphRun",
    "GraphSpec",
    "NodeSpec",
    "Observed",
    "Op",
    "ReplyForm",
    "Segment",
    "agent_graphs",
    "start_graph",
]

Op = Literal["forward", "forward_all", "transform", "fan_out", "out_of_order"]
ReplyForm = Literal["str", "dict", "message", "promise", "stream", "async", "nested"]

OPS: tuple[Op, ...] = ("forward", "forward_all", "transform", "fan_out", "out_of_order")
FORMS: tuple[ReplyForm, ...] = ("str", "dict", "message", "promise", "stream", "async", "nested")

#: The source index that stands for the graph's input messages.
GRAPH_INPUT = -1


class GraphNodeError(Exception):
    """The error a failing graph node raises; ``node`` names it."""

    def __init__(self, node: str) -> None:
        super().__init__(f"graph node {node} failed")
        self.node = node


# -- the reference model ------------------------------------------------------------------------------------


@attrs.frozen
class Segment:
    """A run of expected message contents; their order is guaranteed only if ``ordered``."""

    contents: tuple[str, ...]
    ordered: bool = True


@attrs.frozen
class Observed:
    """What one consumer saw: the contents in order, then the failing node (``None`` if the sequence ended).

    An error that is not a :class:`GraphNodeError` is recorded as ``"unexpected <repr>"``.
    """

    contents: tuple[str, ...]
    error: str | None = None


@attrs.frozen
class Expected:
    """What every consumer of one node must see (see the module docstring)."""

    segments: tuple[Segment, ...] = ()
    error: str | None = None

    @property
    def contents(self) -> tuple[str, ...]:
        """All expected contents, segment after segment."""
        return tuple(content for segment in self.segments for content in segment.contents)

    def matches(self, observed: Observed) -> bool:
        """Whether *observed* is one of the outcomes this model allows."""
        if observed.error != self.error or len(observed.contents) != len(self.contents):
            return False
        position = 0
        for segment in self.segments:
            size = len(segment.contents)
            seen = observed.contents[position : position + size]
            position += size
            if segment.ordered:
                if seen != segment.contents:
                    return False
            elif Counter(seen) != Counter(segment.contents):
                return False
        return True

    def check(self, observed: Observed, what: str = "consumer") -> None:
        """Raise ``AssertionError`` explaining the difference unless :meth:`matches`."""
        if not self.matches(observed):
            missing = Counter(self.contents) - Counter(observed.contents)
            extra = Counter(observed.contents) - Counter(self.contents)
            raise AssertionError(
                f"{what} saw {observed.contents!r} then error={observed.error!r}; expected {self.segments!r} "
                f"then error={self.error!r} (missing {dict(missing)!r}, unexpected {dict(extra)!r})"
            )

    def then(self, other: Expected) -> Expected:
        """The concatenation of two sequences: *other* follows unless this one fails first."""
        if self.error is not None:
            return self
        return Expected(_merge(self.segments + other.segments), other.error)

    def prefix(self, count: int) -> tuple[Segment, ...]:
        """The segments holding the first *count* contents (the cut must not split an unordered segment)."""
        result: list[Segment] = []
        for segment in self.segments:
            if count <= 0:
                break
            size = len(segment.contents)
            if size > count and not segment.ordered:
                raise ValueError("cannot cut an unordered segment")
            result.append(Segment(segment.contents[:count], segment.ordered))
            count -= size
        return tuple(result)

    def cut_points(self) -> list[int]:
        """Positions where a failure leaves a timing-independent prefix."""
        points = {0}
        position = 0
        for segment in self.segments:
            size = len(segment.contents)
            if segment.ordered:
                points.update(range(position, position + size + 1))
            else:
                points.add(position + size)
            position += size
        return sorted(points)


def _merge(segments: Iterable[Segment]) -> tuple[Segment, ...]:
    """Drop empty segments and join adjacent ordered ones (unordered ones keep their boundaries)."""
    result: list[Segment] = []
    for segment in segments:
        if not segment.contents:
            continue
        if result and segment.ordered and result[-1].ordered:
            result[-1] = Segment(result[-1].contents + segment.contents, True)
        else:
            result.append(segment)
    return tuple(result)


@attrs.frozen
class NodeSpec:
    """One agent of a graph (see the module docstring)."""

    name: str
    sources: tuple[int, ...]
    op: Op = "forward"
    form: ReplyForm = "str"
    fan: int = 1
    delay: Delay = None
    fail_after: int | None = None

    def label(self, content: str, branch: int | None = None) -> str:
        """The content this node makes of an input message's *content* (for *branch* of a fan-out)."""
        if self.op in ("forward", "forward_all"):
            return content
        name = self.name if branch is None else f"{self.name}.{branch}"
        return f"{name}({content})"

    def _map(self, contents: tuple[str, ...]) -> tuple[str, ...]:
        if self.op == "fan_out":
            return tuple(self.label(c, b) for c in contents for b in range(self.fan))
        return tuple(self.label(c) for c in contents)

    def output(self, given: Expected) -> Expected:
        """The reference model of this node's replies, given the model of its input."""
        total = len(given.contents)
        fail = self.fail_after
        if fail is not None and fail <= total:
            processed, error = fail, self.name
        elif given.error is not None:
            processed, error = total, given.error
        elif fail is not None:
            processed, error = total, self.name
        else:
            processed, error = total, None
        segments = [Segment(self._map(s.contents), s.ordered) for s in given.prefix(processed)]
        if self.op == "out_of_order":
            merged = tuple(c for s in segments for c in s.contents)
            segments = [Segment(merged, ordered=len(merged) <= 1)]
        return Expected(_merge(segments), error)

    @property
    def replies_per_message(self) -> int:
        """How many messages the node replies per input message."""
        return self.fan if self.op == "fan_out" else 1


@attrs.frozen
class GraphSpec:
    """A random DAG of agents: the graph's input contents and the nodes in topological order."""

    inputs: tuple[str, ...]
    nodes: tuple[NodeSpec, ...]

    def input_model(self, node: NodeSpec, outputs: Sequence[Expected]) -> Expected:
        """The model of *node*'s input, given the models of the earlier nodes' outputs."""
        model = Expected()
        for source in node.sources:
            model = model.then(
                Expected((Segment(self.inputs),)) if source == GRAPH_INPUT else outputs[source]
            )
        return Expected(_merge(model.segments), model.error)

    def expected(self) -> dict[str, Expected]:
        """The reference model: what every consumer of each node's replies must see."""
        outputs: list[Expected] = []
        for node in self.nodes:
            outputs.append(node.output(self.input_model(node, outputs)))
        return {node.name: output for node, output in zip(self.nodes, outputs, strict=True)}

    @property
    def may_fail(self) -> bool:
        """Whether some node fails."""
        return any(node.fail_after is not None for node in self.nodes)


# -- running a graph ----------------------------------------------------------------------------------------


@attrs.define
class GraphProbe:
    """Records agent bodies entering and leaving, and counts their steps (for cancellation tests)."""

    running: Counter[str] = attrs.field(factory=Counter)
    entered: int = 0
    exited: int = 0
    steps: int = 0

    def enter(self, name: str) -> None:
        """An agent body started."""
        self.running[name] += 1
        self.entered += 1
        self.steps += 1

    def exit(self, name: str) -> None:
        """An agent body ended (its ``finally`` ran)."""
        self.running[name] -= 1
        if not self.running[name]:
            del self.running[name]
        self.exited += 1
        self.steps += 1

    def step(self) -> None:
        """Agent code made progress."""
        self.steps += 1


async def _one(content: str, delay: Delay, checkpoints: int = 0) -> AsyncIterator[str]:
    for _ in range(checkpoints):
        await anyio.lowlevel.checkpoint()
    await pause(delay)
    yield content


async def _tokens(content: str, delay: Delay) -> AsyncIterator[str]:
    half = len(content) // 2
    for token in (content[:half], content[half:]):
        await pause(delay)
        yield token


def _shape(content: str, form: ReplyForm, delay: Delay, node: str) -> MessageType:
    if form == "str":
        return content
    if form == "dict":
        return {"content": content, "node": node}
    if form == "message":
        return Message(content=content, node=node)
    if form == "promise":
        return MessagePromise.resolved(TextMessage(content=content))
    if form == "stream":
        return TextMessage.stream(_tokens(content, delay), node=node)
    if form == "async":
        return _one(content, delay)
    return [(c for c in (content,))]


async def _replied(ctx: InteractionContext, count: int) -> None:
    """Wait until this call's reply sequence holds *count* complete messages (streamed ones fully)."""
    if count <= 0:
        return
    seen = 0
    async for promise in ctx.call.reply_sequence(finish_call=False).promises():
        await promise
        seen += 1
        if seen >= count:
            return


def _make_agents(node: NodeSpec, probe: GraphProbe) -> MiniAgent:
    helper: MiniAgent | None = None
    if node.op == "fan_out":

        async def fan_helper(ctx: InteractionContext, label: str) -> None:
            probe.enter(f"{node.name}.helper")
            try:
                async for message in ctx.messages:
                    probe.step()
                    await pause(node.delay)
                    ctx.reply(_shape(f"{label}({message.content})", node.form, node.delay, node.name))
            finally:
                probe.exit(f"{node.name}.helper")

        helper = MiniAgent(fan_helper, alias=f"{node.name}.helper")

    def handle(ctx: InteractionContext, message: Message, index: int) -> None:
        if node.op == "forward":
            if node.form in ("message", "str"):
                ctx.reply(message)  # the very same message object
            else:
                ctx.reply(_shape(message.content, node.form, node.delay, node.name))
        elif node.op == "transform":
            ctx.reply(_shape(node.label(message.content), node.form, node.delay, node.name))
        elif node.op == "fan_out":
            assert helper is not None
            ctx.reply([helper.inquire(message, label=f"{node.name}.{b}") for b in range(node.fan)])
        else:  # out_of_order: a varying number of checkpoints so that replies overtake each other
            ctx.reply_out_of_order(_one(node.label(message.content), node.delay, (index * 2 + 1) % 3))

    async def body(ctx: InteractionContext) -> None:
        probe.enter(node.name)
        try:
            if node.op == "forward_all":
                ctx.reply(ctx.messages)
                if node.fail_after is not None:
                    messages = await ctx.messages
                    await _replied(ctx, len(messages))
                    raise GraphNodeError(node.name)
                return
            processed = 0
            inputs = ctx.messages.__aiter__()
            try:
                while True:
                    if processed == node.fail_after:
                        raise GraphNodeError(node.name)
                    try:
                        message = await inputs.__anext__()
                    except StopAsyncIteration:
                        break
                    probe.step()
                    await pause(node.delay)
                    handle(ctx, message, processed)
                    processed += 1
                if node.fail_after is not None:
                    raise GraphNodeError(node.name)
            except Exception:
                # Fail deterministically: only after every reply made so far has been delivered.
                await _replied(ctx, processed * node.replies_per_message)
                raise
        finally:
            probe.exit(node.name)

    return MiniAgent(body, alias=node.name)


async def _observe_iterate(sequence: MessageSequencePromise) -> Observed:
    contents: list[str] = []
    try:
        async for message in sequence:
            contents.append(message.content)
    except GraphNodeError as exc:
        return Observed(tuple(contents), exc.node)
    except Exception as exc:
        return Observed(tuple(contents), f"unexpected {exc!r}")
    return Observed(tuple(contents))


async def _observe_promises(sequence: MessageSequencePromise) -> Observed:
    """Consume through ``.promises()``, reading every message token by token."""
    contents: list[str] = []
    try:
        async for promise in sequence.promises():
            tokens = [token async for token in promise]
            message = await promise
            if "".join(tokens) != message.content:
                return Observed(tuple(contents), f"unexpected tokens {tokens!r} for {message.content!r}")
            contents.append(message.content)
    except GraphNodeError as exc:
        return Observed(tuple(contents), exc.node)
    except Exception as exc:
        return Observed(tuple(contents), f"unexpected {exc!r}")
    return Observed(tuple(contents))


async def _observe_await(sequence: MessageSequencePromise, reference: Observed) -> Observed:
    """``await`` gives everything or raises: compare it with what an iterating consumer saw."""
    try:
        messages = await sequence
    except GraphNodeError as exc:
        # ``await`` cannot show the prefix: only the error must match.
        return Observed(reference.contents, exc.node)
    except Exception as exc:
        return Observed(reference.contents, f"unexpected {exc!r}")
    return Observed(tuple(message.content for message in messages))


Observer = Callable[[MessageSequencePromise], Any]


@attrs.define
class GraphRun:
    """A started graph: ``replies[name]`` is each node's reply sequence."""

    spec: GraphSpec
    replies: dict[str, MessageSequencePromise]
    probe: GraphProbe

    async def observe(self, name: str, how: Literal["iterate", "promises"] = "iterate") -> Observed:
        """Consume one node's replies once and return what this consumer saw."""
        sequence = self.replies[name]
        if how == "promises":
            return await _observe_promises(sequence)
        return await _observe_iterate(sequence)

    async def observe_all(
        self, early_consumers: int = 2, late_consumers: int = 1
    ) -> dict[str, list[Observed]]:
        """Consume every node's replies with concurrent early consumers, then late ones (after all ended).

        Consumers alternate between iterating the messages and streaming them through ``.promises()``; one
        more consumer ``await``s each sequence.  Returns every observation per node, early ones first.
        """
        names = [node.name for node in self.spec.nodes]
        observed: dict[str, list[Observed]] = {name: [] for name in names}

        async def consume(name: str, index: int) -> None:
            observed[name].append(await self.observe(name, "promises" if index % 2 else "iterate"))

        async with anyio.create_task_group() as tg:
            for index in range(early_consumers):
                for name in names:
                    tg.start_soon(consume, name, index)
        for index in range(late_consumers):
            for name in reversed(names):
                await consume(name, index + 1)
        for name in names:
            observed[name].append(await _observe_await(self.replies[name], observed[name][0]))
        return observed


def start_graph(spec: GraphSpec, probe: GraphProbe | None = None) -> GraphRun:
    """Start every node of *spec* (inside an active ``MiniAgents`` context) and return the run.

    Each node is inquired with its sources' reply sequences (and the graph's input as ``str`` messages), in
    the order of ``node.sources``; nothing is awaited.
    """
    probe = probe if probe is not None else GraphProbe()
    replies: dict[str, MessageSequencePromise] = {}
    for node in spec.nodes:
        agent = _make_agents(node, probe)
        sources: list[MessageType] = [
            list(spec.inputs) if source == GRAPH_INPUT else replies[spec.nodes[source].name]
            for source in node.sources
        ]
        replies[node.name] = agent.inquire(sources)
    return GraphRun(spec, replies, probe)


# -- the strategy -------------------------------------------------------------------------------------------


@st.composite
def _graphs(
    draw: st.DrawFn,
    max_nodes: int,
    max_inputs: int,
    failures: bool,
    ops: tuple[Op, ...],
    max_delay: float,
) -> GraphSpec:
    inputs = tuple(f"m{i}" for i in range(draw(st.integers(0, max_inputs))))
    count = draw(st.integers(1, max_nodes))
    nodes: list[NodeSpec] = []
    outputs: list[Expected] = []
    spec = GraphSpec(inputs, ())
    for index in range(count):
        sources = tuple(
            draw(st.lists(st.sampled_from([GRAPH_INPUT, *range(index)]), min_size=1, max_size=3, unique=True))
        )
        op = draw(st.sampled_from(ops))
        node = NodeSpec(
            name=f"n{index}",
            sources=sources,
            op=op,
            form=draw(st.sampled_from(FORMS)),
            fan=draw(st.integers(1, 3)) if op == "fan_out" else 1,
            delay=draw(delays(max_delay)),
        )
        given = spec.input_model(node, outputs)
        if failures and draw(st.integers(0, 3)) == 0:
            if op == "forward_all":
                choices = [] if given.error is not None else [len(given.contents)]
            else:
                choices = given.cut_points()
            if choices:
                node = attrs.evolve(node, fail_after=draw(st.sampled_from(choices)))
        nodes.append(node)
        outputs.append(node.output(given))
    return GraphSpec(inputs, tuple(nodes))


def agent_graphs(
    *,
    max_nodes: int = 5,
    max_inputs: int = 4,
    failures: bool = True,
    ops: Sequence[Op] = OPS,
    max_delay: float = 0.002,
) -> st.SearchStrategy[GraphSpec]:
    """Draw random DAGs of agents (see the module docstring).

    Args:
        max_nodes: the most agents in one graph (fan-out helpers come on top).
        max_inputs: the most messages in the graph's input.
        failures: let some nodes fail (at points whose outcome does not depend on timing).
        ops: the node behaviours to draw from (a subset of :data:`OPS`).
        max_delay: the longest pause, in seconds (``0`` for checkpoints only).

    Returns:
        A strategy of :class:`GraphSpec`; run it with :func:`start_graph` inside ``async with MiniAgents():``
        and compare with :meth:`GraphSpec.expected`.

    """
    if not ops or any(op not in OPS for op in ops):
        raise ValueError(f"ops must be a non-empty subset of {OPS}")
    return _graphs(max_nodes, max_inputs, failures, tuple(ops), max_delay)
