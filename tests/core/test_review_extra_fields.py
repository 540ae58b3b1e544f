"""Review of extra fields as descriptors on :class:`Message`: edge cases the descriptors must not break.

An extra field ``NAME`` used by any message puts an ``_ExtraField`` on ``Message``.  That attribute sits in the
MRO of every message class, before whatever a user class inherits from its other bases, and it is installed
while other threads may be building messages with the same name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import attrs
import pytest

from miniagents import Message, TextMessage, _messages


class _Describable:
    """A mixin a user puts after ``Message`` in the bases of a message class."""

    def describe(self) -> str:
        return "from the mixin"

    @property
    def label(self) -> str:
        return "mixin label"

    badge = "mixin badge"


@attrs.frozen(kw_only=True)
class _MixedMessage(Message, _Describable):
    pass


def test_a_mixin_attribute_of_a_message_class_survives_an_extra_field_of_that_name_elsewhere() -> None:
    # Before any message uses the names, the mixin's attributes are there (and extras of those names shadow).
    assert _MixedMessage(content="a").describe() == "from the mixin"
    with pytest.raises(TypeError, match="would shadow"):
        _MixedMessage(content="a", extra={"describe": 1})
    # Another message, of another class, uses the names as extra fields: that must not hide the mixin's.
    other = Message(content="x", describe=1, label=2, badge=3)
    assert (other.describe, other.label, other.badge) == (1, 2, 3)
    mixed = _MixedMessage(content="a")
    assert mixed.describe() == "from the mixin"
    assert mixed.label == "mixin label"
    assert mixed.badge == "mixin badge"
    assert _MixedMessage.badge == "mixin badge"
    assert hasattr(_MixedMessage, "describe") and not hasattr(Message, "describe")
    with pytest.raises(TypeError, match="would shadow"):
        _MixedMessage(content="a", extra={"describe": 1})
    # A class without the mixin still has no such attribute, on the class or on a message without the field.
    assert not hasattr(TextMessage, "describe") and not hasattr(TextMessage(content="t"), "describe")


def test_a_mixin_property_that_raises_attribute_error_still_raises_it() -> None:
    class Flaky:
        @property
        def flaky(self) -> str:
            raise AttributeError("flaky is not available")

    @attrs.frozen(kw_only=True)
    class FlakyMessage(Message, Flaky):
        pass

    Message(content="x", flaky=1)
    with pytest.raises(AttributeError, match="flaky is not available"):
        _ = FlakyMessage(content="a").flaky


class _BlockingSet(set[str]):
    """The set of exposed names, pausing the first thread that adds *name* right after it added it."""

    def __init__(self, items: Iterable[str], name: str) -> None:
        super().__init__(items)
        self.name = name
        self.paused = threading.Event()
        self.resume = threading.Event()
        self._first = True

    def add(self, item: str) -> None:
        super().add(item)
        if item == self.name and self._first:
            self._first = False
            self.paused.set()
            self.resume.wait(10)


def test_a_message_built_while_another_thread_exposes_the_same_name_reads_its_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "raced_between_two_threads"
    exposed = _BlockingSet(_messages._exposed_extra_fields, name)
    monkeypatch.setattr(_messages, "_exposed_extra_fields", exposed)
    first = threading.Thread(target=lambda: Message(content="a", **{name: 1}))
    first.start()
    try:
        assert exposed.paused.wait(10)
        # The first thread has noted the name as exposed and is paused there: this thread skips exposing it.
        second = Message(content="b", **{name: 2})
        read: Any = getattr(second, name, "<missing>")
    finally:
        exposed.resume.set()
        first.join(10)
    assert read == 2


def test_attrs_evolve_of_a_message_with_extra_fields_keeps_them() -> None:
    evolved = attrs.evolve(Message(content="hi", role="user"), content="x")
    assert evolved == Message(content="x", role="user")
    assert attrs.evolve(TextMessage(content="a", n=1), content="b") == TextMessage(content="b", n=1)
    assert attrs.evolve(Message(content="hi"), content="x") == Message(content="x")


def test_extra_fields_given_as_a_mapping_are_the_fields_given_as_keywords() -> None:
    assert Message(content="x", extra={"role": "user"}) == Message(content="x", role="user")
    assert Message("x", extra={"role": "user"}, n=1).fields() == {"content": "x", "role": "user", "n": 1}
    assert Message(content="x", extra={}) == Message(content="x")
    with pytest.raises(TypeError, match=r"\['role'\] given both"):
        Message(content="x", extra={"role": "user"}, role="admin")
    with pytest.raises(TypeError, match="extra= takes a mapping"):
        Message(content="x", extra=["role"])


def test_extra_is_not_a_field_name_anywhere() -> None:
    with pytest.raises(TypeError, match="'extra' is not a field name"):
        Message(content="x", extra={"extra": 1})
    with pytest.raises(TypeError, match="'extra' is not a field name"):
        Message.from_dict({"class": "miniagents._messages:Message", "content": "x", "extra": {"a": 1}})
