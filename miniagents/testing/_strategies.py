"""Hypothesis strategies for ``MessageType`` values, with a reference flattening.

Promises, streams and async iterables only work inside a running event loop and an active
:class:`~miniagents.MiniAgents` context, while hypothesis draws examples outside of any loop.  So
:func:`message_types` does not draw ``MessageType`` values directly: it draws immutable *descriptions*
(:class:`MessageSpec` trees).  A description is plain data (it prints readably when hypothesis shrinks a failing
example) and has two methods:

* :meth:`MessageSpec.build` creates a fresh ``MessageType`` value.  Call it inside ``async with MiniAgents():``
  (or inside an agent), because streaming parts are pumped by the current call or context.  Every call builds
  new objects, so one-shot values (generators, async generators) can be built again for each use.
* :meth:`MessageSpec.expected_messages` is the *reference flattening*: the messages, in order, that flattening
  the built value must produce (``str`` → :class:`~miniagents.TextMessage`, a mapping → :class:`~miniagents.Message`
  with those fields, a streamed promise → its resolved message, nested sequences and iterables flattened in
  order).  It needs no event loop.

Example::

    from hypothesis import given, settings
    from miniagents import MiniAgents, miniagent
    from miniagents.testing import message_types

    @miniagent
    async def echo(ctx):
        ctx.reply(ctx.messages)

    @given(spec=message_types())
    @settings(deadline=None)
    async def test_flattening(spec):   # with pytest.mark.anyio
        async with MiniAgents():
            assert await echo.inquire(spec.build()) == spec.expected_messages()
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import anyio
import attrs
from hypothesis import strategies as st

from miniagents._messages import Message, TextMessage
from miniagents._promises import MessagePromise
from miniagents._sequence import MessageSequencePromise, MessageType

__all__ = [
    "AsyncIterableSpec",
    "Delay",
    "FieldValue",
    "IterableSpec",
    "MappingSpec",
    "MessageSpec",
    "MessageValueSpec",
    "ResolvedPromiseSpec",
    "SequenceSpec",
    "StreamedPromiseSpec",
    "TextSpec",
    "delays",
    "flatten_specs",
    "message_types",
    "pause",
]

#: A pause in a producer: ``None`` continues at once (no checkpoint), ``0.0`` is a bare scheduling checkpoint,
#: a positive number sleeps that many seconds.
Delay = float | None

#: Field values the strategies use: they freeze (lists become tuples) and round-trip through ``to_dict()``.
FieldValue = int | str | bool | tuple[int, ...]

_FIELD_NAMES = ("role", "topic", "n", "tags", "score")


async def pause(delay: Delay) -> None:
    """Wait as *delay* says (see :data:`Delay`)."""
    if delay is None:
        return
    if delay <= 0:
        await anyio.lowlevel.checkpoint()
    else:
        await anyio.sleep(delay)


def _fields_dict(fields: tuple[tuple[str, FieldValue], ...]) -> dict[str, Any]:
    return {name: list(value) if isinstance(value, tuple) else value for name, value in fields}


class MessageSpec:
    """Base class of the descriptions drawn by :func:`message_types` (see the module docstring)."""

    __slots__ = ()

    def build(self) -> MessageType:
        """Return a fresh ``MessageType`` value; call it inside an active ``MiniAgents`` context."""
        raise NotImplementedError

    def expected_messages(self) -> tuple[Message, ...]:
        """Return the reference flattening: the messages flattening :meth:`build`'s value must give, in order."""
        raise NotImplementedError

    def expected_contents(self) -> tuple[str, ...]:
        """Return the contents of :meth:`expected_messages`."""
        return tuple(message.content for message in self.expected_messages())

    @property
    def needs_context(self) -> bool:
        """Whether :meth:`build` needs an active ``MiniAgents`` context (it streams something)."""
        return False


@attrs.frozen
class TextSpec(MessageSpec):
    """A plain ``str``; flattens to one :class:`~miniagents.TextMessage`."""

    text: str

    def build(self) -> MessageType:
        """Return the string."""
        return self.text

    def expected_messages(self) -> tuple[Message, ...]:
        """Return ``(TextMessage(content=text),)``."""
        return (TextMessage(content=self.text),)


@attrs.frozen
class MappingSpec(MessageSpec):
    """A ``dict`` of message fields; flattens to one :class:`~miniagents.Message` with those fields."""

    content: str
    fields: tuple[tuple[str, FieldValue], ...] = ()

    def build(self) -> MessageType:
        """Return a new ``dict`` (mutable lists inside, to exercise freezing)."""
        return {"content": self.content, **_fields_dict(self.fields)}

    def expected_messages(self) -> tuple[Message, ...]:
        """Return the equivalent :class:`~miniagents.Message`."""
        return (Message(content=self.content, **_fields_dict(self.fields)),)


@attrs.frozen
class MessageValueSpec(MessageSpec):
    """A ready :class:`~miniagents.Message` (or :class:`~miniagents.TextMessage`) object."""

    message_class: type[Message]
    content: str
    fields: tuple[tuple[str, FieldValue], ...] = ()

    def message(self) -> Message:
        """Return a new message object with these fields."""
        return self.message_class(content=self.content, **_fields_dict(self.fields))

    def build(self) -> MessageType:
        """Return a new message object."""
        return self.message()

    def expected_messages(self) -> tuple[Message, ...]:
        """Return an equal message."""
        return (self.message(),)


@attrs.frozen
class ResolvedPromiseSpec(MessageSpec):
    """``MessagePromise.resolved(message)``."""

    message: MessageValueSpec

    def build(self) -> MessageType:
        """Return an already resolved promise."""
        return MessagePromise.resolved(self.message.message())

    def expected_messages(self) -> tuple[Message, ...]:
        """Return the wrapped message."""
        return self.message.expected_messages()


@attrs.frozen
class StreamedPromiseSpec(MessageSpec):
    """``message_class.stream(tokens, **fields)``: a message whose tokens stream, pausing before each token."""

    message_class: type[Message]
    tokens: tuple[str, ...]
    fields: tuple[tuple[str, FieldValue], ...] = ()
    delay: Delay = None

    async def _tokens(self) -> AsyncIterator[str]:
        for token in self.tokens:
            await pause(self.delay)
            yield token

    def build(self) -> MessageType:
        """Return a streaming :class:`~miniagents.MessagePromise` (needs an active context)."""
        return self.message_class.stream(self._tokens(), **_fields_dict(self.fields))

    def expected_messages(self) -> tuple[Message, ...]:
        """Return the message the promise resolves to."""
        return (self.message_class(content="".join(self.tokens), **_fields_dict(self.fields)),)

    @property
    def needs_context(self) -> bool:
        """Always true: the tokens are pumped by the current call or context."""
        return True


@attrs.frozen
class _Children(MessageSpec):
    children: tuple[MessageSpec, ...]

    def expected_messages(self) -> tuple[Message, ...]:
        """Return the children's reference flattenings, concatenated."""
        return tuple(message for child in self.children for message in child.expected_messages())

    @property
    def needs_context(self) -> bool:
        """Whether some child needs a context."""
        return any(child.needs_context for child in self.children)


@attrs.frozen
class IterableSpec(_Children):
    """A ``list``, ``tuple`` or generator of the children's values (built lazily for a generator)."""

    kind: Literal["list", "tuple", "generator"] = "list"

    def _generate(self) -> Iterator[MessageType]:
        for child in self.children:
            yield child.build()

    def build(self) -> MessageType:
        """Return a new container (or generator) of freshly built children."""
        if self.kind == "generator":
            return self._generate()
        values = [child.build() for child in self.children]
        return tuple(values) if self.kind == "tuple" else values


class _AsyncValues:
    """A plain async iterable (not an async generator): ``__aiter__`` returns a fresh iterator."""

    def __init__(self, spec: AsyncIterableSpec) -> None:
        self._spec = spec

    def __aiter__(self) -> AsyncIterator[MessageType]:
        return self._spec._generate()


@attrs.frozen
class AsyncIterableSpec(_Children):
    """An async generator (or a plain async iterable) that pauses, then yields each child's value."""

    kind: Literal["async_generator", "async_iterable"] = "async_generator"
    delay: Delay = None

    async def _generate(self) -> AsyncIterator[MessageType]:
        for child in self.children:
            await pause(self.delay)
            yield child.build()

    def build(self) -> MessageType:
        """Return a new async generator or async iterable."""
        if self.kind == "async_iterable":
            return _AsyncValues(self)
        return self._generate()

    @property
    def needs_context(self) -> bool:
        """Always true: flattening an async iterable needs a pump task."""
        return True


@attrs.frozen
class SequenceSpec(_Children):
    """A :class:`~miniagents.MessageSequencePromise` of the children.

    ``mode="resolved"`` uses ``MessageSequencePromise.resolved(...)`` (complete before anyone reads it);
    ``mode="streamed"`` opens a sequence and sends the children to its writer from an async generator that
    pauses before each child, so the sequence is still streaming when it is flattened.
    """

    mode: Literal["resolved", "streamed"] = "streamed"
    delay: Delay = None

    async def _feed(self) -> AsyncIterator[MessageType]:
        for child in self.children:
            await pause(self.delay)
            yield child.build()

    def build(self) -> MessageType:
        """Return a new sequence promise (the streamed mode needs an active context)."""
        if self.mode == "resolved":
            return MessageSequencePromise.resolved(self.expected_messages())
        sequence, writer = MessageSequencePromise.open()
        writer.send(self._feed())
        writer.finish()
        return sequence

    @property
    def needs_context(self) -> bool:
        """Whether the sequence streams (or resolved children need a context)."""
        return self.mode == "streamed"


def delays(max_delay: float = 0.003) -> st.SearchStrategy[Delay]:
    """Pauses for producers: mostly none or a bare checkpoint, sometimes a sleep of up to *max_delay* s."""
    choices: list[Delay] = [None, None, 0.0, 0.0]
    if max_delay > 0:
        choices += [max_delay / 3, max_delay]
    return st.sampled_from(choices)


def _texts() -> st.SearchStrategy[str]:
    return st.text(alphabet="abcxyz ☃\n", max_size=6)


def _field_values() -> st.SearchStrategy[FieldValue]:
    return st.one_of(
        st.integers(-5, 5),
        _texts(),
        st.booleans(),
        st.lists(st.integers(0, 9), max_size=3).map(tuple),
    )


def _fields() -> st.SearchStrategy[tuple[tuple[str, FieldValue], ...]]:
    return st.dictionaries(st.sampled_from(_FIELD_NAMES), _field_values(), max_size=2).map(
        lambda d: tuple(sorted(d.items()))
    )


def _message_classes() -> st.SearchStrategy[type[Message]]:
    return st.sampled_from([Message, TextMessage])


def _leaves(streaming: bool, delay: st.SearchStrategy[Delay]) -> st.SearchStrategy[MessageSpec]:
    values = st.builds(MessageValueSpec, _message_classes(), _texts(), _fields())
    leaves: list[st.SearchStrategy[MessageSpec]] = [
        st.builds(TextSpec, _texts()),
        st.builds(MappingSpec, _texts(), _fields()),
        values,
        st.builds(ResolvedPromiseSpec, values),
    ]
    if streaming:
        leaves.append(
            st.builds(
                StreamedPromiseSpec,
                _message_classes(),
                st.lists(_texts(), max_size=3).map(tuple),
                _fields(),
                delay,
            )
        )
    return st.one_of(leaves)


def _extend(
    children: st.SearchStrategy[MessageSpec], streaming: bool, delay: st.SearchStrategy[Delay]
) -> st.SearchStrategy[MessageSpec]:
    lists = st.lists(children, max_size=4).map(tuple)
    options: list[st.SearchStrategy[MessageSpec]] = [
        st.builds(IterableSpec, lists, st.sampled_from(["list", "tuple", "generator"])),
        # A resolved sequence holds ready messages only: its children are flattened by the reference.
        st.builds(SequenceSpec, lists, st.just("resolved")),
    ]
    if streaming:
        options += [
            st.builds(
                AsyncIterableSpec, lists, st.sampled_from(["async_generator", "async_iterable"]), delay
            ),
            st.builds(SequenceSpec, lists, st.just("streamed"), delay),
        ]
    return st.one_of(options)


def message_types(
    *, streaming: bool = True, max_leaves: int = 12, max_delay: float = 0.003
) -> st.SearchStrategy[MessageSpec]:
    """Draw descriptions of arbitrary nested ``MessageType`` values (see the module docstring).

    Leaves are ``str``, mappings of fields, :class:`~miniagents.Message` / :class:`~miniagents.TextMessage`
    objects, resolved :class:`~miniagents.MessagePromise` objects and (with *streaming*) streamed ones; they nest
    in lists, tuples, generators, resolved :class:`~miniagents.MessageSequencePromise` objects and (with
    *streaming*) streamed sequences, async generators and plain async iterables.  Producers pause up to
    *max_delay* seconds (or just checkpoint, or not at all) before each item, so the same value flattens under
    many different timings.

    Args:
        streaming: include values that need an active ``MiniAgents`` context to build (streamed promises and
            sequences, async iterables).  Without it, :meth:`MessageSpec.build` works anywhere.
        max_leaves: a rough bound on the number of leaves of one value.
        max_delay: the longest pause, in seconds (``0`` for checkpoints only).

    Returns:
        A strategy of :class:`MessageSpec`; use ``spec.build()`` inside the context and compare with
        ``spec.expected_messages()``.

    """
    delay = delays(max_delay)
    return st.recursive(
        _leaves(streaming, delay),
        lambda children: _extend(children, streaming, delay),
        max_leaves=max_leaves,
    )


def flatten_specs(specs: Sequence[MessageSpec]) -> tuple[Message, ...]:
    """Return the reference flattening of several values sent one after another."""
    return tuple(message for spec in specs for message in spec.expected_messages())
