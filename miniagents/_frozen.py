"""Deep freezing of values that go into messages and agent kwargs.

Messages and call kwargs are shared between concurrently running agents, so they must never change after
construction.  :func:`freeze` turns the mutable containers users naturally pass (``dict``, ``list``, ``set``)
into immutable twins (:class:`FrozenDict`, ``tuple``, ``frozenset``) and rejects anything it cannot vouch for,
naming the exact place of the offending value (``data['k'][2]``).
"""

from __future__ import annotations

import datetime
import decimal
import enum
import functools
import pathlib
import types
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar, final

_T = TypeVar("_T")
_K = TypeVar("_K")
_V = TypeVar("_V")

#: Scalar types that are immutable already and pass through :func:`freeze` unchanged.
SCALAR_TYPES: tuple[type, ...] = (
    str,
    int,
    float,
    bool,
    type(None),
    bytes,
    datetime.datetime,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    decimal.Decimal,
    enum.Enum,
    pathlib.PurePath,
)


@final
class FrozenDict(Mapping[_K, _V]):
    """An immutable, hashable mapping.

    It compares equal to any mapping with the same items (a plain ``dict`` included), so code that reads
    message fields does not need to care that they were frozen.  Iteration order is insertion order.
    """

    __slots__ = ("_data", "_hash")

    _data: dict[_K, _V]
    _hash: int | None

    def __init__(self, data: Mapping[_K, _V] | None = None, /, **kwargs: _V) -> None:
        merged: dict[Any, Any] = dict(data) if data is not None else {}
        merged.update(kwargs)
        object.__setattr__(self, "_data", merged)
        object.__setattr__(self, "_hash", None)

    def __getitem__(self, key: _K) -> _V:
        return self._data[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(frozenset(self._data.items())))
        return self._hash  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __or__(self, other: Mapping[_K, _V]) -> FrozenDict[_K, _V]:
        return FrozenDict({**self._data, **other})

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (self._data,))

    def to_dict(self) -> dict[_K, _V]:
        """Return a shallow, mutable ``dict`` copy."""
        return dict(self._data)


EMPTY: FrozenDict[Any, Any] = FrozenDict()

_SHARED_TYPES: set[type] = set()
#: Classes whose instances are immutable already (messages): frozen as they are, also inside message fields.
_FROZEN_CLASSES: tuple[type, ...] = ()


def treat_as_frozen(cls: type[_T]) -> type[_T]:
    """Declare that instances of *cls* (and its subclasses) are deeply immutable: :func:`freeze` keeps them.

    The message layer declares :class:`~miniagents.Message` this way, so that this leaf module needs no import
    of it.
    """
    global _FROZEN_CLASSES
    if cls not in _FROZEN_CLASSES:
        _FROZEN_CLASSES = (*_FROZEN_CLASSES, cls)
    return cls


_CALLABLE_TYPES = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.BuiltinMethodType,
    functools.partial,
)


def share_by_reference(cls: type[_T]) -> type[_T]:
    """Let instances of *cls* be passed in agent kwargs as they are, without freezing (usable as a decorator).

    Agent kwargs are deeply frozen; besides immutable values they accept objects that are meant to be shared
    between concurrent tasks: agents, functions, classes, and instances of the types registered here (for
    example a pooled HTTP client).  Registering a type is your promise that sharing its instances between
    concurrently running agents is safe.  Message fields never accept such objects: messages must serialise.
    """
    if not isinstance(cls, type):
        raise TypeError(f"share_by_reference() takes a class, got {cls!r}")
    _SHARED_TYPES.add(cls)
    return cls


def _is_shared(value: Any) -> bool:
    return isinstance(value, (*_CALLABLE_TYPES, type, *_SHARED_TYPES))


def freeze(value: Any, path: str, *, shared: bool = False) -> Any:
    """Return an immutable equivalent of *value*.

    ``dict``/mappings become :class:`FrozenDict`, ``list``/``tuple`` become ``tuple``, ``set``/``frozenset``
    become ``frozenset``, recursively; scalars from :data:`SCALAR_TYPES` and messages pass unchanged.  The
    caller's objects are never modified and never referenced by the result, so mutating them later changes
    nothing.

    With *shared* (agent kwargs), functions, classes and instances of types registered with
    :func:`share_by_reference` pass unchanged too.

    Raises:
        TypeError: for any other value; the message names *path* extended down to the offending value,
            e.g. ``data['k'][2]``.

    """
    # Fast path for the overwhelmingly common case.
    cls = type(value)
    if cls is str or cls is int or cls is float or cls is bool or value is None:
        return value
    if isinstance(value, SCALAR_TYPES):
        return value
    if isinstance(value, _FROZEN_CLASSES):
        return value  # already immutable (a message): kept as the same object
    if isinstance(value, FrozenDict):
        if all(_is_frozen_scalar(v) for v in value._data.values()):
            return value
        return FrozenDict({k: freeze(v, f"{path}[{k!r}]", shared=shared) for k, v in value.items()})
    if isinstance(value, Mapping):
        frozen: dict[Any, Any] = {}
        for k, v in value.items():
            key = freeze(k, f"{path}<key {k!r}>", shared=shared)
            try:
                hash(key)
            except TypeError:
                raise TypeError(f"{path}: unhashable key {k!r}") from None
            frozen[key] = freeze(v, f"{path}[{k!r}]", shared=shared)
        return FrozenDict(frozen)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v, f"{path}[{i}]", shared=shared) for i, v in enumerate(value))
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(v, f"{path}<set item>", shared=shared) for v in value)
    if shared and _is_shared(value):
        return value
    hint = (
        "; agent kwargs also take agents, functions, classes and instances of types registered with "
        "miniagents.share_by_reference()"
        if shared
        else ""
    )
    raise TypeError(
        f"{path}: cannot freeze a value of type {cls.__module__}.{cls.__qualname__} ({_short_repr(value)}); "
        "message fields and agent kwargs accept str, numbers, bool, None, bytes, date/time values, UUID, "
        f"Decimal, Enum members, paths, messages, and dicts/lists/tuples/sets of those{hint}"
    )


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze` for JSON: ``FrozenDict`` / mappings become dicts, tuples and lists lists.

    Other values are returned as they are (no copy of scalars).  Used to send frozen message fields and kwargs
    as JSON (an LLM request body, a schema).
    """
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [thaw(v) for v in value]
    return value


def _is_frozen_scalar(value: Any) -> bool:
    return isinstance(value, SCALAR_TYPES)


def freeze_kwargs(kwargs: Mapping[str, Any], *, shared: bool = True) -> FrozenDict[str, Any]:
    """Freeze keyword arguments; error paths start at the argument name (``data['k'][2]``).

    Agent kwargs (the default) also accept shared objects (see :func:`share_by_reference`); message fields
    known beforehand pass ``shared=False``.
    """
    if not kwargs:
        return EMPTY
    return FrozenDict({name: freeze(value, name, shared=shared) for name, value in kwargs.items()})


def _short_repr(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:
        text = object.__repr__(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
