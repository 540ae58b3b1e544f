"""The encoding of message field values: JSON-safe data (``to_dict``) and the canonical JSON of hash keys.

Plain JSON values stay as they are; any other value a frozen field can hold is a tagged object
``{"$t": <type>, ...}`` (:func:`encode_value`, :func:`decode_value`).  With ``canonical=True`` values that
compare equal encode the same (:func:`canonical_json` of that is what ``Message.hash_key`` digests), so equal
messages have equal keys.  A class is named by :func:`class_path`, under which persistence stores it.

Messages nest: a message field value is encoded through the message's own ``_encode_fields`` and decoded by
``Message.from_dict``.  This module is below ``_messages`` (which imports it), so it reaches both through what
``_messages`` installs when it is imported (:func:`install_message_codec`).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import fractions
import importlib
import json
import math
import pathlib
import sys
import uuid
from collections.abc import Callable
from typing import Any

from miniagents._frozen import FrozenDict
from miniagents._publish import DEFINED_AT

_TAG = "$t"


def class_path(cls: type) -> str:
    """Return ``"module:QualName"``, the name under which a message class is serialised (and hashed).

    For the package's own classes it is the defining module's, recorded by ``_publish`` before they report
    their public module (``TextMessage.__module__ == "miniagents"``): publishing changes neither hash keys
    nor stored rows.
    """
    recorded = cls.__dict__.get(DEFINED_AT)
    return recorded if recorded is not None else f"{cls.__module__}:{cls.__qualname__}"


class _NoMessageClass:
    """What :func:`encode_value` checks for messages until ``_messages`` installs :class:`Message`."""


#: Set by ``_messages`` when it is imported: the message base class (encoded through ``_encode_fields``) and
#: how a decoded ``"message"`` value becomes a message again (``Message.from_dict``).
_message_class: type[Any] = _NoMessageClass


def _no_message_decoder(data: dict[str, Any]) -> Any:  # pragma: no cover - _messages installs the decoder
    raise ValueError("no message class is installed (import miniagents)")


_message_from_dict: Callable[[dict[str, Any]], Any] = _no_message_decoder


def install_message_codec(cls: type[Any], from_dict: Callable[[dict[str, Any]], Any]) -> None:
    """Encode instances of *cls* as nested messages, decode them with *from_dict* (called once, by ``_messages``)."""
    global _message_class, _message_from_dict
    _message_class = cls
    _message_from_dict = from_dict


def canonical_json(encoded: Any) -> str:
    """The canonical JSON text of *encoded* (sorted keys, no spaces, ASCII, no NaN): what hash keys digest."""
    return json.dumps(encoded, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode_value(value: Any, canonical: bool = False) -> Any:
    """Encode *value* as JSON-safe data; *canonical* folds values that compare equal into one encoding."""
    if canonical:
        folded = _fold_equal_values(value)
        if folded is not _NOT_FOLDED:
            return folded
    if value is None or (isinstance(value, (str, bool, int)) and not isinstance(value, enum.Enum)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
    if isinstance(value, tuple):
        return [encode_value(v, canonical) for v in value]
    if isinstance(value, FrozenDict):
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: encode_value(v, canonical) for k, v in value.items()}
        pairs = [[encode_value(k, canonical), encode_value(v, canonical)] for k, v in value.items()]
        if canonical:
            pairs.sort(key=canonical_json)
        return {_TAG: "dict", "v": pairs}
    if isinstance(value, _message_class):
        return {_TAG: "message", "v": value._encode_fields(canonical=canonical)}
    if isinstance(value, frozenset):
        return {
            _TAG: "frozenset",
            "v": sorted((encode_value(v, canonical) for v in value), key=canonical_json),
        }
    if isinstance(value, bytes):
        return {_TAG: "bytes", "v": base64.b64encode(value).decode("ascii")}
    if isinstance(value, enum.Enum):
        return {_TAG: "enum", "cls": class_path(type(value)), "v": encode_value(value.value, canonical)}
    if isinstance(value, datetime.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, datetime.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, datetime.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, pathlib.PurePath):
        return {_TAG: "path", "cls": type(value).__name__, "v": str(value)}
    raise TypeError(f"cannot serialise a value of type {type(value).__name__}")  # pragma: no cover


_NOT_FOLDED: Any = object()


def _fold_equal_values(value: Any) -> Any:
    """Return one encoding for all values that ``==`` considers equal, or ``_NOT_FOLDED``.

    Numbers of any type (``bool``, ``int``, ``float``, ``Decimal``, int enums) encode as their exact rational
    value; ``str`` subclasses as the plain string; aware datetimes as the UTC instant; paths by flavour.
    """
    if isinstance(value, (int, float, decimal.Decimal)):  # bool and IntEnum are ints
        if isinstance(value, float) and not math.isfinite(value):
            return {_TAG: "float", "v": repr(value)}
        if isinstance(value, decimal.Decimal) and not value.is_finite():
            return {_TAG: "decimal", "v": str(value)}
        exact = fractions.Fraction(value)
        if exact.denominator == 1:
            return int(exact.numerator)
        return {_TAG: "number", "v": f"{exact.numerator}/{exact.denominator}"}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, datetime.datetime) and value.utcoffset() is not None:
        return {_TAG: "datetime", "v": value.astimezone(datetime.timezone.utc).isoformat()}
    if isinstance(value, pathlib.PurePath):
        if isinstance(value, pathlib.PureWindowsPath):
            return {_TAG: "path", "flavour": "windows", "v": str(value).lower()}
        return {_TAG: "path", "flavour": "posix", "v": str(value)}
    return _NOT_FOLDED


_PATH_CLASSES: dict[str, type[pathlib.PurePath]] = {
    c.__name__: c
    for c in (
        pathlib.Path,
        pathlib.PosixPath,
        pathlib.WindowsPath,
        pathlib.PurePath,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
    )
}


def decode_value(value: Any) -> Any:
    """Restore the value :func:`encode_value` encoded (lists become tuples, objects ``FrozenDict``)."""
    if isinstance(value, list):
        return tuple(decode_value(v) for v in value)
    if not isinstance(value, dict):
        return value
    tag = value.get(_TAG)
    if tag is None:
        return FrozenDict({k: decode_value(v) for k, v in value.items()})
    v: Any = value["v"]
    if tag == "float":
        return float(v)
    if tag == "dict":
        return FrozenDict({decode_value(k): decode_value(item) for k, item in v})
    if tag == "message":
        return _message_from_dict(v)
    if tag == "frozenset":
        return frozenset(decode_value(item) for item in v)
    if tag == "bytes":
        return base64.b64decode(v)
    if tag == "enum":
        enum_cls = import_qualified(value["cls"])
        if not (isinstance(enum_cls, type) and issubclass(enum_cls, enum.Enum)):
            raise ValueError(f"{value['cls']!r} is not an Enum class")
        return enum_cls(decode_value(v))
    if tag == "datetime":
        return datetime.datetime.fromisoformat(v)
    if tag == "date":
        return datetime.date.fromisoformat(v)
    if tag == "time":
        return datetime.time.fromisoformat(v)
    if tag == "timedelta":
        return datetime.timedelta(days=v[0], seconds=v[1], microseconds=v[2])
    if tag == "uuid":
        return uuid.UUID(v)
    if tag == "decimal":
        return decimal.Decimal(v)
    if tag == "path":
        return _PATH_CLASSES.get(value["cls"], pathlib.PurePath)(v)
    raise ValueError(f"unknown tagged value {tag!r}")


def import_qualified(path: str) -> Any:
    """Return the object a ``"module:QualName"`` path (:func:`class_path`) names, importing its module."""
    module_name, _, qualname = path.partition(":")
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
