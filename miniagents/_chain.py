"""``achain_loop``: run agents one after another, each fed with the previous one's output, in rounds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, final

from miniagents._agents import MiniAgent
from miniagents._exceptions import StopLoop
from miniagents._messages import Message
from miniagents._sequence import MessageSequencePromise, MessageType


@final
class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: In an :func:`achain_loop` list: resolve the output so far completely before passing it on.
AWAIT: Final = _Marker("AWAIT")
#: In an :func:`achain_loop` list: drop the output so far (the next agent gets no input).
CLEAR: Final = _Marker("CLEAR")


async def achain_loop(
    agents: Sequence[MiniAgent | _Marker],
    initial_input: MessageType | None = None,
    *,
    max_rounds: int | None = None,
) -> tuple[Message, ...]:
    """Run *agents* in order, each inquired with the previous step's output, round after round.

    ``AWAIT`` in the list resolves the output so far fully before passing it on; ``CLEAR`` drops it.  A round
    ends when every call it started has finished; the next round gets its output.  The loop ends after
    *max_rounds* rounds, or when any agent of a round raises :class:`StopLoop`; it then returns the output of
    the last complete round (the initial input's round count is zero: ``()``).  Any other error of an agent in
    the loop propagates from ``achain_loop``.  A cancellation (``move_on_after`` around it, Ctrl-C in a chat)
    cancels the calls of the current round and propagates, as cancellations must; end the loop with
    ``StopLoop`` or *max_rounds* to get a result.

    Raises:
        ValueError: *agents* holds no agent, or an entry that is neither an agent nor a marker.

    """
    if not any(isinstance(agent, MiniAgent) for agent in agents):
        raise ValueError("achain_loop needs at least one agent")
    for agent in agents:
        if not isinstance(agent, (MiniAgent, _Marker)):
            raise ValueError(f"achain_loop takes agents, AWAIT and CLEAR; got {agent!r}")
    if max_rounds is not None and max_rounds < 0:
        raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")

    last: tuple[Message, ...] = ()
    output: MessageType | None = initial_input
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        started: list[MessageSequencePromise] = []
        try:
            for agent in agents:
                if agent is AWAIT:
                    output = await _resolve(output)
                elif agent is CLEAR:
                    output = None
                else:
                    assert isinstance(agent, MiniAgent)
                    output = agent.inquire(output)
                    started.append(output)
            result = await _resolve(output)
            # A round ends when all its calls ended: a StopLoop (or an error) from an agent whose output
            # was cleared, or not awaited by anything else, surfaces here too.
            for replies in started:
                await replies
        except StopLoop:
            return last
        last = output = result
        rounds += 1
    return last


async def _resolve(output: MessageType | None) -> tuple[Message, ...]:
    if output is None:
        return ()
    if isinstance(output, MessageSequencePromise):
        return await output
    if isinstance(output, tuple) and all(isinstance(m, Message) for m in output):
        return output
    sequence, writer = MessageSequencePromise.open()
    writer.send(output)
    writer.finish()
    return await sequence
