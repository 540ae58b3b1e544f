"""Turning messages, kwargs and id sequences into column values and back (pure functions, no I/O)."""

from __future__ import annotations

import array
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from miniagents._agents import MiniAgent
from miniagents._encoding import class_path
from miniagents._frozen import FrozenDict, freeze
from miniagents._messages import _CONTENT_ONLY_PREFIX, Message

TAG = "$t"
REF = "ref"
_PLAIN = (str, int, float, bool, type(None))
_SCALARS = frozenset({str, int, bool, type(None)})  # exact types: a subclass may encode otherwise
_MESSAGE_CLASS = class_path(Message)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def encode_message(message: Message) -> tuple[str, str, str | None, list[Message]]:
    """Return ``(class, content, fields_json, nested)`` for the ``messages`` row of *message*.

    ``fields_json`` holds every field but ``class`` and ``content`` as ``to_dict()`` encodes them (``None``
    when there is none), with each nested message replaced by ``{"$t": "ref", "k": hash_key}``; ``nested``
    lists those messages in the order of their references.  Messages inside a ``frozenset`` or used as mapping
    keys stay inline (they still round-trip; they are also stored as rows of their own by the runtime).
    """
    cls_type = type(message)
    # the common case (TextMessage & co): nothing to encode
    if is_simple(cls_type) and not message.extra_fields:
        return class_path(cls_type), message.content, None, []
    data = message.to_dict()
    cls = data.pop("class")
    content = data.pop("content", "")
    if not data:
        return cls, content, None, []
    nested: list[Message] = []
    for value in data.values():
        if not isinstance(value, _PLAIN):
            fields = message.fields()
            for name in data:
                data[name] = _strip(fields[name], data[name], nested)
            break
    return cls, content, _dumps(data), nested


def is_simple(cls: type[Message]) -> bool:
    """Whether instances of *cls* declare no field but ``content`` (so their only other fields are extras).

    Asks the message module itself (which knows its private bookkeeping slots), so a slot added there
    never turns every message into a "complex" one here.
    """
    return _CONTENT_ONLY_PREFIX[cls] is not None


def _strip(value: Any, encoded: Any, nested: list[Message]) -> Any:
    if isinstance(value, Message):
        nested.append(value)
        return {TAG: REF, "k": value.hash_key}
    if isinstance(value, tuple) and isinstance(encoded, list):
        return [_strip(v, e, nested) for v, e in zip(value, encoded, strict=True)]
    if isinstance(value, FrozenDict) and isinstance(encoded, dict):
        if encoded.get(TAG) == "dict":
            pairs = zip(value.values(), encoded["v"], strict=True)
            return {TAG: "dict", "v": [[pair[0], _strip(v, pair[1], nested)] for v, pair in pairs]}
        return {k: _strip(value[k], e, nested) for k, e in encoded.items()}
    return encoded


def decode_row(
    cls: str, content: str, fields_json: str | None, nested: int, load: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """Rebuild the ``to_dict()`` form of a stored message; *load* returns a nested message's form by key."""
    data: dict[str, Any] = {"class": cls, "content": content}
    if fields_json is not None:
        fields = json.loads(fields_json)
        if nested:
            fields = _resolve(fields, load)
        data.update(fields)
    return data


def _resolve(value: Any, load: Callable[[str], dict[str, Any]]) -> Any:
    if isinstance(value, list):
        return [_resolve(v, load) for v in value]
    if isinstance(value, dict):
        if value.get(TAG) == REF:
            return {TAG: "message", "v": load(value["k"])}
        return {k: _resolve(v, load) for k, v in value.items()}
    return value


def encode_kwargs(kwargs: FrozenDict[str, Any]) -> str:
    """JSON of a call's frozen kwargs, in the encoding messages use (so every freezable value round-trips).

    Objects passed by reference (agents, functions, classes, ``share_by_reference`` types such as an HTTP
    client) cannot be stored: each becomes a short description such as ``"<agent 'calculator'>"``, built from
    its type and name only (never its repr, which could hold a secret).
    """
    if not kwargs:
        return "{}"
    for name, value in kwargs.items():
        kind = type(value)
        plain = kind in _SCALARS or (kind is float and math.isfinite(value))
        if not plain or type(name) is not str or "$" in name:
            return _dumps(Message(kwargs=_describe_references(kwargs)).to_dict()["kwargs"])
    # The common case, by the writer thread for every call: names with plain values, which the general
    # path encodes as themselves (non-finite floats and "$" in a name are tagged there).
    return _dumps(dict(kwargs))


def _describe_references(value: Any) -> Any:
    if isinstance(value, FrozenDict):
        return FrozenDict({k: _describe_references(v) for k, v in value.items()})
    if isinstance(value, tuple):
        return tuple(_describe_references(v) for v in value)
    if isinstance(value, frozenset):
        return frozenset(_describe_references(v) for v in value)
    try:
        freeze(value, "kwargs")
    except TypeError:
        return _reference_description(value)
    return value


def _reference_description(value: Any) -> str:
    if isinstance(value, MiniAgent):
        return f"<agent {value.alias!r}>"
    if isinstance(value, type):
        return f"<class {value.__module__}.{value.__qualname__}>"
    name = getattr(value, "__qualname__", None) or getattr(getattr(value, "func", None), "__qualname__", None)
    if callable(value) and isinstance(name, str):
        return f"<function {name}>"
    cls = type(value)
    return f"<{cls.__module__}.{cls.__qualname__} object>"


def decode_kwargs(text: str) -> FrozenDict[str, Any]:
    """The frozen kwargs from :func:`encode_kwargs` output."""
    encoded = json.loads(text)
    if not encoded:
        return FrozenDict({})
    carrier = Message.from_dict({"class": _MESSAGE_CLASS, "content": "", "kwargs": encoded})
    kwargs: FrozenDict[str, Any] = carrier.kwargs
    return kwargs


def pack_ids(ids: Sequence[int]) -> bytes:
    """Message ids as little-endian signed 64-bit integers."""
    packed = array.array("q", ids)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tobytes()


def unpack_ids(blob: bytes) -> list[int]:
    """The ids packed by :func:`pack_ids`."""
    packed = array.array("q")
    packed.frombytes(blob)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tolist()
