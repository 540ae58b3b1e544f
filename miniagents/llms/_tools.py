"""Tools for LLM agents: other miniagents and plain typed async functions, described by JSON schemas."""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Union

import attrs

from miniagents.llms._validation import Field, ValidationFailed, convert_fields, object_fields

__all__ = ["Tool", "ToolArgumentsError", "as_tools", "json_schema_for", "tool_result_text"]

_NAME_RE = re.compile(r"[^a-zA-Z0-9_-]")
_SECTION_RE = re.compile(
    r"^\s*(Args|Arguments|Parameters|Returns|Return|Yields|Raises|Examples?|Notes?)\s*:\s*$"
)
_ARG_RE = re.compile(r"^\s*\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class ToolArgumentsError(ValueError):
    """The model called a tool with arguments that do not match its declared parameters.

    Its text (sent back to the model as the tool result, with ``is_error=True``) names the tool and every
    problem with its path, e.g. ``tool 'add' got invalid arguments: b: expected int, got "x"``; the tool
    function was not called.
    """

    def __init__(self, tool: str, failure: ValidationFailed) -> None:
        self.tool = tool
        self.issues = failure.issues
        super().__init__(
            f"tool {tool!r} got invalid arguments: {failure}; the tool was not run, call it again with "
            "corrected arguments"
        )


def _sanitize_name(name: str) -> str:
    cleaned = _NAME_RE.sub("_", name.strip())[:64]
    return cleaned or "tool"


@attrs.frozen
class Tool:
    """A tool an LLM agent may call.

    Attributes:
        name: the name the model calls it by (``[a-zA-Z0-9_-]{1,64}``).
        description: what it does, for the model.
        parameters: the JSON schema (an ``"object"`` schema) of its arguments.
        handler: ``async (arguments: dict) -> Any``; the result is sent to the model as text (``str`` as is,
            messages by their content, anything else as JSON).
        calls_agent: the handler runs a miniagent (set by :meth:`from_agent`); when traced, that call has its
            own span, so the execution gets no ``execute_tool`` span (every other tool gets one).

    ``tools=[...]`` of the LLM agents also accepts miniagents and plain typed async functions; they are turned
    into :class:`Tool` objects with :meth:`from_agent` / :meth:`from_function`.
    """

    name: str = attrs.field(converter=_sanitize_name)
    description: str
    parameters: Mapping[str, Any]
    handler: Callable[[dict[str, Any]], Awaitable[Any]] = attrs.field(repr=False, eq=False)
    calls_agent: bool = attrs.field(default=False, kw_only=True, repr=False, eq=False)

    @classmethod
    def from_function(
        cls, func: Callable[..., Awaitable[Any]], *, name: str | None = None, description: str | None = None
    ) -> Tool:
        """Describe an ``async def`` function: its name, docstring and typed parameters become the tool.

        Parameter descriptions come from ``Annotated[T, "description"]`` or a Google-style ``Args:`` section.

        Every call's arguments are validated against the parameter annotations before the function runs
        (coercing only where nothing is lost, e.g. ``"2"`` -> ``2`` for an ``int``; the rules are in
        :mod:`miniagents.llms._validation`): a wrong type, a missing required argument or an unknown one (unless
        the function takes ``**kwargs``) raises :class:`ToolArgumentsError` instead, which the model gets back
        as an error tool result naming the tool and the argument path.  Enum, attrs and dataclass parameters
        receive instances, ``tuple``/``set`` parameters their own container type.

        Raises:
            TypeError: *func* is not an async function, or a parameter type has no JSON schema.

        """
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"a tool function must be an async function, got {func!r}")
        summary, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
        schema = _parameters_schema(func, skip_first=False, arg_docs=arg_docs)
        tool_name = _sanitize_name(name or str(getattr(func, "__name__", "tool")))
        fields, extra = _parameter_fields(func, skip_first=False)

        async def handler(arguments: dict[str, Any]) -> Any:
            return await func(**_validated(tool_name, arguments, fields, extra))

        return cls(
            name=tool_name,
            description=description if description is not None else summary,
            parameters=schema,
            handler=handler,
        )

    @classmethod
    def from_agent(cls, agent: Any, *, name: str | None = None, description: str | None = None) -> Tool:
        """Describe a miniagent: its alias, description and declared keyword parameters become the tool.

        The model's arguments are passed as keyword arguments of the call (parameters already set by
        ``fork()`` are not offered to the model); the agent's replies joined as text are the tool result.
        An agent whose function declares no parameters besides the context gets one required string
        argument ``input``, sent to it as its input message (passed on as before, without validation).  The
        arguments of an agent that declares parameters are validated like those of :meth:`from_function`.
        """
        func = agent.func
        summary, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
        preset = set(_preset_kwargs(agent))
        schema = _parameters_schema(func, skip_first=True, arg_docs=arg_docs, exclude=preset)
        takes_input = not schema["properties"]
        tool_name = _sanitize_name(name or agent.alias)
        fields, extra = _parameter_fields(func, skip_first=True, exclude=preset)
        if takes_input:
            schema = {
                "type": "object",
                "properties": {
                    "input": {"type": "string", "description": "The message to send to the agent."}
                },
                "required": ["input"],
            }

        async def handler(arguments: dict[str, Any]) -> Any:
            if takes_input:
                replies = agent.inquire(str(arguments.get("input", "")))
            else:
                replies = agent.inquire(None, **_validated(tool_name, arguments, fields, extra))
            return await replies.as_single_text()

        agent_description = getattr(agent, "description", None)
        return cls(
            name=tool_name,
            description=description if description is not None else (agent_description or summary),
            parameters=schema,
            handler=handler,
            calls_agent=True,
        )


def _parameter_fields(
    func: Callable[..., Any], *, skip_first: bool, exclude: set[str] | frozenset[str] = frozenset()
) -> tuple[list[Field], bool]:
    """The validated fields of a tool function's parameters, and whether it takes ``**kwargs``."""
    hints = typing.get_type_hints(func, include_extras=True)
    params = list(inspect.signature(func).parameters.values())
    if (
        skip_first
        and params
        and params[0].kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    ):
        params = params[1:]
    extra = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    fields = [
        Field(p.name, hints.get(p.name, Any), p.default is inspect.Parameter.empty)
        for p in params
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and p.name not in exclude
    ]
    return fields, extra


def _validated(
    tool: str, arguments: Mapping[str, Any], fields: Sequence[Field], extra: bool
) -> dict[str, Any]:
    try:
        return convert_fields(dict(arguments), fields, what="argument", extra=extra)
    except ValidationFailed as failure:
        raise ToolArgumentsError(tool, failure) from None


def _preset_kwargs(agent: Any) -> Mapping[str, Any]:
    for attr in ("kwargs", "default_kwargs", "fork_kwargs"):
        value = getattr(agent, attr, None)
        if isinstance(value, Mapping):
            return value
    return {}


def as_tools(items: Iterable[Any]) -> tuple[Tool, ...]:
    """Turn ``tools=[...]`` items (Tool, miniagent, async function) into tools with unique names.

    Raises:
        TypeError: an item is none of those.
        ValueError: two tools have the same name.

    """
    from miniagents import MiniAgent

    result: list[Tool] = []
    for item in items:
        if isinstance(item, Tool):
            result.append(item)
        elif isinstance(item, MiniAgent):
            result.append(Tool.from_agent(item))
        elif inspect.iscoroutinefunction(item):
            result.append(Tool.from_function(item))
        else:
            raise TypeError(f"tools must be miniagents, async functions or Tool objects, got {item!r}")
    names = [t.name for t in result]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate tool names: {', '.join(duplicates)}")
    return tuple(result)


def tool_result_text(value: Any) -> str:
    """The text sent to the model for a tool's return value."""
    from miniagents import Message

    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Message):
        return str(value)
    if isinstance(value, Sequence) and value and all(isinstance(v, Message) for v in value):
        return "\n\n".join(str(v) for v in value)
    try:
        return json.dumps(_jsonable(value), ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


# ---------------------------------------------------------------------------------------------------------------
def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Split a docstring into its summary (text before the first section) and ``Args:`` descriptions."""
    summary_lines: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in doc.splitlines():
        match = _SECTION_RE.match(line)
        if match:
            section = match.group(1).lower()
            current = None
            continue
        if section is None:
            summary_lines.append(line)
        elif section in ("args", "arguments", "parameters"):
            arg = _ARG_RE.match(line)
            if arg and (len(line) - len(line.lstrip())) <= 8:
                current = arg.group(1)
                args[current] = arg.group(2).strip()
            elif current and line.strip():
                args[current] = f"{args[current]} {line.strip()}".strip()
    return "\n".join(summary_lines).strip(), args


def _parameters_schema(
    func: Callable[..., Any],
    *,
    skip_first: bool,
    arg_docs: Mapping[str, str],
    exclude: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    signature = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:  # a forward reference that cannot be resolved
        raise TypeError(f"cannot resolve the type hints of {func!r}: {exc}") from exc
    properties: dict[str, Any] = {}
    required: list[str] = []
    params = list(signature.parameters.values())
    if (
        skip_first
        and params
        and params[0].kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    ):
        params = params[1:]
    for param in params:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"{func!r}: positional-only parameter {param.name!r} cannot be a tool argument")
        if param.name in exclude:
            continue
        hint = hints.get(param.name, Any)
        schema = json_schema_for(hint, where=f"{getattr(func, '__qualname__', func)}({param.name})")
        if param.name in arg_docs and "description" not in schema:
            schema = {**schema, "description": arg_docs[param.name]}
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        elif _json_default_ok(param.default):
            schema = {**schema, "default": _jsonable(param.default)}
        properties[param.name] = schema
    result: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    return result


def _json_default_ok(value: Any) -> bool:
    try:
        json.dumps(_jsonable(value))
    except (TypeError, ValueError):
        return False
    return True


_PRIMITIVES: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    None: {"type": "null"},
}


def json_schema_for(tp: Any, *, where: str = "") -> dict[str, Any]:
    """Return the JSON schema of a Python type annotation.

    Supported: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``, ``Literal``, ``Enum`` subclasses,
    ``list``/``tuple``/``set``/``Sequence`` (and ``tuple[X, Y]``), ``dict``/``Mapping`` with ``str`` keys,
    ``Optional``/``Union``/``X | Y``, ``TypedDict``, dataclasses, attrs classes and
    ``Annotated[T, "description"]``.  A dataclass or attrs class is an object schema with its docstring
    summary as ``description``, ``Attributes:`` docs and ``Annotated`` texts as property descriptions, its
    JSON-able defaults as ``default``, the fields without a default as ``required`` and
    ``additionalProperties: false`` (unknown fields are rejected by the validation).

    Raises:
        TypeError: the type has no JSON schema (the message names *where* it was found).

    """
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(tp)
        schema = json_schema_for(base, where=where)
        for item in meta:
            if isinstance(item, str):
                schema = {**schema, "description": item}
        return schema
    if tp is Any or tp is object:
        return {}
    if tp in _PRIMITIVES:
        return dict(_PRIMITIVES[tp])
    if origin is Literal:
        values = list(typing.get_args(tp))
        schema = {"enum": values}
        kinds = {type(v) for v in values}
        if len(kinds) == 1 and next(iter(kinds)) in (str, int, bool):
            schema["type"] = _PRIMITIVES[next(iter(kinds))]["type"]
        return schema
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        options = [json_schema_for(arg, where=where) for arg in typing.get_args(tp)]
        return {"anyOf": options}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [member.value for member in tp]}
    if isinstance(tp, type) and typing.is_typeddict(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        required_keys = getattr(tp, "__required_keys__", frozenset(hints))
        return {
            "type": "object",
            "properties": {k: json_schema_for(v, where=f"{where}.{k}") for k, v in hints.items()},
            "required": [k for k in hints if k in required_keys],
        }
    if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or attrs.has(tp)):
        return _object_schema(tp, where)
    if tp in (list, tuple, set, frozenset) or origin in (
        list,
        set,
        frozenset,
        collections.abc.Sequence,
        collections.abc.Iterable,
        collections.abc.Set,
        collections.abc.MutableSequence,
    ):
        args = typing.get_args(tp)
        schema = {"type": "array"}
        if args:
            schema["items"] = json_schema_for(args[0], where=where)
        return schema
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": json_schema_for(args[0], where=where)}
        items = [json_schema_for(a, where=where) for a in args]
        return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
    if tp is dict or origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        args = typing.get_args(tp)
        if args and args[0] is not str:
            raise TypeError(f"{where}: JSON objects need str keys, not {args[0]!r}")
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = json_schema_for(args[1], where=where)
        return schema
    raise TypeError(f"{where}: no JSON schema for type {tp!r}")


def _object_schema(tp: type, where: str) -> dict[str, Any]:
    """The JSON schema of a dataclass or attrs class (see :func:`json_schema_for`)."""
    doc = inspect.getdoc(tp) or ""
    if dataclasses.is_dataclass(tp) and doc.startswith(f"{tp.__name__}("):
        doc = ""  # the signature dataclasses write when there is no docstring
    summary, field_docs = _parse_docstring(doc.replace("Attributes:", "Args:"))
    defaults: dict[str, Any] = {}
    if attrs.has(tp):
        for a in attrs.fields(tp):
            if a.init and a.default is not attrs.NOTHING and not isinstance(a.default, attrs.Factory):  # type: ignore[arg-type]
                defaults[a.name] = a.default
    else:
        for f in dataclasses.fields(tp):
            if f.init and f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
    properties: dict[str, Any] = {}
    for field in object_fields(tp):
        schema = json_schema_for(
            field.type, where=f"{where}.{field.key}" if where else f"{tp.__name__}.{field.key}"
        )
        if field.key in field_docs and "description" not in schema:
            schema = {**schema, "description": field_docs[field.key]}
        if field.key in defaults and _json_default_ok(defaults[field.key]):
            schema = {**schema, "default": _jsonable(defaults[field.key])}
        properties[field.key] = schema
    result: dict[str, Any] = {"type": "object"}
    if summary:
        result["description"] = summary
    result["properties"] = properties
    result["required"] = [f.key for f in object_fields(tp) if f.required]
    result["additionalProperties"] = False
    return result
