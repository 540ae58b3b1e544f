"""One validation engine for what models send back: tool arguments and structured output.

A JSON value decoded from the model is checked against a Python type annotation (:func:`convert`) or a JSON
schema dict (:func:`convert_by_schema`) and turned into the declared Python value (``Enum`` members, attrs
and dataclass instances, tuples...).  Every problem is reported as an :class:`Issue` naming the path of the
offending value (``b``, ``point.y``, ``items[2].name``) and what was expected, so that the model can be told
exactly what to fix.

Coercion rules (applied only where the conversion cannot lose information; models commonly send numbers and
booleans as strings):

* ``int``: a JSON integer; a float with an integral value (``2.0`` -> ``2``); a string of a decimal integer
  (``"2"``, ``"-3"``, surrounding whitespace ignored).  ``2.5``, ``"2.5"``, ``"abc"`` and booleans are errors.
* ``float``: a JSON number (integers become floats); a string of a finite decimal number (``"2.5"``).
  Booleans, ``"nan"`` and ``"inf"`` are errors.
* ``bool``: ``true`` / ``false``; the strings ``"true"`` / ``"false"`` (any case).  Numbers are errors.
* ``str``: only strings (``12`` for a ``str`` is an error: it is not clear which text was meant).
* ``None``: only ``null``.
* ``Literal`` / ``Enum``: a value equal to one of the literals / member values, of the same type, after the
  coercions above (``"2"`` matches ``Literal[2]``).  Enums are matched by value, never by member name.
* unions (``X | Y``, ``Optional[X]``): the first option the value matches *without* coercion wins; only when
  none does are the options tried again with coercion (so ``"2"`` stays a string for ``int | str``).
* containers: ``list`` / ``Sequence`` / ``tuple`` / ``set`` / ``frozenset`` take JSON arrays, ``dict`` /
  ``Mapping`` take JSON objects (``str`` keys); ``tuple[X, Y]`` needs exactly two items.
* objects: attrs classes, dataclasses and ``TypedDict`` take JSON objects; missing required fields and unknown
  fields are errors; fields with defaults may be left out.  Instances are built by calling the class, so attrs
  validators and converters run; an exception they raise is an issue at the object's path.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import attrs

__all__ = [
    "Field",
    "Issue",
    "ValidationFailed",
    "convert",
    "convert_by_schema",
    "convert_fields",
    "describe",
    "object_fields",
    "to_json",
]

#: At most this many issues are collected (the first ones): enough to fix a reply, short enough to send.
MAX_ISSUES = 20

_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@attrs.frozen
class Issue:
    """One problem of a value: where it is (``""`` for the value itself) and what was wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ValidationFailed(ValueError):
    """A value does not match its type or schema; :attr:`issues` lists every problem found (with paths)."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = tuple(issues)
        super().__init__("; ".join(str(i) for i in self.issues))


@attrs.frozen
class Field:
    """One named field of a JSON object.

    Its JSON key, Python type, whether it must be given, and the keyword argument it is passed as (``None``:
    the key itself).
    """

    key: str
    type: Any
    required: bool
    init_name: str | None = None


class _Invalid:
    pass


_INVALID: Any = _Invalid()


def convert(value: Any, tp: Any, *, path: str = "") -> Any:
    """Return *value* (decoded JSON) converted to the annotation *tp*, by the module's coercion rules.

    Raises:
        ValidationFailed: the value does not match; every issue names its path below *path*.

    """
    issues: list[Issue] = []
    result = _convert(value, tp, path, issues, lax=True)
    if issues or result is _INVALID:
        raise ValidationFailed(issues or [Issue(path, f"expected {describe(tp)}, got {_show(value)}")])
    return result


def convert_fields(
    value: Any, fields: Sequence[Field], *, what: str = "field", extra: bool = False, path: str = ""
) -> dict[str, Any]:
    """Check a JSON object against named *fields*; return the converted values by keyword name.

    Unknown keys are issues unless *extra* (then they are kept as they are); *what* names the fields in the
    messages (``"argument"`` for tool arguments).

    Raises:
        ValidationFailed: the object does not match.

    """
    issues: list[Issue] = []
    result = _convert_fields(value, fields, path, issues, lax=True, what=what, extra=extra)
    if issues or result is _INVALID:
        raise ValidationFailed(issues or [Issue(path, f"expected an object, got {_show(value)}")])
    return typing.cast("dict[str, Any]", result)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _add(issues: list[Issue], path: str, message: str) -> Any:
    if len(issues) < MAX_ISSUES:
        issues.append(Issue(path, message))
    return _INVALID


def describe(tp: Any) -> str:
    """A short name of the annotation *tp* for error messages (``int``, ``int or null``, ``one of "a", "b"``)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return describe(typing.get_args(tp)[0])
    if tp is None or tp is type(None):
        return "null"
    if tp in (int, float, str, bool):
        return str(tp.__name__)
    if origin is Literal:
        return "one of " + ", ".join(_show(v) for v in typing.get_args(tp))
    if _is_union(tp):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(_show(m.value) for m in tp)
    if isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp) or typing.is_typeddict(tp)):
        return f"an object ({tp.__name__})"
    if tp in (dict,) or origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return "an object"
    if tp in (list, tuple, set, frozenset) or origin in (
        list,
        tuple,
        set,
        frozenset,
        collections.abc.Sequence,
        collections.abc.Iterable,
        collections.abc.Set,
        collections.abc.MutableSequence,
    ):
        return "an array"
    return getattr(tp, "__name__", repr(tp))


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType))


def _convert(value: Any, tp: Any, path: str, issues: list[Issue], *, lax: bool) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _convert(value, typing.get_args(tp)[0], path, issues, lax=lax)
    if tp is Any or tp is object:
        return value
    if tp is None or tp is type(None):
        return None if value is None else _mismatch(value, tp, path, issues)
    if tp in (int, float, str, bool):
        result = _scalar(value, tp, lax=lax)
        return _mismatch(value, tp, path, issues) if result is _INVALID else result
    if origin is Literal:
        for literal in typing.get_args(tp):
            if _same_scalar(value, literal, lax=lax):
                return literal
        return _mismatch(value, tp, path, issues)
    if _is_union(tp):
        return _union(value, tp, path, issues, lax=lax)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if _same_scalar(value, member.value, lax=lax):
                return member
        return _mismatch(value, tp, path, issues)
    if isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp) or typing.is_typeddict(tp)):
        return _object(value, tp, path, issues, lax=lax)
    if tp is dict or origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        if not isinstance(value, dict):
            return _mismatch(value, tp, path, issues)
        args = typing.get_args(tp)
        item_type = args[1] if len(args) == 2 else Any
        converted = {
            k: _convert(v, item_type, _join(path, str(k)), issues, lax=lax) for k, v in value.items()
        }
        return _INVALID if any(v is _INVALID for v in converted.values()) else converted
    if (
        origin is tuple
        and typing.get_args(tp)
        and not (len(typing.get_args(tp)) == 2 and typing.get_args(tp)[1] is Ellipsis)
    ):
        args = typing.get_args(tp)
        if not isinstance(value, list):
            return _mismatch(value, tp, path, issues)
        if len(value) != len(args):
            return _add(issues, path, f"expected an array of {len(args)} items, got {len(value)} items")
        items = [
            _convert(v, a, f"{path}[{i}]", issues, lax=lax)
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        ]
        return _INVALID if any(v is _INVALID for v in items) else tuple(items)
    if tp in (list, tuple, set, frozenset) or origin in (
        list,
        tuple,
        set,
        frozenset,
        collections.abc.Sequence,
        collections.abc.Iterable,
        collections.abc.Set,
        collections.abc.MutableSequence,
    ):
        if not isinstance(value, list):
            return _mismatch(value, tp, path, issues)
        args = typing.get_args(tp)
        item_type = args[0] if args else Any
        items = [_convert(v, item_type, f"{path}[{i}]", issues, lax=lax) for i, v in enumerate(value)]
        if any(v is _INVALID for v in items):
            return _INVALID
        container = tp if isinstance(tp, type) else origin
        if container in (tuple,):
            return tuple(items)
        if container in (set, collections.abc.Set):
            return set(items)
        if container is frozenset:
            return frozenset(items)
        return items
    return _add(issues, path, f"cannot validate a value of type {tp!r}")


def _mismatch(value: Any, tp: Any, path: str, issues: list[Issue]) -> Any:
    return _add(issues, path, f"expected {describe(tp)}, got {_show(value)}")


def _scalar(value: Any, tp: type, *, lax: bool) -> Any:
    """*value* as the scalar type *tp*, or ``_INVALID``."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if lax and isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return _INVALID
    if isinstance(value, bool):
        return _INVALID
    if tp is str:
        return value if isinstance(value, str) else _INVALID
    if tp is int:
        if isinstance(value, int):
            return value
        if lax and isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if lax and isinstance(value, str) and _INT_RE.match(value.strip()):
            return int(value.strip())
        return _INVALID
    # float
    if isinstance(value, (int, float)) or (lax and isinstance(value, str) and _FLOAT_RE.match(value.strip())):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            return _INVALID
        return number if math.isfinite(number) else _INVALID
    return _INVALID


def _same_scalar(value: Any, expected: Any, *, lax: bool) -> bool:
    if type(expected) in (int, float, str, bool):
        converted = _scalar(value, type(expected), lax=lax)
        return converted is not _INVALID and converted == expected
    return bool(value == expected)


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "scalar"


def _type_kind(tp: Any) -> str:
    name = describe(tp)
    if name.startswith("an object"):
        return "object"
    if name == "an array":
        return "array"
    return "scalar"


def _union(value: Any, tp: Any, path: str, issues: list[Issue], *, lax: bool) -> Any:
    options = typing.get_args(tp)
    for coerce in (False, True) if lax else (False,):
        for option in options:
            scratch: list[Issue] = []
            result = _convert(value, option, path, scratch, lax=coerce)
            if result is not _INVALID and not scratch:
                return result
    # No option matches: a structured value that only one option could be reports that option's issues.
    kind = _json_kind(value)
    candidates = [o for o in options if _type_kind(o) == kind]
    if kind != "scalar" and len(candidates) == 1:
        return _convert(value, candidates[0], path, issues, lax=lax)
    return _mismatch(value, tp, path, issues)


def object_fields(tp: type) -> tuple[Field, ...]:
    """The JSON fields of an attrs class, dataclass or ``TypedDict`` (init fields only; cached per class)."""
    return _cached_fields(tp)


@functools.lru_cache(maxsize=512)
def _cached_fields(tp: Any) -> tuple[Field, ...]:
    return tuple(_object_fields(tp))


def _object_fields(tp: Any) -> list[Field]:
    hints = typing.get_type_hints(tp, include_extras=True)
    if typing.is_typeddict(tp):
        required = getattr(tp, "__required_keys__", frozenset(hints))
        return [Field(k, v, k in required) for k, v in hints.items()]
    if attrs.has(tp):
        return [
            Field(f.name, hints.get(f.name, f.type or Any), f.default is attrs.NOTHING, f.alias)
            for f in attrs.fields(tp)
            if f.init
        ]
    return [
        Field(
            f.name,
            hints.get(f.name, Any),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(tp)
        if f.init
    ]


def _object(value: Any, tp: type, path: str, issues: list[Issue], *, lax: bool) -> Any:
    kwargs = _convert_fields(value, object_fields(tp), path, issues, lax=lax, what="field", extra=False)
    if kwargs is _INVALID:
        return _INVALID
    if typing.is_typeddict(tp):
        return kwargs
    try:
        return tp(**kwargs)
    except Exception as exc:  # an attrs validator or converter, a __post_init__ check
        return _add(issues, path, f"{type(exc).__name__}: {exc}")


def _convert_fields(
    value: Any,
    fields: Sequence[Field],
    path: str,
    issues: list[Issue],
    *,
    lax: bool,
    what: str,
    extra: bool,
) -> Any:
    if not isinstance(value, dict):
        return _add(issues, path, f"expected an object, got {_show(value)}")
    known = {f.key: f for f in fields}
    failed = False
    result: dict[str, Any] = {}
    for key in value:
        if key not in known and not extra:
            names = ", ".join(known) or "none"
            _add(issues, _join(path, str(key)), f"unknown {what} (the {what}s are: {names})")
            failed = True
    for field in fields:
        if field.key not in value:
            if field.required:
                _add(issues, _join(path, field.key), f"missing required {what}")
                failed = True
            continue
        converted = _convert(value[field.key], field.type, _join(path, field.key), issues, lax=lax)
        if converted is _INVALID:
            failed = True
        else:
            result[field.init_name or field.key] = converted
    if extra:
        for key, item in value.items():
            if key not in known:
                result[key] = item
    return _INVALID if failed else result


# -- JSON schema dicts ------------------------------------------------------------------------------------------
_SCHEMA_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "null": None,
}


def convert_by_schema(value: Any, schema: Mapping[str, Any], *, path: str = "") -> Any:
    """Check *value* against a JSON schema dict (the subset models are given) with the same coercion rules.

    Understood keywords: ``type`` (a name or a list), ``enum``, ``const``, ``properties``, ``required``,
    ``additionalProperties`` (bool or schema), ``items``, ``prefixItems``, ``minItems``/``maxItems``,
    ``anyOf``/``oneOf`` (the first matching option), ``$ref`` to ``#/$defs/...`` or ``#/definitions/...``.
    Other keywords (formats, patterns, bounds) are not checked.  Returns the coerced value.

    Raises:
        ValidationFailed: the value does not match.

    """
    issues: list[Issue] = []
    result = _by_schema(value, schema, schema, path, issues, lax=True)
    if issues or result is _INVALID:
        raise ValidationFailed(issues or [Issue(path, f"does not match the schema: {_show(value)}")])
    return result


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    seen = 0
    while isinstance(schema.get("$ref"), str) and seen < 50:
        ref = schema["$ref"]
        target: Any = root
        for part in ref.lstrip("#/").split("/") if ref.startswith("#/") else ():
            target = target.get(part) if isinstance(target, Mapping) else None
        if not isinstance(target, Mapping) or target is schema:
            break
        schema = target
        seen += 1
    return schema


def _schema_name(schema: Mapping[str, Any]) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(_show(v) for v in schema["enum"])
    if "const" in schema:
        return _show(schema["const"])
    kind = schema.get("type")
    names = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "null"}
    names.update({"object": "an object", "array": "an array"})
    if isinstance(kind, str):
        return names.get(kind, kind)
    if isinstance(kind, list):
        return " or ".join(names.get(str(k), str(k)) for k in kind)
    return "a value of the schema"


def _by_schema(
    value: Any,
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    path: str,
    issues: list[Issue],
    *,
    lax: bool,
) -> Any:
    schema = _resolve(schema, root)
    options = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(options, list) and options:
        for coerce in (False, True) if lax else (False,):
            for option in options:
                scratch: list[Issue] = []
                result = _by_schema(value, option, root, path, scratch, lax=coerce)
                if result is not _INVALID and not scratch:
                    return result
        names = " or ".join(_schema_name(_resolve(o, root)) for o in options if isinstance(o, Mapping))
        return _add(issues, path, f"expected {names}, got {_show(value)}")
    if "const" in schema:
        ok = _same_scalar(value, schema["const"], lax=lax)
        return (
            schema["const"]
            if ok
            else _add(issues, path, f"expected {_schema_name(schema)}, got {_show(value)}")
        )
    if "enum" in schema:
        for item in schema["enum"]:
            if _same_scalar(value, item, lax=lax):
                return item
        return _add(issues, path, f"expected {_schema_name(schema)}, got {_show(value)}")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    if not kinds:
        if "properties" in schema:
            kinds = ["object"]
        elif "items" in schema or "prefixItems" in schema:
            kinds = ["array"]
        else:
            return value
    for coerce in (False, True) if lax else (False,):
        for name in kinds:
            if name in _SCHEMA_TYPES:
                tp = _SCHEMA_TYPES[name]
                if tp is None:
                    if value is None:
                        return None
                    continue
                result = _scalar(value, tp, lax=coerce)
                if result is not _INVALID:
                    return result
            elif name == "object" and isinstance(value, dict):
                return _schema_object(value, schema, root, path, issues, lax=lax)
            elif name == "array" and isinstance(value, list):
                return _schema_array(value, schema, root, path, issues, lax=lax)
    return _add(issues, path, f"expected {_schema_name(schema)}, got {_show(value)}")


def _schema_object(
    value: dict[str, Any],
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    path: str,
    issues: list[Issue],
    *,
    lax: bool,
) -> Any:
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    additional = schema.get("additionalProperties", True)
    failed = False
    result: dict[str, Any] = {}
    for key in required:
        if key not in value:
            _add(issues, _join(path, str(key)), "missing required field")
            failed = True
    for key, item in value.items():
        sub_path = _join(path, str(key))
        if key in properties:
            sub: Any = properties[key]
        elif additional is False:
            names = ", ".join(properties) or "none"
            _add(issues, sub_path, f"unknown field (the fields are: {names})")
            failed = True
            continue
        else:
            sub = additional if isinstance(additional, Mapping) else {}
        converted = _by_schema(item, sub, root, sub_path, issues, lax=lax)
        if converted is _INVALID:
            failed = True
        else:
            result[key] = converted
    return _INVALID if failed else result


def _schema_array(
    value: list[Any],
    schema: Mapping[str, Any],
    root: Mapping[str, Any],
    path: str,
    issues: list[Issue],
    *,
    lax: bool,
) -> Any:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        return _add(issues, path, f"expected at least {low} items, got {len(value)}")
    if isinstance(high, int) and len(value) > high:
        return _add(issues, path, f"expected at most {high} items, got {len(value)}")
    prefix = schema.get("prefixItems") or []
    rest = schema.get("items", {})
    items = []
    for i, item in enumerate(value):
        sub = prefix[i] if i < len(prefix) else rest
        items.append(
            _by_schema(item, sub if isinstance(sub, Mapping) else {}, root, f"{path}[{i}]", issues, lax=lax)
        )
    return _INVALID if any(v is _INVALID for v in items) else items


def to_json(value: Any) -> Any:
    """A validated value as JSON data.

    Instances become objects of their fields, enums their values, containers lists: the inverse of
    :func:`convert` (``convert(to_json(v), T) == v`` for values of ``T``).
    """
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, type):
        return value
    if attrs.has(type(value)) or dataclasses.is_dataclass(value):
        return {f.key: to_json(getattr(value, f.key)) for f in object_fields(type(value))}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    return value
