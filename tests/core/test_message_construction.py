"""Specification of how messages are constructed: the content may be the one positional argument.

``TextMessage("hi")`` is how users of upstream MiniAgents write it.  Every message class whose first
field is ``content`` accepts it as its single optional positional argument (``Message``, ``TextMessage``,
``ErrorMessage`` and subclasses declared later the attrs way, ``@attrs.frozen(kw_only=True) class
Note(Message)``); every other field stays keyword-only.  Two positional arguments, or the content given both
positionally and by keyword, raise ``TypeError`` naming the class.  A message built positionally cannot be told
apart from the same message built by keyword: freezing, ``hash_key``, ``str()``, ``repr()`` and the
``to_dict()`` / ``from_dict()`` round trip are the same.
"""

from __future__ import annotations

import copy
import inspect
import json
import keyword
from typing import Any

import attrs
import pytest
from core_helpers import hashable_values, scalar_values
from hypothesis import given, settings
from hypothesis import strategies as st

from miniagents import ErrorMessage, FrozenDict, Message, TextMessage


@attrs.frozen(kw_only=True)
class Note(Message):
    priority: int = 0


@attrs.frozen(kw_only=True)
class Tagged(Note):
    """A subclass of a user subclass: its own generated __init__ takes the content positionally too."""

    tags: Any = ()


@attrs.frozen(kw_only=True, slots=False)
class Loose(Message):
    """attrs patches a non-slotted class in place (no new class): the positional form must still work."""

    source: Any = None


class Plain(TextMessage):
    """Not decorated: inherits TextMessage's constructor."""


@attrs.frozen(kw_only=True, init=False, repr=False)
class Shout(TextMessage):
    """Declared like TextMessage itself (init=False): inherits the constructor."""


@attrs.frozen
class Counted(Message):
    """Declared without kw_only: ``n`` is its own positional parameter, which must keep meaning ``n``."""

    n: int = 0


ALL_CLASSES: list[type[Message]] = [Message, TextMessage, ErrorMessage, Note, Tagged, Loose, Plain, Shout]


# ------------------------------------------------------------------------------------------------ positional
class TestContentAsThePositionalArgument:
    def test_text_message_takes_its_content_positionally(self) -> None:
        msg = TextMessage("hi")
        assert type(msg) is TextMessage
        assert msg.content == "hi"
        assert msg == TextMessage(content="hi")

    def test_message_and_error_message_take_it_with_extra_fields_by_keyword(self) -> None:
        assert Message("hi", role="user") == Message(content="hi", role="user")
        error = ErrorMessage("ValueError: boom", agent="a")
        assert (error.content, error.agent) == ("ValueError: boom", "a")

    @pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
    def test_every_message_class_takes_it(self, cls: type[Message]) -> None:
        msg = cls("text")
        assert type(msg) is cls
        assert msg == cls(content="text")
        assert msg.hash_key == cls(content="text").hash_key

    def test_user_subclasses_take_it_with_their_declared_fields_by_keyword(self) -> None:
        assert Note("hi", priority=2) == Note(content="hi", priority=2)
        tagged = Tagged("t", priority=1, tags=["a"])
        assert (tagged.content, tagged.priority, tagged.tags) == ("t", 1, ("a",))
        assert Loose("l", source={"k": [1]}).source == FrozenDict({"k": (1,)})

    def test_user_subclasses_take_it_with_extra_fields_given_as_extra(self) -> None:
        msg = Note("hi", priority=1, extra={"role": "user"})
        assert msg.role == "user"
        assert msg == Note(content="hi", priority=1, extra={"role": "user"})

    def test_a_subclass_declared_later_takes_it_too(self) -> None:
        @attrs.frozen(kw_only=True)
        class Late(Message):
            level: int = 3

        assert Late("late", level=4) == Late(content="late", level=4)

    @pytest.mark.parametrize("cls", [Message, Note, Loose], ids=lambda c: c.__name__)
    def test_omitting_it_still_gives_the_empty_content(self, cls: type[Message]) -> None:
        assert cls().content == ""
        assert cls() == cls(content="")

    def test_a_str_subclass_given_positionally_becomes_a_plain_str(self) -> None:
        class Marked(str):
            pass

        for msg in (TextMessage(Marked("m")), Note(Marked("m"))):
            assert type(msg.content) is str
            assert msg == type(msg)(content="m")

    def test_signatures_show_content_as_the_positional_parameter(self) -> None:
        for cls in (TextMessage, Note, Tagged, Loose):
            first, *rest = inspect.signature(cls).parameters.values()
            assert (first.name, first.kind, first.default) == (
                "content",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                "",
            )
            assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in rest), cls

    def test_a_subclass_with_positional_fields_of_its_own_keeps_its_signature(self) -> None:
        counted = Counted(3)
        assert (counted.n, counted.content) == (3, "")
        assert Counted(3, content="c") == Counted(n=3, content="c")


# ------------------------------------------------------------------------------------------------ errors
class TestErrors:
    @pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
    def test_two_positional_arguments_raise_type_error_naming_the_class(self, cls: type[Message]) -> None:
        with pytest.raises(TypeError, match=rf"^{cls.__name__}\(\) takes the content as its only positional"):
            cls("a", "b")

    @pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
    @pytest.mark.parametrize("keyword_content", ["b", ""])
    def test_content_given_both_ways_raises_type_error_naming_the_class(
        self, cls: type[Message], keyword_content: str
    ) -> None:
        # ``content=""`` is the default's value, and still counts as given.
        with pytest.raises(TypeError, match=rf"^{cls.__name__}\(\) got the content both as a positional"):
            cls("a", content=keyword_content)

    def test_other_fields_stay_keyword_only(self) -> None:
        with pytest.raises(TypeError, match=r"^Note\(\) takes the content as its only positional"):
            Note("hi", 2)
        with pytest.raises(TypeError, match=r"^Message\(\) takes the content as its only positional"):
            Message("hi", "user")

    @pytest.mark.parametrize("cls", [TextMessage, Note, Loose], ids=lambda c: c.__name__)
    def test_a_positional_content_that_is_not_a_str_is_rejected_naming_the_class(
        self, cls: type[Message]
    ) -> None:
        with pytest.raises(TypeError, match=rf"^{cls.__name__}\.content must be str, got int"):
            cls(1)  # type: ignore[arg-type]

    def test_a_rejected_call_does_not_touch_the_caller_s_values(self) -> None:
        labels = ["a"]
        with pytest.raises(TypeError):
            Tagged("a", "b", tags=labels)
        assert labels == ["a"]


# ------------------------------------------------------------------------------------------------ properties
_values = st.recursive(
    scalar_values,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
        st.sets(hashable_values, max_size=3),
        st.builds(TextMessage, st.text(max_size=4)),
    ),
    max_leaves=8,
)
_names = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and not hasattr(Note, n) and not hasattr(Tagged, n)
)


@st.composite
def constructions(draw: st.DrawFn) -> tuple[type[Message], str, dict[str, Any]]:
    """A class, a content and the keyword arguments of one construction (declared fields, extras)."""
    cls = draw(st.sampled_from(ALL_CLASSES))
    extras = draw(st.dictionaries(_names, _values, max_size=3))
    kwargs: dict[str, Any] = {}
    if cls in (Note, Tagged):
        kwargs["priority"] = draw(st.integers())
    if cls is Tagged:
        kwargs["tags"] = draw(_values)
    if cls is Loose:
        kwargs["source"] = draw(_values)
    if cls in (Note, Tagged, Loose):
        if extras:
            kwargs["extra"] = extras
    else:
        kwargs.update(extras)
    return cls, draw(st.text(max_size=12)), kwargs


@settings(max_examples=200, deadline=None)
@given(constructions())
def test_a_message_built_positionally_is_the_message_built_by_keyword(
    construction: tuple[type[Message], str, dict[str, Any]],
) -> None:
    cls, content, kwargs = construction
    positional = cls(content, **kwargs)
    by_keyword = cls(content=content, **kwargs)

    assert type(positional) is cls
    assert positional == by_keyword and hash(positional) == hash(by_keyword)
    assert positional.hash_key == by_keyword.hash_key
    assert str(positional) == content == str(by_keyword)
    assert repr(positional) == repr(by_keyword)
    assert positional.fields() == by_keyword.fields()
    assert attrs.asdict(positional, recurse=False) == attrs.asdict(by_keyword, recurse=False)

    # Frozen: the caller's containers were copied into immutable ones, the message refuses assignment.
    mutable_args = copy.deepcopy(kwargs)
    from_mutable = cls(content, **mutable_args)
    for value in mutable_args.values():
        if isinstance(value, (list, dict, set)):
            value.clear()
    assert from_mutable == by_keyword
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        positional.content = "changed"  # type: ignore[misc]

    # The dict round trip restores the same message from either.
    data = positional.to_dict()
    assert data == by_keyword.to_dict()
    restored = Message.from_dict(json.loads(json.dumps(data, allow_nan=False)))
    assert type(restored) is cls
    assert restored == positional and restored.hash_key == positional.hash_key
