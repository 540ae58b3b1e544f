"""Specification of extra fields as attributes: ``Message(content="hi", role="user").role == "user"``.

Extra fields are per message, but they are read as attributes.  They are not found through a ``__getattr__``
(that would put every attribute read of every message, ``content`` included, on CPython's slow attribute hook):
the first message with an extra field ``role`` gives :class:`Message` an attribute ``role`` that reads the
field of the message it is read from.  What a user can observe stays as if the attribute were the message's own:
a message without the field raises ``AttributeError`` naming it, the class itself has no such attribute, a
subclass may still declare the name, and a pickled message brings its names back.  Past a bound on distinct
names (extras named by data) the class stops growing and the rest are read through a ``__getattr__``.
"""

from __future__ import annotations

import keyword
import pickle
import subprocess
import sys
import textwrap

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniagents import ErrorMessage, Message, TextMessage

_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and not hasattr(Message, n)
)


def test_reading_a_message_attribute_goes_through_no_getattr_hook() -> None:
    # The reason for the design: a class with __getattr__ gets CPython's slot_tp_getattr_hook for every read.
    Message(content="x", some_extra_name=1)
    assert "__getattr__" not in vars(Message)
    assert all("__getattr__" not in vars(cls) for cls in (TextMessage, ErrorMessage))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(_names, st.integers() | st.text(max_size=5), max_size=4), _names)
def test_every_extra_field_reads_as_an_attribute_of_its_message_only(
    fields: dict[str, object], other: str
) -> None:
    message = Message(content="m", **fields)
    plain = TextMessage(content="t")
    for name, value in fields.items():
        assert getattr(message, name) == value
        assert not hasattr(plain, name)
        assert not hasattr(Message, name) and not hasattr(TextMessage, name)
    if other not in fields:
        with pytest.raises(AttributeError, match=repr(other)) as raised:
            getattr(message, other)
        assert raised.value.name == other


def test_a_message_without_the_field_raises_attribute_error_naming_the_class_and_field() -> None:
    Message(content="x", speaker="ann")
    with pytest.raises(AttributeError, match=r"'TextMessage' message has no field 'speaker'") as raised:
        _ = TextMessage(content="y").speaker
    assert raised.value.name == "speaker"
    assert TextMessage(content="y").get("speaker", "nobody") == "nobody"
    with pytest.raises(AttributeError, match=r"type object 'Message' has no attribute 'speaker'"):
        _ = Message.speaker


def test_a_subclass_may_declare_a_field_named_like_an_extra_field_used_before() -> None:
    assert Message(content="x", mood="calm").mood == "calm"

    @attrs.frozen(kw_only=True)
    class Moody(Message):
        mood: str = "grumpy"

    assert Moody(content="y").mood == "grumpy"
    assert Moody(content="y", mood="happy").mood == "happy"
    assert Message(content="x", mood="calm").mood == "calm"
    with pytest.raises(TypeError, match="would shadow"):
        Moody(content="z", extra={"mood": "sad"})


def test_extra_fields_of_an_attrs_subclass_read_as_attributes() -> None:
    @attrs.frozen(kw_only=True)
    class Rated(Message):
        stars: int = 0

    rated = Rated(content="r", stars=4, extra={"reviewer": "bo"})
    assert rated.reviewer == "bo" and rated.stars == 4


def test_an_unpickled_message_reads_its_extra_fields_in_a_process_that_never_built_one() -> None:
    pickled = pickle.dumps(Message(content="x", only_in_the_pickle=[1, 2]))
    code = textwrap.dedent(
        f"""
        import pickle
        from miniagents import Message
        message = pickle.loads({pickled!r})
        assert message.only_in_the_pickle == (1, 2), message
        assert not hasattr(Message, "only_in_the_pickle")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "ok", result.stderr


def test_an_unpickled_message_whose_extra_field_would_shadow_the_api_is_rejected() -> None:
    restore, _ = Message(content="x").__reduce__()
    with pytest.raises(TypeError, match="to_dict"):
        restore(Message, {"content": "x", "_extra": {"to_dict": 1}})
    assert Message(content="y").to_dict() == {"class": "miniagents._messages:Message", "content": "y"}


def test_past_the_bound_on_distinct_names_extra_fields_still_read_as_attributes() -> None:
    # In a fresh process: the bound is global to it and lowering it changes the class for good.
    code = textwrap.dedent(
        """
        from miniagents import Message, TextMessage
        from miniagents import _messages
        _messages._MAX_EXTRA_FIELD_NAMES = len(_messages._exposed_extra_fields) + 3
        messages = [Message(content=str(i), **{f"name_{i}": i}) for i in range(10)]
        assert all(getattr(m, f"name_{i}") == i for i, m in enumerate(messages))
        assert "__getattr__" in vars(Message)
        assert sum(name.startswith("name_") for name in vars(Message)) == 3
        try:
            TextMessage(content="t").name_9
        except AttributeError as error:
            assert "'TextMessage' message has no field 'name_9'" in str(error), error
        else:
            raise AssertionError("no AttributeError")
        assert TextMessage(content="t", name_8=8).name_8 == 8
        assert not hasattr(Message, "name_9")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "ok", result.stderr
