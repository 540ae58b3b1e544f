"""Structured output: the ``output_type`` / ``output_mode`` / ``output_retries`` options of the LLM agents.

Two modes:

* ``"tool"`` (the default, works with any model that calls tools): a ``final_result`` tool whose parameters are
  the output schema is offered next to the agent's own tools, and ``tool_choice`` defaults to ``"required"``;
  the model answers by calling it.
* ``"native"``: the provider's own structured output.  OpenAI: ``response_format: {"type": "json_schema",
  "json_schema": {"name", "schema", "strict": true}}`` (the schema made strict: ``additionalProperties: false``
  and every property required, optional ones as ``anyOf [..., null]``; a schema that cannot be strict, e.g.
  with a free-form ``dict``, is sent with ``"strict": false``).  Anthropic: ``output_config: {"format":
  {"type": "json_schema", "schema"}}`` (the generally available form; objects get ``additionalProperties:
  false``).  The answer is the JSON text of the model's turn.

Either way the answer is validated by :mod:`miniagents.llms._validation`; a failure is sent back to the model
(as the error result of its ``final_result`` call, or as a user turn) at most ``output_retries`` times, then
:class:`~miniagents.llms.OutputValidationError` is raised.  The accepted turn carries the validated value, as
JSON data, in its ``output`` field; :func:`output_of` turns it back into the typed instance.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, TypeVar, overload

import attrs

from miniagents import Message
from miniagents._frozen import thaw
from miniagents.llms._tools import json_schema_for
from miniagents.llms._validation import Issue, ValidationFailed, convert, convert_by_schema, to_json

__all__ = ["OUTPUT_TOOL_NAME", "OutputJudge", "OutputSpec", "output_of", "output_spec"]

#: The name of the tool the model answers with in the ``"tool"`` output mode.
OUTPUT_TOOL_NAME = "final_result"
OUTPUT_MODES = ("tool", "native")

_T = TypeVar("_T")


def _is_output_class(value: Any) -> bool:
    return isinstance(value, type) and (
        attrs.has(value) or hasattr(value, "__dataclass_fields__") or typing.is_typeddict(value)
    )


def output_schema(agent: str, output_type: Any) -> dict[str, Any]:
    """The JSON schema of an ``output_type`` (an object schema).

    Raises:
        TypeError: *output_type* is not an attrs class, a dataclass, a ``TypedDict`` or a JSON-schema dict of an
            object, or a field type has no JSON schema (the message names the agent and the field).

    """
    if isinstance(output_type, Mapping):
        schema = thaw(output_type)
        if schema.get("type", "object") != "object" or not isinstance(schema.get("properties", {}), Mapping):
            raise TypeError(
                f'agent {agent!r}: output_type must be the JSON schema of an object ("type": "object"), '
                f"got type {schema.get('type')!r}"
            )
        return dict(schema)
    if not _is_output_class(output_type):
        raise TypeError(
            f"agent {agent!r}: output_type must be an attrs class, a dataclass, a TypedDict or a JSON-schema "
            f"dict, got {output_type!r}"
        )
    return json_schema_for(output_type, where=f"agent {agent!r}: output_type {output_type.__name__}")


@attrs.frozen
class OutputSpec:
    """What one call expects as its structured output."""

    agent: str
    target: Any  # the class, or the JSON-schema dict
    schema: dict[str, Any]
    mode: str
    retries: int

    @property
    def name(self) -> str:
        """The schema's name (``[a-zA-Z0-9_-]``): the class name, the schema's ``title``, or ``output``."""
        raw = (
            self.target.__name__
            if isinstance(self.target, type)
            else str(self.schema.get("title") or "output")
        )
        cleaned = "".join(c if c.isalnum() or c in "_-" else "_" for c in raw)[:64]
        return cleaned or "output"

    @property
    def described(self) -> str:
        """What the target is, for error messages."""
        return self.target.__name__ if isinstance(self.target, type) else f"the schema {self.name!r}"

    def convert(self, value: Any) -> Any:
        """The validated value (an instance of the class, or the coerced JSON data).

        Raises:
            ValidationFailed: it does not match.

        """
        if isinstance(self.target, type):
            return convert(value, self.target)
        return convert_by_schema(value, self.schema)

    def tool(self) -> Any:
        """The ``final_result`` tool of the ``"tool"`` mode (never run: the loop validates its arguments)."""
        from miniagents.llms._tools import Tool

        async def handler(arguments: dict[str, Any]) -> Any:  # pragma: no cover - the loop never runs it
            raise RuntimeError("final_result is handled by the agent loop")

        description = self.schema.get("description") or ""
        return Tool(
            name=OUTPUT_TOOL_NAME,
            description=(
                "Give the final answer by calling this tool (its arguments are the answer). "
                + (str(description) if description else "")
            ).strip(),
            parameters=self.schema,
            handler=handler,
        )

    def amend_request(self, api: str, body: dict[str, Any]) -> None:
        """Add the API's native structured-output field to a request *body* (``extra_body`` wins).

        *api* is ``"chat_completions"`` (``response_format``), ``"responses"`` (``text.format``) or
        ``"anthropic"`` (``output_config.format``).
        """
        if self.mode != "native":
            return
        if api in ("chat_completions", "responses"):
            strict = strict_schema(self.schema)
            spec: dict[str, Any] = {
                "name": self.name,
                "schema": strict or self.schema,
                "strict": strict is not None,
            }
            if self.schema.get("description"):
                spec["description"] = self.schema["description"]
            if api == "chat_completions":
                body.setdefault("response_format", {"type": "json_schema", "json_schema": spec})
            else:
                text = dict(body.get("text") or {})
                text.setdefault("format", {"type": "json_schema", **spec})
                body["text"] = text
        elif api == "anthropic":
            config = dict(body.get("output_config") or {})
            config.setdefault("format", {"type": "json_schema", "schema": closed_schema(self.schema)})
            body["output_config"] = config

    def judge(self) -> OutputJudge:
        """A fresh judge of one model turn."""
        return OutputJudge(self)


class OutputJudge:
    """Validates the structured output of one model turn, before its message is finished.

    After :meth:`__call__`: :attr:`accepted` (the ``output`` field was added), or :attr:`issues` (the answer is
    invalid, :attr:`raw` is what the model sent and :attr:`call_id` the ``final_result`` call, if any), or
    neither (the turn only called other tools).
    """

    def __init__(self, spec: OutputSpec) -> None:
        self.spec = spec
        self.accepted = False
        self.issues: tuple[Issue, ...] | None = None
        self.raw = ""
        self.call_id: str | None = None
        #: The model refused to answer (its ``refusal``): asking again is pointless, the call fails at once.
        self.refused = False

    def __call__(self, fields: dict[str, Any], calls: Iterable[Any], text: str) -> None:
        """Judge a turn: its message *fields* (``output`` is added to them), tool *calls* and *text*."""
        calls = list(calls)
        final = [c for c in calls if c.name == OUTPUT_TOOL_NAME] if self.spec.mode == "tool" else []
        refusal = fields.get("refusal")
        if not final and isinstance(refusal, str) and refusal:
            self.raw = text or refusal
            self.refused = True
            self.issues = (Issue("", f"the model refused to answer: {refusal}"),)
            return
        if self.spec.mode == "tool":
            if final:
                self.call_id = final[0].id
                self._check(final[0].arguments, fields)
            elif fields.get("incomplete_tool_calls"):
                self.raw = text
                self.issues = (Issue("", "the answer was cut off by the token limit (raise max_tokens)"),)
            elif not calls:
                self.raw = text
                self.issues = (
                    Issue(
                        "", f"the answer must be given by calling the {OUTPUT_TOOL_NAME} tool, not as text"
                    ),
                )
            return
        if calls:
            return
        if fields.get("finish_reason") in _CUT_OFF:
            self.raw = text
            self.issues = (Issue("", "the answer was cut off by the token limit (raise max_tokens)"),)
            return
        self._check(text, fields)

    def _check(self, raw: str, fields: dict[str, Any]) -> None:
        self.raw = raw
        try:
            value = json.loads(_strip_fence(raw)) if raw.strip() else _EMPTY
        except ValueError as exc:
            self.issues = (Issue("", f"the answer is not valid JSON ({exc})"),)
            return
        if value is _EMPTY:
            self.issues = (Issue("", "the answer is empty; a JSON object is expected"),)
            return
        if self.spec.mode == "native":
            value = drop_null_optionals(value, self.schema_root, self.schema_root)
        try:
            result = self.spec.convert(value)
        except ValidationFailed as failure:
            self.issues = failure.issues
            return
        fields["output"] = to_json(result)
        self.accepted = True

    @property
    def schema_root(self) -> dict[str, Any]:
        """The output schema."""
        return self.spec.schema

    def feedback(self) -> str:
        """The text sent back to the model about its invalid answer."""
        problems = "; ".join(str(i) for i in self.issues or ())
        how = (
            f"call the {OUTPUT_TOOL_NAME} tool again with corrected arguments"
            if self.spec.mode == "tool"
            else "answer again with only the corrected JSON object"
        )
        return f"The answer is not a valid {self.spec.described}: {problems}. Please {how}."


_EMPTY: Any = object()
#: Finish reasons of a turn cut off by the token limit (OpenAI, Anthropic).
_CUT_OFF = frozenset({"length", "max_tokens"})


def _strip_fence(text: str) -> str:
    """The JSON inside a Markdown code fence (some models add one in spite of the schema), else *text*."""
    stripped = text.strip()
    if stripped.startswith("```") and stripped.endswith("```"):
        inner = stripped[3:-3]
        return inner.split("\n", 1)[1] if inner.startswith(("json\n", "JSON\n")) else inner
    return stripped


def _resolve(schema: Any, root: Mapping[str, Any]) -> Any:
    ref = schema.get("$ref") if isinstance(schema, Mapping) else None
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        return target if isinstance(target, Mapping) else schema
    return schema


def closed_schema(schema: Any) -> Any:
    """*schema* with ``additionalProperties: false`` on every object schema that does not say otherwise."""
    if isinstance(schema, list):
        return [closed_schema(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    result = {k: closed_schema(v) for k, v in schema.items()}
    if isinstance(schema.get("properties"), Mapping):
        result["properties"] = {k: closed_schema(v) for k, v in schema["properties"].items()}
        result.setdefault("additionalProperties", False)
    return result


def strict_schema(schema: Any) -> Any:
    """The OpenAI strict form of *schema*, or ``None`` when it cannot be made strict.

    Every object gets ``additionalProperties: false`` and lists all its properties as required; a property
    that was optional becomes ``anyOf [its schema, null]`` (a ``null`` answer is dropped before validation,
    so the default applies); ``default`` keywords are removed.  An object with free-form or typed additional
    properties (a ``dict``) cannot be strict.
    """
    if isinstance(schema, list):
        items = [strict_schema(s) for s in schema]
        return None if any(i is None for i in items) else items
    if not isinstance(schema, Mapping):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "default":
            continue
        if key in ("properties", "$defs", "definitions") and isinstance(value, Mapping):
            converted = {k: strict_schema(v) for k, v in value.items()}
            if any(v is None for v in converted.values()):
                return None
            result[key] = converted
        elif key in ("items", "anyOf", "oneOf", "allOf", "prefixItems", "not", "additionalProperties"):
            converted_value = strict_schema(value) if not isinstance(value, bool) else value
            if converted_value is None:
                return None
            result[key] = converted_value
        else:
            result[key] = value
    if result.get("type") == "object" or "properties" in result:
        if result.get("additionalProperties", False) is not False or "properties" not in result:
            return None
        result["additionalProperties"] = False
        required = set(schema.get("required") or ())
        properties = dict(result["properties"])
        for name, sub in properties.items():
            if name not in required:
                properties[name] = {"anyOf": [sub, {"type": "null"}]}
        result["properties"] = properties
        result["required"] = list(properties)
    return result


def drop_null_optionals(value: Any, schema: Any, root: Mapping[str, Any]) -> Any:
    """*value* without the ``null`` members that a strict schema forced for optional properties."""
    schema = _resolve(schema, root)
    if not isinstance(schema, Mapping):
        return value
    if isinstance(value, dict) and isinstance(schema.get("properties"), Mapping):
        required = set(schema.get("required") or ())
        properties = schema["properties"]
        return {
            k: drop_null_optionals(v, properties.get(k, {}), root)
            for k, v in value.items()
            if not (v is None and k in properties and k not in required)
        }
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [drop_null_optionals(v, schema["items"], root) for v in value]
    for option in schema.get("anyOf") or ():
        option = _resolve(option, root)
        if isinstance(option, Mapping) and isinstance(value, dict) and "properties" in option:
            return drop_null_optionals(value, option, root)
    return value


def output_spec(agent: str, options: Any) -> OutputSpec | None:
    """The structured output an LLM call expects (``None`` without ``output_type``)."""
    if options.output_type is None:
        return None
    return OutputSpec(
        agent=agent,
        target=options.output_type,
        schema=output_schema(agent, options.output_type),
        mode=options.output_mode,
        retries=options.output_retries,
    )


@overload
async def output_of(source: Any, output_type: type[_T]) -> _T: ...
@overload
async def output_of(source: Any, output_type: None = None) -> Any: ...
async def output_of(source: Any, output_type: Any = None) -> Any:
    """The structured output of an LLM call made with ``output_type=``.

    *source* is the call's replies (a ``MessageSequencePromise``, awaited), a list of messages, or the message
    itself; the last message with an ``output`` field is used.  With *output_type* (an attrs class, dataclass
    or ``TypedDict``) the stored JSON data is validated into an instance of it, else the data is returned as
    plain dicts and lists.

    Raises:
        LookupError: no message has an ``output`` field.
        ValidationFailed: the data does not match *output_type* (a different type than the call's).

    """
    if isinstance(source, Message):
        messages: list[Any] = [source]
    elif isinstance(source, Awaitable):
        messages = list(await source)
    else:
        messages = list(source)
    for message in reversed(messages):
        data = message.get("output") if isinstance(message, Message) else None
        if data is not None:
            plain = thaw(data)
            if output_type is None or isinstance(output_type, Mapping):
                return plain
            return convert(plain, output_type)
    raise LookupError("no message has an 'output' field: was the LLM agent called with output_type=?")
