"""Small agents and helpers shared by the core tests.

Imported by its bare name: pytest (import mode ``prepend``) puts each test directory on
``sys.path``, the directories not being packages, so every helper module's name is unique in the suite.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from hypothesis import strategies as st

from miniagents import InteractionContext, Message, miniagent


class Boom(Exception):
    pass


def contents(messages: tuple[Message, ...]) -> list[str]:
    return [m.content for m in messages]


async def outcome(awaitable: Awaitable[Any]) -> Any:
    """What awaiting gives: the value, or the exception it raised."""
    try:
        return await awaitable
    except Exception as exc:
        return exc


@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for msg in ctx.messages:
        ctx.reply(f"echo: {msg}")


@miniagent
async def ignores_input(ctx: InteractionContext) -> None:
    ctx.reply("done")


#: The two anyio backends, for a test that runs the same thing on both and compares.
BACKENDS = ("trio", "asyncio")

#: Scalars a message field may hold, and hashable ones (for the members of sets).
scalar_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.binary(max_size=4),
)
hashable_values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6))
