"""Request validation: what the real OpenAI Chat Completions, Responses and Anthropic Messages APIs reject."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from miniagents.testing.fake_llm_server._recorded import RecordedRequest

_OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _validate(
    provider: str, request: RecordedRequest, expected_key: str | None, *, check_body: bool
) -> tuple[int, str, str] | None:
    if provider in ("openai", "openai_responses"):
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            return 401, "You didn't provide an API key.", "invalid_request_error"
        if expected_key is not None and auth[len("Bearer ") :] != expected_key:
            return 401, "Incorrect API key provided.", "invalid_request_error"
    else:
        key = request.headers.get("x-api-key", "")
        if not key:
            return 401, "x-api-key header is required", "authentication_error"
        if expected_key is not None and key != expected_key:
            return 401, "invalid x-api-key", "authentication_error"
        if check_body and not request.headers.get("anthropic-version"):
            return 400, "anthropic-version: header is required", "invalid_request_error"
    if not check_body:
        return None
    if not request.headers.get("content-type", "").startswith("application/json"):
        return 400, "Content-Type must be application/json", "invalid_request_error"
    body = request.json
    if not isinstance(body, dict):
        return 400, "the request body is not a JSON object", "invalid_request_error"
    if provider == "openai_responses":
        problem = _validate_responses(body)
    else:
        problem = _validate_openai(body) if provider == "openai" else _validate_anthropic(body)
    if problem is not None:
        return 400, problem, "invalid_request_error"
    return None


def _validate_openai(body: Mapping[str, Any]) -> str | None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty array"
    pending_ids: set[str] = set()
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _OPENAI_ROLES:
            return f"messages[{n}].role: invalid role"
        role = message["role"]
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending_ids:
                return (
                    f"messages[{n}]: messages with role 'tool' must be a response to a preceding message "
                    f"with 'tool_calls' (unknown tool_call_id {call_id!r})"
                )
            pending_ids.discard(call_id)
            if not isinstance(message.get("content"), str):
                return f"messages[{n}].content: must be a string"
            continue
        if pending_ids:
            return (
                f"messages[{n}]: an assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id' (missing {sorted(pending_ids)})"
            )
        if role == "assistant" and message.get("tool_calls"):
            for call in message["tool_calls"]:
                if not isinstance(call, dict) or call.get("type") != "function" or not call.get("id"):
                    return f"messages[{n}].tool_calls: invalid tool call {call!r}"
                function = call.get("function")
                if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
                    return f"messages[{n}].tool_calls: function.arguments must be a JSON string"
                pending_ids.add(call["id"])
        elif not isinstance(message.get("content"), (str, list)):
            return f"messages[{n}].content: must be a string or an array"
        if isinstance(message.get("content"), list):
            problem = _validate_openai_parts(n, role, message["content"])
            if problem is not None:
                return problem
    if pending_ids:
        return f"tool_calls without responses: {sorted(pending_ids)}"
    if body.get("stream") is not True:
        return "FakeLLMServer only serves streaming requests (stream: true)"
    for tool in body.get("tools") or []:
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("function"), dict)
        ):
            return f"tools: invalid tool {tool!r}"
        if not isinstance(tool["function"].get("name"), str):
            return "tools[].function.name: required"
    if "response_format" in body:
        return _validate_response_format(body["response_format"])
    return None


_SCHEMA_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _validate_response_format(response_format: Any) -> str | None:
    """OpenAI ``response_format``: ``text`` / ``json_object`` / ``json_schema`` (with the strict-mode rules)."""
    if not isinstance(response_format, dict) or response_format.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        return "response_format.type: must be one of 'text', 'json_object', 'json_schema'"
    if response_format["type"] != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return "response_format.json_schema.name: Missing required parameter"
    if not _SCHEMA_NAME_RE.match(spec["name"]):
        return "response_format.json_schema.name: must match ^[a-zA-Z0-9_-]{1,64}$"
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        return "response_format.json_schema.schema: must be an object"
    if spec.get("strict") is True:
        problem = _strict_schema_problem(schema, "()")
        if problem is not None:
            return f"Invalid schema for response_format {spec['name']!r}: {problem}"
    return None


def _strict_schema_problem(schema: Any, context: str) -> str | None:
    """The first violation of OpenAI's strict-mode rules in *schema*, like the API words it."""
    if isinstance(schema, list):
        for item in schema:
            problem = _strict_schema_problem(item, context)
            if problem is not None:
                return problem
        return None
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={context}, 'additionalProperties' is required to be supplied and to be false."
        properties = schema.get("properties") or {}
        missing = [k for k in properties if k not in (schema.get("required") or [])]
        if missing:
            return (
                f"In context={context}, 'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing {missing[0]!r}."
            )
        for key, sub in properties.items():
            problem = _strict_schema_problem(sub, f"{context}.properties.{key}")
            if problem is not None:
                return problem
    for key in ("items", "anyOf", "$defs", "definitions"):
        sub = schema.get(key)
        if isinstance(sub, dict) and key in ("$defs", "definitions"):
            sub = list(sub.values())
        problem = _strict_schema_problem(sub, f"{context}.{key}")
        if problem is not None:
            return problem
    return None


_OPENAI_PART_TYPES = ("text", "image_url", "input_audio", "refusal", "audio", "file")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _validate_openai_parts(n: int, role: str, parts: list[Any]) -> str | None:
    """Check the content parts of one Chat Completions message (text, image_url, file) like the API."""
    for i, part in enumerate(parts):
        where = f"messages[{n}].content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _OPENAI_PART_TYPES:
            return f"Invalid value: {kind!r}. Supported values are: {', '.join(map(repr, _OPENAI_PART_TYPES))}. ({where}.type)"
        if kind != "text" and role != "user":
            return f"{where}.type: {kind!r} content parts are only allowed in user messages"
        if kind == "text" and not isinstance(part.get("text"), str):
            return f"{where}.text: must be a string"
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                return f"{where}.image_url.url: required"
            url = image["url"]
            if not url.startswith(("http://", "https://", "data:image/")):
                return f"{where}.image_url.url: Invalid image URL"
            if url.startswith("data:") and (
                ";base64," not in url or url[len("data:") : url.index(";")] not in _IMAGE_TYPES
            ):
                return f"{where}.image_url.url: Invalid base64 image_url (unsupported image type)"
            if "detail" in image and image["detail"] not in ("auto", "low", "high"):
                return f"{where}.image_url.detail: Invalid value {image['detail']!r}"
        if kind == "file":
            file = part.get("file")
            if not isinstance(file, dict) or not (file.get("file_data") or file.get("file_id")):
                return f"{where}.file: one of file_data or file_id is required"
            data = file.get("file_data")
            if data is not None and not (
                isinstance(data, str) and data.startswith("data:application/pdf;base64,")
            ):
                return f"{where}.file.file_data: Invalid file data (only base64 PDF data URLs are supported)"
    return None


def _validate_anthropic_source(where: str, kind: str, source: Any) -> str | None:
    """Check the ``source`` of an Anthropic image or document block like the API."""
    if not isinstance(source, dict):
        return f"{where}.source: Field required"
    source_type = source.get("type")
    if source_type == "url":
        return (
            None
            if isinstance(source.get("url"), str) and source["url"]
            else f"{where}.source.url: Field required"
        )
    if source_type == "base64":
        allowed = _IMAGE_TYPES if kind == "image" else ("application/pdf",)
        if source.get("media_type") not in allowed:
            return f"{where}.source.media_type: Input should be {' or '.join(map(repr, allowed))}"
        return (
            None
            if isinstance(source.get("data"), str) and source["data"]
            else f"{where}.source.data: Field required"
        )
    if kind == "document" and source_type == "text":
        if source.get("media_type") != "text/plain":
            return f"{where}.source.media_type: Input should be 'text/plain'"
        return None if isinstance(source.get("data"), str) else f"{where}.source.data: Field required"
    return f"{where}.source.type: invalid source type {source_type!r}"


def _cache_control_problem(where: str, block: Mapping[str, Any]) -> str | None:
    marker = block.get("cache_control")
    if marker is None:
        return None
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
        return f"{where}.cache_control.type: Input should be 'ephemeral'"
    if "ttl" in marker and marker["ttl"] not in ("5m", "1h"):
        return f"{where}.cache_control.ttl: Input should be '5m' or '1h'"
    return None


def _validate_anthropic_caching(body: Mapping[str, Any]) -> str | None:
    """Check the ``cache_control`` markers: valid objects, at most 4, longer TTLs first (tools, system, messages)."""
    places: list[tuple[str, Mapping[str, Any]]] = []
    places.extend((f"tools.{n}", t) for n, t in enumerate(body.get("tools") or []) if isinstance(t, dict))
    if isinstance(body.get("system"), list):
        places.extend((f"system.{n}", b) for n, b in enumerate(body["system"]) if isinstance(b, dict))
    for m, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            places.extend(
                (f"messages.{m}.content.{n}", b) for n, b in enumerate(content) if isinstance(b, dict)
            )
    count = 0
    seen_short = False
    for where, block in places:
        problem = _cache_control_problem(where, block)
        if problem is not None:
            return problem
        if block.get("cache_control") is not None:
            count += 1
            if block["cache_control"].get("ttl", "5m") == "5m":
                seen_short = True
            elif seen_short:
                return "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
    if count > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {count}."
    return None


def _validate_anthropic(body: Mapping[str, Any]) -> str | None:
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    if not isinstance(body.get("max_tokens"), int) or isinstance(body.get("max_tokens"), bool):
        return "max_tokens: Field required"
    if "system" in body and not isinstance(body["system"], (str, list)):
        return "system: Input should be a valid string or list"
    if isinstance(body.get("system"), list):
        for n, block in enumerate(body["system"]):
            if (
                not isinstance(block, dict)
                or block.get("type") != "text"
                or not isinstance(block.get("text"), str)
            ):
                return f"system.{n}: Input should be a text block"
            if not block["text"].strip():
                return f"system.{n}: text content blocks must contain non-whitespace text"
    caching = _validate_anthropic_caching(body)
    if caching is not None:
        return caching
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_role = None
    pending_ids: set[str] = set()
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{n}: Input should be an object"
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f"messages.{n}.role: Input should be 'user' or 'assistant'"
        if n == 0 and role != "user":
            return 'messages: first message must use the "user" role'
        if role == previous_role:
            return 'messages: roles must alternate between "user" and "assistant"'
        previous_role = role
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            return f"messages.{n}.content: must be a non-empty string or list of blocks"
        result_ids: set[str] = set()
        for block in blocks:
            if not isinstance(block, dict):
                return f"messages.{n}.content: invalid block"
            kind = block.get("type")
            if kind == "text":
                if not isinstance(block.get("text"), str) or not block["text"]:
                    return f"messages.{n}: text content blocks must be non-empty"
                if not block["text"].strip():
                    return f"messages.{n}: text content blocks must contain non-whitespace text"
            elif kind == "tool_use":
                if role != "assistant":
                    return f"messages.{n}: tool_use blocks are only allowed in assistant messages"
                if not block.get("id") or not block.get("name") or not isinstance(block.get("input"), dict):
                    return f"messages.{n}: invalid tool_use block"
                pending_ids.add(block["id"])
            elif kind == "tool_result":
                if role != "user":
                    return f"messages.{n}: tool_result blocks are only allowed in user messages"
                result_ids.add(str(block.get("tool_use_id")))
            elif kind in ("image", "document"):
                if role != "user":
                    return f"messages.{n}: {kind} blocks are only allowed in user messages"
                problem = _validate_anthropic_source(f"messages.{n}.content", kind, block.get("source"))
            elif kind in ("thinking", "redacted_thinking"):
                problem = _thinking_block_problem(n, role, block)
                if problem is not None:
                    return problem
        if role == "user" and pending_ids:
            if result_ids != pending_ids:
                return (
                    f"messages.{n}: tool_use ids were found without tool_result blocks immediately after: "
                    f"{sorted(pending_ids - result_ids)}"
                )
            pending_ids = set()
        elif role == "user" and result_ids:
            return f"messages.{n}: unexpected tool_use_id found in tool_result blocks: {sorted(result_ids)}"
    if body.get("stream") is not True:
        return "FakeLLMServer only serves streaming requests (stream: true)"
    for tool in body.get("tools") or []:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or "input_schema" not in tool:
            return f"tools: invalid tool {tool!r}"
    config = body.get("output_config")
    if config is not None:
        if not isinstance(config, dict):
            return "output_config: Input should be a valid dictionary"
        output_format = config.get("format")
        if output_format is not None and (
            not isinstance(output_format, dict)
            or output_format.get("type") != "json_schema"
            or not isinstance(output_format.get("schema"), dict)
        ):
            return "output_config.format: expected {'type': 'json_schema', 'schema': {...}}"
    return _validate_anthropic_thinking(body, messages)


def _thinking_block_problem(n: int, role: str, block: Mapping[str, Any]) -> str | None:
    kind = block["type"]
    if role != "assistant":
        return f"messages.{n}: {kind} blocks are only allowed in assistant messages"
    if kind == "thinking":
        if not isinstance(block.get("thinking"), str):
            return f"messages.{n}.content: thinking.thinking: Field required"
        if not isinstance(block.get("signature"), str) or not block["signature"]:
            return f"messages.{n}.content: thinking.signature: Field required"
    elif not isinstance(block.get("data"), str) or not block["data"]:
        return f"messages.{n}.content: redacted_thinking.data: Field required"
    return None


def _validate_anthropic_thinking(body: Mapping[str, Any], messages: list[Any]) -> str | None:
    """Check what extended thinking requires.

    A budget of 1024+ below ``max_tokens``, and a continued tool loop's assistant turn starting with its
    thinking block (sent back verbatim).
    """
    thinking = body.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        return "thinking: Input tag does not match any of the expected tags: 'enabled', 'disabled'"
    if thinking["type"] == "disabled":
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= body["max_tokens"]:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    last = messages[-1]
    last_blocks = last.get("content") if isinstance(last.get("content"), list) else []
    continues_tools = last.get("role") == "user" and any(b.get("type") == "tool_result" for b in last_blocks)
    if continues_tools and len(messages) >= 2:
        assistant = messages[-2].get("content")
        first = assistant[0].get("type") if isinstance(assistant, list) and assistant else "text"
        if first not in ("thinking", "redacted_thinking"):
            return (
                f"messages.{len(messages) - 2}.content.0.type: expected `thinking` or `redacted_thinking`, "
                f"found `{first}`: with thinking enabled, the assistant turn whose tool calls the last tool "
                "results answer must start with its thinking block, sent back unchanged"
            )
    return None


_RESPONSES_ROLES = frozenset({"user", "assistant", "system", "developer"})
#: Chat Completions parameters the Responses API rejects, with the error text it answers.
_RESPONSES_UNSUPPORTED = {
    "messages": "Unsupported parameter: 'messages'. The Responses API takes 'input' instead.",
    "max_tokens": "Unsupported parameter: 'max_tokens'. In the Responses API it is 'max_output_tokens'.",
    "max_completion_tokens": (
        "Unsupported parameter: 'max_completion_tokens'. In the Responses API it is 'max_output_tokens'."
    ),
    "stop": "Unsupported parameter: 'stop'.",
    "response_format": (
        "Unsupported parameter: 'response_format'. In the Responses API, this parameter has moved to "
        "'text.format'."
    ),
}


def _validate_responses(body: Mapping[str, Any]) -> str | None:
    """What the Responses API rejects (as far as the fake can tell without stored responses)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "Missing required parameter: 'model'."
    for name, problem in _RESPONSES_UNSUPPORTED.items():
        if name in body:
            return problem
    if body.get("stream") is not True:
        return "FakeLLMServer only serves streaming requests (stream: true)"
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        return "Invalid type for 'input': expected a string or an array of input items."
    calls: set[str] = set()
    answered: set[str] = set()
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            return f"Invalid type for 'input[{n}]': expected an object."
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            if item.get("role") not in _RESPONSES_ROLES:
                return (
                    f"Invalid value: {item.get('role')!r}. Supported values are: {sorted(_RESPONSES_ROLES)}."
                )
            if not isinstance(item.get("content"), (str, list)):
                return f"Invalid type for 'input[{n}].content': expected a string or an array."
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str) or (key != "arguments" and not item[key]):
                    return f"Missing required parameter: 'input[{n}].{key}'."
            calls.add(item["call_id"])
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if call_id not in calls:
                return f"No tool call found for function call output with call_id {call_id}."
            if not isinstance(item.get("output"), (str, list)):
                return f"Invalid type for 'input[{n}].output': expected a string or an array."
            answered.add(call_id)
        elif kind == "reasoning":
            if not isinstance(item.get("summary"), list):
                return f"Missing required parameter: 'input[{n}].summary'."
            if body.get("store") is False and not item.get("encrypted_content"):
                return (
                    f"Item with id {item.get('id')!r} not found. Items are not persisted when `store` is set "
                    "to false. Try again with `store` set to true, or remove this item from your input."
                )
        elif not isinstance(kind, str):
            return f"Missing required parameter: 'input[{n}].type'."
    missing = sorted(calls - answered)
    if missing:
        return f"No tool output found for function call {missing[0]}."
    for n, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            return f"Missing required parameter: 'tools[{n}].type'."
        if tool["type"] == "function" and (not isinstance(tool.get("name"), str) or not tool["name"]):
            return f"Missing required parameter: 'tools[{n}].name'."
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function" and not choice.get("name"):
        return "Missing required parameter: 'tool_choice.name'."
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 16):
        return f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, but got {limit}."
    return None
