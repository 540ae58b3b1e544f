"""Specification of messages: fields, ``str()``, identity (``hash_key``) and the JSON-safe dict round trip.

``str(msg)`` is its content for every class;
``hash_key`` is the same for the same content and class in any process; ``to_dict()`` is JSON-safe and
``from_dict()`` restores an equal message of the right class with an equal ``hash_key``, for the standard
immutable values and for attrs subclasses.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import hashlib
import json
import keyword
import math
import os
import pathlib
import subprocess
import sys
import uuid
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniagents import ErrorMessage, FrozenDict, Message, TextMessage


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen(kw_only=True)
class Note(Message):
    priority: int = 0


@attrs.frozen(kw_only=True)
class Annotated(Message):
    labels: Any = ()
    source: Any = None


def round_trip(message: Message) -> Message:
    """Serialise through real JSON text, as a store would, and restore."""
    return Message.from_dict(json.loads(json.dumps(message.to_dict(), allow_nan=False)))


# ------------------------------------------------------------------------------------------------ fields
class TestFields:
    def test_content_defaults_to_the_empty_string(self) -> None:
        assert Message().content == ""
        assert TextMessage().content == ""

    def test_extra_keyword_fields_are_reachable_as_attributes(self) -> None:
        msg = Message(content="hi", role="user", tags=["a"])
        assert msg.content == "hi"
        assert msg.role == "user"
        assert msg.tags == ("a",)

    def test_extra_fields_work_on_text_and_error_messages_too(self) -> None:
        assert TextMessage(content="t", role="assistant").role == "assistant"
        assert ErrorMessage(content="ValueError: boom", agent="a").agent == "a"

    def test_missing_field_raises_attribute_error_naming_the_field(self) -> None:
        with pytest.raises(AttributeError, match="role"):
            _ = Message(content="hi").role

    def test_get_returns_the_field_or_the_default(self) -> None:
        msg = Message(content="hi", role="user")
        assert msg.get("role") == "user"
        assert msg.get("model") is None
        assert msg.get("model", "none") == "none"

    def test_extra_fields_holds_only_the_undeclared_fields(self) -> None:
        msg = Message(content="hi", role="user", n=1)
        assert msg.extra_fields == {"role": "user", "n": 1}
        assert isinstance(msg.extra_fields, FrozenDict)
        assert Note(content="x", priority=3).extra_fields == {}

    def test_fields_lists_content_then_declared_then_extra(self) -> None:
        assert Message(content="hi", role="user").fields() == {"content": "hi", "role": "user"}
        assert list(Note(content="x", priority=3).fields()) == ["content", "priority"]

    def test_content_must_be_a_string(self) -> None:
        with pytest.raises(TypeError, match="content"):
            Message(content=42)  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", ["_private", "to_dict", "hash_key", "get", "fields"])
    def test_extra_field_names_that_are_private_or_shadow_the_api_are_rejected(self, name: str) -> None:
        with pytest.raises(TypeError, match=name):
            Message(**{name: 1})

    @pytest.mark.parametrize("name", ["class", "not an identifier", "1st"])
    def test_extra_field_names_must_be_identifiers(self, name: str) -> None:
        with pytest.raises(TypeError):
            Message(**{name: 1})

    def test_subclass_declares_typed_fields_with_defaults(self) -> None:
        assert Note(content="x").priority == 0
        assert Note(content="x", priority=5).priority == 5
        assert isinstance(Note(content="x"), Message)


# ------------------------------------------------------------------------------------------------ str()
@pytest.mark.parametrize(
    "message",
    [
        Message(content="plain"),
        Message(content="with fields", role="user", data={"a": [1]}),
        TextMessage(content="text"),
        ErrorMessage(content="ValueError: boom"),
        Note(content="note", priority=2),
        Message(),
    ],
    ids=["Message", "Message+fields", "TextMessage", "ErrorMessage", "subclass", "empty"],
)
def test_str_of_any_message_is_its_content(message: Message) -> None:
    assert str(message) == message.content
    assert f"{message}" == message.content


# ------------------------------------------------------------------------------------------------ equality
class TestEquality:
    def test_messages_built_separately_from_equal_values_are_equal_and_hash_equal(self) -> None:
        a = Message(content="x", role="user", data={"k": [1, {2}]})
        b = Message(content="x", data={"k": (1, frozenset({2}))}, role="user")
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1

    def test_messages_of_different_classes_are_not_equal(self) -> None:
        assert Message(content="x") != TextMessage(content="x")
        assert TextMessage(content="x") != ErrorMessage(content="x")

    def test_messages_with_different_fields_are_not_equal(self) -> None:
        assert Message(content="x") != Message(content="y")
        assert Message(content="x", role="user") != Message(content="x")
        assert Message(content="x", role="user") != Message(content="x", role="assistant")

    def test_repr_names_the_class_and_fields(self) -> None:
        text = repr(Note(content="x", priority=3))
        assert text.startswith("Note(")
        assert "content='x'" in text
        assert "priority=3" in text


# ------------------------------------------------------------------------------------------------ hash_key
MESSAGE_SOURCE = """
import datetime, decimal, http, pathlib, uuid
from miniagents import Message, TextMessage

message = Message(
    content="persist me",
    role="user",
    tags=["a", "b"],
    labels={"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"},
    meta={"z": 1, "a": [1.5, None, True, -7], "nested": {"y": "é", "x": {"q", "r", "s", "t"}}},
    raw=b"\\x00\\xff",
    when=datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    day=datetime.date(2024, 5, 6),
    at=datetime.time(7, 8, 9),
    took=datetime.timedelta(days=-1, seconds=90),
    id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    price=decimal.Decimal("19.990"),
    status=http.HTTPStatus.OK,
    path=pathlib.PurePosixPath("/var/data/file.txt"),
    reply_to=TextMessage(content="earlier", tags=["x"]),
)
"""


def _build_reference_message() -> Message:
    namespace: dict[str, Any] = {}
    exec(MESSAGE_SOURCE, namespace)  # the same source runs in the subprocess
    message = namespace["message"]
    assert isinstance(message, Message)
    return message


class TestHashKey:
    def test_is_a_sha256_hex_digest(self) -> None:
        key = Message(content="x").hash_key
        assert len(key) == 64
        assert all(c in "0123456789abcdef" for c in key)

    def test_is_the_sha256_of_the_canonical_json_form(self) -> None:
        msg = Message(content="hé", role="user", data={"b": [1], "a": {2}})
        canonical = json.dumps(
            msg.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )  # for values with one encoding, the canonical form is to_dict() as ASCII JSON
        assert msg.hash_key == hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def test_is_pinned_across_versions(self) -> None:
        # Persisted data keys on hash_key: changing the canonical form is a breaking change.
        msg = Message(content="hé", role="user", data={"b": [1], "a": {2}})
        assert msg.hash_key == "8266aad90ec91318cb963a1c89715722c848c3de4f1b82193e6818386a36075d"

    def test_same_content_and_class_give_the_same_key(self) -> None:
        assert Message(content="hello").hash_key == Message(content="hello").hash_key
        assert TextMessage(content="hello").hash_key == TextMessage(content="hello").hash_key
        assert Note(content="n", priority=1).hash_key == Note(content="n", priority=1).hash_key

    def test_repeated_access_returns_the_same_key(self) -> None:
        msg = Message(content="x", data={"a": [1]})
        assert msg.hash_key == msg.hash_key

    def test_different_class_gives_a_different_key(self) -> None:
        keys = {
            Message(content="x").hash_key,
            TextMessage(content="x").hash_key,
            ErrorMessage(content="x").hash_key,
            Note(content="x").hash_key,
        }
        assert len(keys) == 4

    def test_different_content_or_fields_give_different_keys(self) -> None:
        keys = {
            Message(content="x").hash_key,
            Message(content="y").hash_key,
            Message(content="x", role="user").hash_key,
            Message(content="x", role="assistant").hash_key,
            Message(content="x", role=["user"]).hash_key,
            Note(content="x", priority=1).hash_key,
            Note(content="x", priority=2).hash_key,
        }
        assert len(keys) == 7

    def test_key_does_not_depend_on_keyword_or_dict_insertion_order(self) -> None:
        a = Message(content="x", a=1, b={"p": 1, "q": 2})
        b = Message(b={"q": 2, "p": 1}, a=1, content="x")
        assert a.hash_key == b.hash_key

    def test_key_does_not_depend_on_insertion_order_of_non_string_keyed_dicts(self) -> None:
        a = Message(content="x", scores={1: "one", 2: "two"})
        b = Message(content="x", scores={2: "two", 1: "one"})
        assert a == b
        assert a.hash_key == b.hash_key

    def test_key_does_not_depend_on_set_iteration_order(self) -> None:
        words = [f"w{i}" for i in range(50)]
        a = Message(content="x", words=set(words))
        b = Message(content="x", words=set(reversed(words)))
        assert a.hash_key == b.hash_key

    @pytest.mark.parametrize(
        ("left", "right"),
        [
            (1, True),
            (1, 1.0),
            (0.5, decimal.Decimal("0.50")),
            (decimal.Decimal("1.0"), decimal.Decimal("1.00")),
            (-0.0, 0),
            ({1: "a"}, {1.0: "a"}),
            (
                datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.timezone.utc),
                datetime.datetime(2026, 1, 1, 13, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
            ),
            (0.1, decimal.Decimal("0.1")),  # not equal: the float is not exactly 0.1
        ],
    )
    def test_equality_and_hash_key_agree(self, left: Any, right: Any) -> None:
        # Python says 1 == True == 1.0; whichever way the library decides, == and hash_key must not disagree
        # (persistence dedupes by hash_key, sets and dicts of messages dedupe by ==).
        a = Message(content="x", value=left)
        b = Message(content="x", value=right)
        assert (a == b) == (a.hash_key == b.hash_key)

    def test_key_is_defined_for_any_python_string_including_lone_surrogates(self) -> None:
        # e.g. json.loads('"\\ud83d"') from a provider that split an emoji's surrogate pair across chunks
        msg = TextMessage(content=json.loads('"\\ud83d"'))
        assert msg.hash_key == TextMessage(content="\ud83d").hash_key
        assert round_trip(msg).hash_key == msg.hash_key

    @pytest.mark.parametrize("seed", ["0", "1", "4242"])
    def test_key_is_the_same_in_another_process(self, seed: str) -> None:
        expected = _build_reference_message().hash_key
        result = subprocess.run(
            [sys.executable, "-c", MESSAGE_SOURCE + "\nprint(message.hash_key)"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
        )
        assert result.stdout.strip() == expected

    def test_key_survives_the_dict_round_trip(self) -> None:
        msg = _build_reference_message()
        assert round_trip(msg).hash_key == msg.hash_key

    def test_nested_message_changes_the_key(self) -> None:
        a = Message(content="x", reply_to=TextMessage(content="a"))
        b = Message(content="x", reply_to=TextMessage(content="b"))
        c = Message(content="x", reply_to=Message(content="a"))
        assert len({a.hash_key, b.hash_key, c.hash_key}) == 3


# ------------------------------------------------------------------------------------------------ to_dict
STANDARD_VALUES: list[Any] = [
    datetime.datetime(2024, 1, 2, 3, 4, 5, 678901),
    datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    datetime.datetime(
        2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))
    ),
    datetime.date(2024, 2, 29),
    datetime.time(23, 59, 58, 1),
    datetime.time(1, 2, 3, tzinfo=datetime.timezone(datetime.timedelta(hours=9))),
    datetime.timedelta(days=-3, seconds=5, microseconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("3.14159265358979323846264338327950288"),
    decimal.Decimal("-0.000"),
    decimal.Decimal("1E+10"),
    b"\x00\x01binary\xff",
    b"",
    Colour.RED,
    Level.HIGH,
    pathlib.PurePosixPath("/etc/hosts"),
    pathlib.PureWindowsPath(r"C:\Users\me\file.txt"),
    pathlib.Path("relative/dir/file.txt"),
]


class TestDictRoundTrip:
    def test_to_dict_is_json_safe(self) -> None:
        msg = _build_reference_message()
        text = json.dumps(msg.to_dict(), allow_nan=False)
        assert isinstance(json.loads(text), dict)

    def test_to_dict_keeps_plain_json_values_readable(self) -> None:
        data = Message(content="hi", role="user", n=3, data={"k": ["a"]}).to_dict()
        assert data["content"] == "hi"
        assert data["role"] == "user"
        assert data["n"] == 3
        assert data["data"] == {"k": ["a"]}

    def test_to_dict_returns_a_copy_that_does_not_affect_the_message(self) -> None:
        msg = Message(content="hi", data={"k": [1]})
        data = msg.to_dict()
        data["content"] = "changed"
        data["data"]["k"].append(2)
        assert msg.content == "hi"
        assert msg.data == {"k": (1,)}
        assert msg.to_dict() != data

    @pytest.mark.parametrize("value", STANDARD_VALUES, ids=repr)
    def test_standard_immutable_value_round_trips_with_its_type_and_hash_key(self, value: Any) -> None:
        msg = Message(content="v", value=value, in_list=[value], in_dict={"k": value})
        json.dumps(msg.to_dict(), allow_nan=False)
        restored = round_trip(msg)
        assert restored == msg
        assert type(restored.value) is type(value)
        assert type(restored.in_list[0]) is type(value)
        assert type(restored.in_dict["k"]) is type(value)
        assert restored.hash_key == msg.hash_key

    @pytest.mark.parametrize("value", STANDARD_VALUES, ids=repr)
    def test_standard_immutable_values_round_trip_in_sets_and_as_dict_keys(self, value: Any) -> None:
        msg = Message(content="v", in_set={value}, keyed={value: "x"})
        restored = round_trip(msg)
        assert restored == msg
        assert restored.hash_key == msg.hash_key

    @pytest.mark.parametrize("value", [math.inf, -math.inf, -0.0, 1e308, 5e-324, 0.1])
    def test_floats_round_trip_including_non_finite_ones(self, value: float) -> None:
        msg = Message(content="f", value=value)
        restored = round_trip(msg)
        assert restored == msg
        assert math.copysign(1.0, restored.value) == math.copysign(1.0, value)
        assert restored.hash_key == msg.hash_key

    def test_nan_round_trips_with_the_same_hash_key(self) -> None:
        msg = Message(content="f", value=math.nan)
        restored = round_trip(msg)
        assert math.isnan(restored.value)
        assert restored.hash_key == msg.hash_key

    def test_containers_round_trip_as_their_frozen_forms(self) -> None:
        msg = Message(
            content="c",
            t=(1, (2, 3)),
            fs=frozenset({1, "a", (2, 3)}),
            keyed={1: "int key", (1, 2): "tuple key", None: "none key", frozenset({"x"}): "set key"},
            tagged_looking={"$t": "bytes", "v": "AAAA"},
            class_looking={"class": "miniagents:Message", "content": "not a message"},
            empty={},
            empty_list=[],
        )
        restored = round_trip(msg)
        assert restored == msg
        assert restored.hash_key == msg.hash_key
        assert restored.tagged_looking == {"$t": "bytes", "v": "AAAA"}
        assert isinstance(restored.class_looking, FrozenDict)

    @pytest.mark.parametrize(
        "message",
        [
            Message(content="m", role="user"),
            TextMessage(content="t", role="assistant"),
            ErrorMessage(content="ValueError: boom"),
            Note(content="n", priority=7),
            Annotated(content="a", labels=["x", "y"], source={"url": "https://example.org"}),
        ],
        ids=lambda m: type(m).__name__,
    )
    def test_from_dict_restores_an_equal_message_of_the_right_class(self, message: Message) -> None:
        restored = round_trip(message)
        assert type(restored) is type(message)
        assert restored == message
        assert restored.hash_key == message.hash_key
        assert str(restored) == str(message)

    def test_from_dict_on_the_subclass_restores_that_subclass(self) -> None:
        msg = Note(content="n", priority=1)
        assert Note.from_dict(msg.to_dict()) == msg
        assert TextMessage.from_dict(TextMessage(content="t").to_dict()) == TextMessage(content="t")

    def test_from_dict_on_an_unrelated_subclass_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="TextMessage"):
            TextMessage.from_dict(Message(content="m").to_dict())
        with pytest.raises(ValueError, match="Note"):
            Note.from_dict(TextMessage(content="m").to_dict())

    def test_from_dict_with_an_unknown_class_is_rejected(self) -> None:
        data = Message(content="m").to_dict()
        data["class"] = "no_such_module_xyz:Nope"
        with pytest.raises(ValueError, match="no_such_module_xyz"):
            Message.from_dict(data)

    def test_from_dict_does_not_modify_its_argument(self) -> None:
        data = Message(content="n", tags=["a"], when=datetime.date(2024, 1, 1), keyed={1: b"x"}).to_dict()
        snapshot = json.dumps(data, sort_keys=True)
        Message.from_dict(data)
        assert json.dumps(data, sort_keys=True) == snapshot

    def test_nested_messages_round_trip_with_their_classes(self) -> None:
        inner = Note(content="inner", priority=2)
        msg = Message(
            content="outer", reply_to=inner, history=[TextMessage(content="a"), ErrorMessage(content="e")]
        )
        restored = round_trip(msg)
        assert restored == msg
        assert type(restored.reply_to) is Note
        assert [type(m) for m in restored.history] == [TextMessage, ErrorMessage]
        assert restored.reply_to.hash_key == inner.hash_key
        assert restored.hash_key == msg.hash_key


# ------------------------------------------------------------------------------------------------ subclasses
class TestAttrsSubclasses:
    def test_str_is_content(self) -> None:
        assert str(Note(content="remember", priority=9)) == "remember"

    def test_declared_fields_are_frozen(self) -> None:
        labels = ["x"]
        msg = Annotated(labels=labels, source={"k": [1]})
        labels.append("y")
        assert msg.labels == ("x",)
        assert msg.source == {"k": (1,)}

    def test_hash_key_is_stable_and_class_specific(self) -> None:
        assert Note(content="x", priority=1).hash_key == Note(content="x", priority=1).hash_key
        assert Note(content="x", priority=1).hash_key != Message(content="x", priority=1).hash_key

    def test_subclass_instances_can_nest_and_stay_the_same_object(self) -> None:
        note = Note(content="n")
        holder = Annotated(source=note, labels=[note])
        assert holder.source is note
        assert holder.labels[0] is note


# ------------------------------------------------------------------------------------------------ properties
_fixed_offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
)
_hashable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.datetimes(timezones=st.none() | _fixed_offsets),
    st.dates(),
    st.times(timezones=st.none() | _fixed_offsets),
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False),
    st.sampled_from(Colour),
    st.sampled_from(Level),
    st.text(alphabet="ab/._", max_size=8).map(pathlib.PurePosixPath),
)
_hashables = st.recursive(_hashable_scalars, lambda inner: st.tuples(inner, inner), max_leaves=4)


def _nested(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.dictionaries(_hashables, children, max_size=3),
        st.frozensets(_hashables, max_size=4),
        st.sets(_hashables, max_size=4),
        st.builds(lambda c, v: TextMessage(content=c, value=v), st.text(max_size=6), children),
        st.builds(lambda c, p: Note(content=c, priority=p), st.text(max_size=6), st.integers()),
    )


field_values = st.recursive(_hashable_scalars, _nested, max_leaves=12)
field_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and not hasattr(Message, n)
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    cls = draw(st.sampled_from([Message, TextMessage, ErrorMessage]))
    fields = draw(st.dictionaries(field_names, field_values, max_size=4))
    return cls(content=draw(st.text(max_size=20)), **fields)


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(messages())
    def test_any_message_round_trips_to_an_equal_message_with_an_equal_hash_key(
        self, message: Message
    ) -> None:
        text = json.dumps(message.to_dict(), allow_nan=False)
        restored = Message.from_dict(json.loads(text))
        assert type(restored) is type(message)
        assert restored == message
        assert restored.hash_key == message.hash_key
        assert restored.to_dict() == json.loads(text)

    @settings(deadline=None)
    @given(messages())
    def test_rebuilding_from_the_same_fields_gives_the_same_hash_key(self, message: Message) -> None:
        rebuilt = type(message)(content=message.content, **dict(reversed(list(message.extra_fields.items()))))
        assert rebuilt == message
        assert rebuilt.hash_key == message.hash_key

    @settings(deadline=None)
    @given(messages(), messages())
    def test_different_messages_have_different_hash_keys(self, a: Message, b: Message) -> None:
        if a.to_dict() != b.to_dict():
            assert a.hash_key != b.hash_key

    @settings(deadline=None)
    @given(st.text())
    def test_str_is_content_for_any_text(self, text: str) -> None:
        for cls in (Message, TextMessage, ErrorMessage, Note):
            assert str(cls(content=text)) == text


@pytest.mark.parametrize(
    "content", ["", "plain", 'quotes " and \\ backslashes', "héllo wörld ✓", "\ud83d lone"]
)
def test_content_only_fast_path_key_equals_the_canonical_form(content: str) -> None:
    for cls in (Message, TextMessage):
        msg = cls(content=content)
        canonical = json.dumps(msg.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert msg.hash_key == hashlib.sha256(canonical.encode("ascii")).hexdigest()


@given(st.text())
def test_the_fast_text_constructor_makes_the_same_message(content: str) -> None:
    """What a str reply becomes is built without the general constructor: it must not be told apart."""
    from miniagents._messages import text_message

    fast, slow = text_message(content), TextMessage(content=content)
    assert type(fast) is TextMessage
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert fast.hash_key == slow.hash_key and fast.to_dict() == slow.to_dict()
    assert attrs.asdict(fast) == attrs.asdict(slow)
    assert fast.extra_fields == slow.extra_fields
