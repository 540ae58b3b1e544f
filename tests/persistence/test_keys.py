"""The fast paths of the persistence hot path give exactly what the general code gives.

``Message.hash_key`` writes the canonical JSON of a content-only message directly; persisted files key on it,
so it must equal the SHA-256 of the general canonical encoding for every string.
"""

from __future__ import annotations

import hashlib
import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniagents import ErrorMessage, Message, TextMessage
from miniagents._encoding import canonical_json
from miniagents.persistence._codec import encode_message, is_simple


@attrs.frozen(kw_only=True, init=False)
class Plain(Message):
    """A subclass that declares no field: content-only like ``TextMessage``."""


@attrs.frozen(kw_only=True)
class WithField(Message):
    level: int = 0


def general_key(message: Message) -> str:
    canonical = canonical_json(message._encode_fields(canonical=True))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# Any code point, lone surrogates included (``str`` content may hold them).
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF))


@given(content=ANY_TEXT, cls=st.sampled_from([Message, TextMessage, ErrorMessage, Plain]))
def test_content_only_key_equals_the_general_canonical_key(content: str, cls: type[Message]) -> None:
    message = cls(content=content)
    assert message.hash_key == general_key(message)


@given(content=ANY_TEXT, level=st.integers())
def test_messages_with_fields_keep_the_general_path(content: str, level: int) -> None:
    with_field = WithField(content=content, level=level)
    with_extra = Message(content=content, level=level)
    assert with_field.hash_key == general_key(with_field)
    assert with_extra.hash_key == general_key(with_extra)
    assert with_field.hash_key != with_extra.hash_key  # the class is part of the key


@pytest.mark.parametrize("content", ["", "hello", 'quote " backslash \\ newline \n', "hé \ud800 \U0001f600"])
def test_content_only_key_is_the_documented_formula(content: str) -> None:
    # Files written by earlier versions key on this form: the fast path must not change it.
    canonical = '{"class":"miniagents._messages:TextMessage","content":' + json.dumps(content) + "}"
    assert TextMessage(content=content).hash_key == hashlib.sha256(canonical.encode("ascii")).hexdigest()


def test_content_only_classes_take_the_codec_fast_path() -> None:
    # A private slot added to Message once made every class look "complex" to the store's codec: correct
    # rows, but the general to_dict path for every message (3x the writer's CPU).
    assert all(is_simple(cls) for cls in (Message, TextMessage, ErrorMessage, Plain))
    assert not is_simple(WithField)
    assert encode_message(TextMessage(content="x")) == ("miniagents._messages:TextMessage", "x", None, [])
