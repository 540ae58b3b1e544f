"""Specification of pickling and copying messages: the fields travel, the per-process state does not.

A message carries runtime state that only means something in the process that made it: the mark
of the persistence run (one per ``MiniAgents`` activation) that already queued it, and the cached hash key.
Activations are numbered from 1 in every process, so a pickled mark made a message unpickled elsewhere look
already persisted there, and it was silently never stored.  Pickling, ``copy.copy`` and ``copy.deepcopy`` keep
the class and every field (equal message, equal ``hash_key``) and drop that state.
"""

from __future__ import annotations

import copy
import json
import keyword
import pickle
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from core_helpers import hashable_values, scalar_values
from hypothesis import given, settings
from hypothesis import strategies as st

import miniagents
from miniagents import (
    ErrorMessage,
    FrozenDict,
    InteractionContext,
    Message,
    MiniAgents,
    TextMessage,
    miniagent,
)
from miniagents._frozen import EMPTY

pytestmark = pytest.mark.anyio


@attrs.frozen(kw_only=True)
class Note(Message):
    priority: int = 0
    tags: Any = ()


@attrs.frozen(kw_only=True, slots=False)
class Loose(Message):
    source: Any = None


@attrs.frozen(kw_only=True)
class Evolving(Message):
    """Replaced by a class with other fields between pickling and unpickling in one test."""

    level: int = 0


@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(message)


def runtime_state(message: Message) -> tuple[Any, Any]:
    """The per-process slots of a message: (cached hash key, persistence run that queued it)."""
    return message._hash_key_cache, message._persisted_in


def copies(message: Message) -> dict[str, Message]:
    made = {
        f"pickle protocol {p}": pickle.loads(pickle.dumps(message, p))
        for p in range(pickle.HIGHEST_PROTOCOL + 1)
    }
    made["copy.copy"] = copy.copy(message)
    made["copy.deepcopy"] = copy.deepcopy(message)
    return made


# ------------------------------------------------------------------------------------------------ in process
_values = st.recursive(
    scalar_values,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
        st.dictionaries(st.integers(), inner, max_size=2),
        st.sets(hashable_values, max_size=3),
        st.builds(lambda c, v: TextMessage(content=c, value=v), st.text(max_size=4), inner),
        st.builds(lambda c, p: Note(content=c, priority=p), st.text(max_size=4), st.integers()),
    ),
    max_leaves=8,
)
_names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and not hasattr(Note, n) and not hasattr(Loose, n)
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    cls = draw(st.sampled_from([Message, TextMessage, ErrorMessage, Note, Loose]))
    content = draw(st.text(max_size=12))
    extras = draw(st.dictionaries(_names, _values, max_size=3))
    if cls is Note:
        return Note(content=content, priority=draw(st.integers()), tags=draw(_values), extra=extras)
    if cls is Loose:
        return Loose(content=content, source=draw(_values), extra=extras)
    return cls(content=content, **extras)


class TestRoundTrips:
    @settings(max_examples=150, deadline=None)
    @given(messages(), st.booleans())
    def test_pickled_and_copied_messages_equal_the_original_with_the_same_hash_key(
        self, message: Message, key_computed_first: bool
    ) -> None:
        key = message.hash_key if key_computed_first else None
        for how, made in copies(message).items():
            assert type(made) is type(message), how
            assert made == message and hash(made) == hash(message), how
            assert made.hash_key == message.hash_key, how
            assert str(made) == str(message) and made.to_dict() == message.to_dict(), how
            assert list(made.sub_messages()) == list(message.sub_messages()), how
        assert key is None or message.hash_key == key

    def test_a_copy_is_as_immutable_as_the_original(self) -> None:
        for how, made in copies(Note(content="n", tags=["a"], extra={"k": {"x": [1]}})).items():
            assert made.tags == ("a",) and made.k == FrozenDict({"x": (1,)}), how
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                made.content = "changed"  # type: ignore[misc]

    def test_a_content_only_copy_shares_the_empty_extra_fields_the_fast_paths_look_for(self) -> None:
        # MiniAgents._persist and hash_key test ``_extra is EMPTY`` before anything slower.
        for how, made in copies(TextMessage(content="t")).items():
            assert made.extra_fields is EMPTY, how

    def test_an_unpickled_message_of_a_class_whose_fields_changed_is_rejected_naming_the_class(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        data = pickle.dumps(Evolving(content="e", level=2))

        @attrs.frozen(kw_only=True)
        class Evolved(Message):
            rank: int = 0

        Evolved.__qualname__ = Evolving.__qualname__
        monkeypatch.setattr(sys.modules[__name__], "Evolving", Evolved)
        with pytest.raises(
            TypeError,
            match=rf"cannot unpickle a message of class '{re.escape(__name__)}:Evolving': "
            r".*missing \['rank'\], unknown \['level'\]",
        ):
            pickle.loads(data)


class TestPerProcessStateIsDropped:
    async def test_copies_of_a_persisted_message_carry_no_persistence_mark_nor_cached_key(self) -> None:
        inner = TextMessage(content="nested")
        message = Message(content="holder", inner=inner, notes=[Note(content="n", priority=1)])
        stored: list[Message] = []
        async with MiniAgents(on_persist_message=stored.append):
            await echo.inquire(message)
        assert message in stored and inner in stored
        assert all(m._persisted_in != 0 and m._hash_key_cache is not None for m in (message, inner)), (
            "precondition: the originals carry the state"
        )
        for how, made in copies(message).items():
            assert runtime_state(made) == (None, 0), how
            if how == "copy.copy":  # shallow: the nested messages are the originals, in their own process
                assert made.inner is inner
            else:
                assert runtime_state(made.inner) == (None, 0), how
                assert runtime_state(made.notes[0]) == (None, 0), how

    async def test_a_copy_made_in_one_context_is_persisted_in_the_next(self) -> None:
        message = TextMessage(content="again")
        async with MiniAgents(on_persist_message=lambda m: None):
            await echo.inquire(message)
        stored: list[Message] = []
        async with MiniAgents(on_persist_message=stored.append):
            await echo.inquire(pickle.loads(pickle.dumps(message)))
        assert stored == [message]


# ------------------------------------------------------------------------------------------------ two processes
PROCESS_A = """
import json, pickle, sys
import anyio
import miniagents
from miniagents import InteractionContext, Message, MiniAgents, TextMessage, miniagent

@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(message)

async def main() -> None:
    message = Message(content="holder", inner=TextMessage(content="nested"), role="user")
    stored = []
    async with MiniAgents(on_persist_message=stored.append):
        await echo.inquire(message)
    with open(sys.argv[2], "wb") as file:
        pickle.dump(message, file)
    print(json.dumps({
        "package": miniagents.__file__,
        "stored": [m.content for m in stored],
        "marks": [message._persisted_in, message.inner._persisted_in],
        "keys": {m.content: m.hash_key for m in stored},
    }))

anyio.run(main, backend=sys.argv[1])
"""

PROCESS_B = """
import json, pickle, sys
import anyio
import miniagents
from miniagents import InteractionContext, MiniAgents, miniagent

@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(message)

async def main() -> None:
    with open(sys.argv[2], "rb") as file:
        message = pickle.load(file)
    stored = []
    async with MiniAgents(on_persist_message=stored.append) as context:
        replies = await echo.inquire(message)
    print(json.dumps({
        "package": miniagents.__file__,
        "activation": context._activation,
        "replied": [m.content for m in replies],
        "stored": [m.content for m in stored],
        "keys": {m.content: m.hash_key for m in stored},
    }))

anyio.run(main, backend=sys.argv[1])
"""


async def run_python(script: str, *args: str) -> Any:
    """Run *script* in a fresh interpreter (``sys.executable``); return the JSON it prints."""
    result = await anyio.run_process([sys.executable, "-c", textwrap.dedent(script), *args], check=False)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


async def test_a_message_persisted_in_one_process_is_persisted_again_where_it_is_unpickled(
    anyio_backend: str, tmp_path: Path
) -> None:
    pickled = tmp_path / "message.pickle"
    a = await run_python(PROCESS_A, anyio_backend, str(pickled))
    assert a["stored"] == ["nested", "holder"]
    b = await run_python(PROCESS_B, anyio_backend, str(pickled))
    assert a["package"] == b["package"] == miniagents.__file__  # both run the code under test
    # The situation of the bug: the marks set in process A name the activation that process B opens.
    assert a["marks"] == [b["activation"], b["activation"]]

    assert b["replied"] == ["holder"]
    assert b["stored"] == ["nested", "holder"]  # nested first, as for a message built in process B
    assert b["keys"] == a["keys"]
