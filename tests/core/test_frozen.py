"""Specification of deep freezing: message fields (and call kwargs) can never change after construction.

Dicts, lists, sets and tuples anywhere become a frozen mapping, tuples and frozensets; later mutation of the caller's original object changes nothing; values that
cannot be frozen raise ``TypeError`` naming the field path (e.g. ``data['k'][2]``).
"""

from __future__ import annotations

import copy
import datetime
import decimal
import enum
import pathlib
import pickle
import re
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniagents import FrozenDict, Message, MessagePromise, MiniAgents, TextMessage, miniagent


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen(kw_only=True)
class Tagged(Message):
    """A subclass with typed (declared) fields, which are frozen like extra fields."""

    tags: Any = ()
    meta: Any = None


# ------------------------------------------------------------------------------------------------ FrozenDict
class TestFrozenDict:
    def test_is_a_mapping_with_the_given_items_in_insertion_order(self) -> None:
        fd = FrozenDict({"b": 1, "a": 2}, c=3)
        assert isinstance(fd, Mapping)
        assert list(fd) == ["b", "a", "c"]
        assert list(fd.items()) == [("b", 1), ("a", 2), ("c", 3)]
        assert fd["a"] == 2
        assert fd.get("missing", "default") == "default"
        assert "c" in fd
        assert "z" not in fd
        assert len(fd) == 3

    def test_missing_key_raises_key_error(self) -> None:
        with pytest.raises(KeyError):
            FrozenDict(a=1)["b"]

    def test_compares_equal_to_plain_dicts_and_frozen_dicts_with_the_same_items(self) -> None:
        fd = FrozenDict({"a": 1, "b": 2})
        assert fd == {"b": 2, "a": 1}
        assert fd == FrozenDict(b=2, a=1)
        assert fd != {"a": 1}
        assert fd != FrozenDict(a=1, b=3)
        assert fd != [("a", 1), ("b", 2)]

    def test_equal_frozen_dicts_hash_equal_and_work_as_set_members_and_keys(self) -> None:
        a = FrozenDict({"x": (1, 2), "y": frozenset({3})})
        b = FrozenDict({"y": frozenset({3}), "x": (1, 2)})
        assert hash(a) == hash(b)
        assert len({a, b}) == 1
        assert {a: "value"}[b] == "value"

    def test_item_assignment_and_deletion_are_rejected(self) -> None:
        fd = FrozenDict(a=1)
        with pytest.raises(TypeError):
            fd["a"] = 2  # type: ignore[index]
        with pytest.raises(TypeError):
            del fd["a"]  # type: ignore[attr-defined]
        assert fd == {"a": 1}

    def test_attributes_cannot_be_set_or_deleted(self) -> None:
        fd = FrozenDict(a=1)
        with pytest.raises(AttributeError):
            fd._data = {}  # type: ignore[misc]
        with pytest.raises(AttributeError):
            fd.anything = 1  # type: ignore[attr-defined]
        with pytest.raises(AttributeError):
            del fd._data  # type: ignore[misc]
        assert fd == {"a": 1}

    def test_has_no_mutating_dict_methods(self) -> None:
        fd = FrozenDict(a=1)
        for name in ("update", "pop", "popitem", "clear", "setdefault", "__setitem__", "__delitem__"):
            assert not hasattr(fd, name), name

    def test_later_mutation_of_the_source_dict_changes_nothing(self) -> None:
        source = {"a": 1}
        fd = FrozenDict(source)
        source["a"] = 2
        source["b"] = 3
        assert fd == {"a": 1}

    def test_union_returns_a_new_frozen_dict_and_leaves_the_original_unchanged(self) -> None:
        fd = FrozenDict(a=1, b=2)
        merged = fd | {"b": 20, "c": 30}
        assert isinstance(merged, FrozenDict)
        assert merged == {"a": 1, "b": 20, "c": 30}
        assert fd == {"a": 1, "b": 2}

    def test_to_dict_returns_an_independent_mutable_copy(self) -> None:
        fd = FrozenDict(a=1)
        plain = fd.to_dict()
        assert type(plain) is dict
        plain["a"] = 99
        assert fd["a"] == 1

    def test_survives_pickle_and_copy(self) -> None:
        fd = FrozenDict({"a": (1, 2), 3: frozenset({"x"})})
        restored = pickle.loads(pickle.dumps(fd))
        assert type(restored) is FrozenDict
        assert restored == fd
        assert copy.deepcopy(fd) == fd
        assert copy.copy(fd) == fd

    def test_repr_shows_the_items(self) -> None:
        assert repr(FrozenDict(a=1)) == "FrozenDict({'a': 1})"

    @given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=8))
    def test_equals_and_hashes_like_its_items(self, items: dict[str, Any]) -> None:
        fd = FrozenDict(items)
        assert fd == items
        assert dict(fd) == items
        reordered = FrozenDict(dict(reversed(list(items.items()))))
        assert fd == reordered
        assert hash(fd) == hash(reordered)


# ---------------------------------------------------------------------------------------- containers freeze
class TestContainersBecomeImmutable:
    def test_dict_becomes_frozen_dict(self) -> None:
        msg = Message(data={"a": 1})
        assert isinstance(msg.data, FrozenDict)
        assert msg.data == {"a": 1}

    def test_list_becomes_tuple(self) -> None:
        assert Message(items=[1, 2, 3]).items == (1, 2, 3)
        assert type(Message(items=[1, 2, 3]).items) is tuple

    def test_set_becomes_frozenset(self) -> None:
        msg = Message(ids={1, 2})
        assert type(msg.ids) is frozenset
        assert msg.ids == frozenset({1, 2})

    def test_tuple_stays_a_tuple_and_frozenset_a_frozenset(self) -> None:
        msg = Message(pair=(1, 2), fs=frozenset({"x"}))
        assert msg.pair == (1, 2)
        assert type(msg.pair) is tuple
        assert msg.fs == frozenset({"x"})
        assert type(msg.fs) is frozenset

    def test_readme_example_tags_list_becomes_tuple(self) -> None:
        assert Message(content="hi", role="user", tags=["a"]).tags == ("a",)

    def test_containers_are_frozen_at_every_depth(self) -> None:
        msg = Message(deep={"a": [1, {"b": [2, {3, 4}]}, (5, [6])]})
        deep = msg.deep
        assert isinstance(deep, FrozenDict)
        assert type(deep["a"]) is tuple
        assert isinstance(deep["a"][1], FrozenDict)
        assert deep["a"][1]["b"] == (2, frozenset({3, 4}))
        assert type(deep["a"][1]["b"][1]) is frozenset
        assert deep["a"][2] == (5, (6,))
        assert type(deep["a"][2][1]) is tuple

    def test_lists_inside_a_tuple_are_frozen_too(self) -> None:
        msg = Message(t=([1], {"k": [2]}))
        assert msg.t == ((1,), FrozenDict(k=(2,)))

    def test_mutable_values_inside_a_given_frozen_dict_are_frozen(self) -> None:
        msg = Message(data=FrozenDict(a=[1, 2]))
        assert msg.data["a"] == (1, 2)
        assert type(msg.data["a"]) is tuple

    def test_dict_keys_are_frozen(self) -> None:
        msg = Message(data={(1, 2): "pair", frozenset({"x"}): "set"})
        assert msg.data[(1, 2)] == "pair"
        assert msg.data[frozenset({"x"})] == "set"

    def test_declared_fields_of_a_subclass_are_frozen(self) -> None:
        msg = Tagged(content="c", tags=["a", "b"], meta={"k": [1, {2}]})
        assert msg.tags == ("a", "b")
        assert isinstance(msg.meta, FrozenDict)
        assert msg.meta["k"] == (1, frozenset({2}))

    def test_frozen_values_are_hashable_so_the_message_is_hashable(self) -> None:
        msg = Message(data={"a": [1, {2}]}, items=[{"x": 1}])
        assert hash(msg) == hash(Message(data={"a": [1, {2}]}, items=[{"x": 1}]))

    @pytest.mark.parametrize(
        "value",
        [
            "text",
            42,
            1.5,
            True,
            None,
            b"raw",
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
            datetime.date(2024, 1, 2),
            datetime.time(3, 4, 5),
            datetime.timedelta(days=1, seconds=2),
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            decimal.Decimal("1.25"),
            Colour.RED,
            pathlib.PurePosixPath("/tmp/x"),
            pathlib.Path("relative/path"),
        ],
        ids=lambda v: type(v).__name__,
    )
    def test_standard_immutable_values_are_kept_as_they_are(self, value: Any) -> None:
        assert Message(value=value).value is value
        assert Message(wrapped=[value]).wrapped[0] is value

    def test_nested_message_stays_the_same_object(self) -> None:
        inner = TextMessage(content="inner", tags=["x"])
        outer = Message(child=inner, children=[inner], by_name={"i": inner}, in_set={inner})
        assert outer.child is inner
        assert outer.children[0] is inner
        assert outer.by_name["i"] is inner
        assert next(iter(outer.in_set)) is inner


# ------------------------------------------------------------------------------------ caller mutation
class TestLaterMutationOfTheCallersObjectChangesNothing:
    def test_mutating_a_dict_after_construction(self) -> None:
        data = {"a": 1, "nested": {"b": [1]}}
        msg = Message(data=data)
        data["a"] = 2
        data["new"] = 3
        data["nested"]["b"].append(2)
        data["nested"]["c"] = 4
        assert msg.data == {"a": 1, "nested": {"b": (1,)}}

    def test_mutating_a_list_after_construction(self) -> None:
        items = [1, [2, 3]]
        msg = Message(items=items)
        items.append(4)
        items[1].append(5)
        items[0] = 0
        assert msg.items == (1, (2, 3))

    def test_mutating_a_set_after_construction(self) -> None:
        ids = {1, 2}
        msg = Message(ids=ids)
        ids.add(3)
        ids.discard(1)
        assert msg.ids == frozenset({1, 2})

    def test_mutating_a_subclass_field_after_construction(self) -> None:
        tags = ["a"]
        msg = Tagged(tags=tags)
        tags.append("b")
        assert msg.tags == ("a",)

    def test_mutating_a_known_beforehand_field_of_a_message_promise(self) -> None:
        meta = {"k": [1]}
        promise, writer = MessagePromise.open(meta=meta)
        meta["k"].append(2)
        message = writer.finish()
        assert promise.known_beforehand["meta"] == {"k": (1,)}
        assert message.meta == {"k": (1,)}

    @given(
        st.recursive(
            st.integers() | st.text(max_size=4) | st.none(),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
            ),
            max_leaves=20,
        )
    )
    def test_any_nested_structure_is_snapshotted(self, value: Any) -> None:
        original = copy.deepcopy(value)
        msg = Message(value=value)
        _scribble(value)
        assert msg.value == _as_frozen(original)


def _scribble(value: Any) -> None:
    """Mutate every list and dict in *value* in place."""
    if isinstance(value, list):
        for item in value:
            _scribble(item)
        value.append("scribbled")
    elif isinstance(value, dict):
        for item in value.values():
            _scribble(item)
        value["scribbled"] = True


def _as_frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_frozen(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------- messages are frozen
class TestMessagesCannotBeModified:
    def test_content_cannot_be_reassigned(self) -> None:
        msg = Message(content="hi")
        with pytest.raises(AttributeError):
            msg.content = "bye"  # type: ignore[misc]
        assert msg.content == "hi"

    def test_extra_fields_cannot_be_assigned_or_added(self) -> None:
        msg = Message(content="hi", role="user")
        with pytest.raises(AttributeError):
            msg.role = "assistant"
        with pytest.raises(AttributeError):
            msg.brand_new = 1
        assert msg.role == "user"
        assert msg.get("brand_new") is None

    def test_declared_fields_cannot_be_reassigned(self) -> None:
        msg = Tagged(tags=["a"])
        with pytest.raises(AttributeError):
            msg.tags = ("b",)  # type: ignore[misc]
        assert msg.tags == ("a",)


# ---------------------------------------------------------------------------------------- unfreezable values
class _Opaque:
    pass


class TestUnfreezableValuesAreRejectedWithTheFieldPath:
    def test_error_names_the_path_down_to_the_value(self) -> None:
        with pytest.raises(TypeError, match=re.escape("data['k'][2]")):
            Message(data={"k": [1, 2, _Opaque()]})

    def test_error_names_the_type_of_the_offending_value(self) -> None:
        with pytest.raises(TypeError, match="_Opaque"):
            Message(data={"k": [1, 2, _Opaque()]})

    def test_top_level_field_is_named(self) -> None:
        with pytest.raises(TypeError, match=r"^obj\b"):
            Message(obj=_Opaque())

    def test_declared_field_of_a_subclass_is_named(self) -> None:
        with pytest.raises(TypeError, match=re.escape("meta['x'][0]")):
            Tagged(meta={"x": [_Opaque()]})

    def test_value_inside_a_tuple_is_named(self) -> None:
        with pytest.raises(TypeError, match=re.escape("pair[1]")):
            Message(pair=(1, _Opaque()))

    def test_value_inside_a_set_is_rejected_and_the_set_path_is_named(self) -> None:
        with pytest.raises(TypeError, match=re.escape("data['s']")):
            Message(data={"s": {1, _Opaque()}})

    def test_unfreezable_dict_key_is_rejected_and_the_field_is_named(self) -> None:
        with pytest.raises(TypeError, match=r"^data\b"):
            Message(data={_Opaque(): 1})

    def test_arbitrary_object_is_rejected(self) -> None:
        with pytest.raises(TypeError, match="value"):
            Message(value=object())

    def test_open_file_is_rejected(self, tmp_path: pathlib.Path) -> None:
        with (tmp_path / "f.txt").open("w") as handle, pytest.raises(TypeError, match=re.escape("files[0]")):
            Message(files=[handle])

    def test_coroutine_is_rejected(self) -> None:
        async def work() -> None:
            pass

        coroutine = work()
        try:
            with pytest.raises(TypeError, match=re.escape("job['run']")):
                Message(job={"run": coroutine})
        finally:
            coroutine.close()

    @pytest.mark.parametrize(
        "value",
        [bytearray(b"x"), lambda: None, iter([1]), _Opaque, type("Dyn", (), {})()],
        ids=["bytearray", "function", "iterator", "class", "instance"],
    )
    def test_other_mutable_or_opaque_values_are_rejected(self, value: Any) -> None:
        with pytest.raises(TypeError, match=re.escape("field['x']")):
            Message(field={"x": value})

    def test_caller_object_is_untouched_when_freezing_fails(self) -> None:
        data = {"a": [1], "b": _Opaque()}
        with pytest.raises(TypeError):
            Message(data=data)
        assert data["a"] == [1]
        assert type(data["a"]) is list


# ---------------------------------------------------------------------------------------- agent kwargs
@pytest.mark.anyio
async def test_agent_call_kwargs_are_frozen_before_the_agent_sees_them() -> None:
    seen: dict[str, Any] = {}

    @miniagent
    async def recorder(ctx: Any, **kwargs: Any) -> None:
        seen.update(ctx.kwargs)
        ctx.reply("ok")

    options = {"k": [1, {2}]}
    async with MiniAgents():
        replies = recorder.inquire(None, options=options, items=[1, 2])
        options["k"].append(3)
        await replies
    assert isinstance(seen["options"], FrozenDict)
    assert seen["options"] == {"k": (1, frozenset({2}))}
    assert seen["items"] == (1, 2)


@pytest.mark.anyio
async def test_unfreezable_agent_kwarg_is_rejected_naming_its_path() -> None:
    @miniagent
    async def noop(ctx: Any, **kwargs: Any) -> None:
        del ctx, kwargs

    async with MiniAgents():
        with pytest.raises(TypeError, match=re.escape("data['k'][2]")):
            noop.inquire(None, data={"k": [1, 2, _Opaque()]})
