"""Structured output: ``output_type=`` in the tool-based and the native mode, retries, errors, schemas."""

from __future__ import annotations

import dataclasses
import enum
import json
import pickle
from typing import Any, Literal, Optional

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniagents import Message, MiniAgents
from miniagents.llms import LLMError, OutputValidationError, anthropic_agent, openai_agent, output_of
from miniagents.llms._output import strict_schema
from miniagents.llms._tools import json_schema_for
from miniagents.llms._validation import ValidationFailed, convert, convert_by_schema, to_json
from miniagents.testing.fake_llm_server import FakeLLMServer, ToolCall, anthropic_stream, openai_stream

pytestmark = pytest.mark.anyio

KEY = "sk-test-key"
PROVIDERS = ["openai", "anthropic"]


class Climate(enum.Enum):
    DRY = "dry"
    WET = "wet"


@attrs.frozen
class City:
    """A city and what matters about it.

    Attributes:
        name: The city's name.
        population: How many people live there.
    """

    name: str
    population: int
    country: str = "unknown"
    size: Literal["small", "large"] = "small"
    climate: Optional[Climate] = None  # noqa: UP045 - the typing spelling is what is tested


@dataclasses.dataclass(frozen=True)
class Trip:
    """A trip."""

    cities: list[City]
    days: int = 1


CITY_JSON = {"name": "Paris", "population": 2100000}


def stream(provider: str, text: str = "", tool_calls: list[ToolCall] | None = None) -> Any:
    if provider == "openai":
        return openai_stream(text, tool_calls=tool_calls or ())
    return anthropic_stream(text, tool_uses=tool_calls or ())


def final(arguments: Any, call_id: str = "f1") -> list[ToolCall]:
    return [ToolCall("final_result", arguments, id=call_id)]


async def ask(provider: str, server: FakeLLMServer, **options: Any) -> tuple[Message, ...]:
    agent = openai_agent if provider == "openai" else anthropic_agent
    base = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    async with MiniAgents():
        replies = await agent.inquire("a city?", model="m", api_key=KEY, base_url=base, **options)
    assert all(r.validation_error is None for r in server.requests), [
        r.validation_error for r in server.requests
    ]
    return tuple(replies)


def last_feedback(provider: str, body: dict[str, Any]) -> str:
    """The text of the last tool result or user turn of a request."""
    message = body["messages"][-1]
    if provider == "openai":
        return str(message["content"])
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(str(b.get("content") or b.get("text") or "") for b in content)


# -- schemas ----------------------------------------------------------------------------------------------------
def test_schema_of_an_attrs_class_has_descriptions_defaults_enums_and_required() -> None:
    assert json_schema_for(City) == {
        "type": "object",
        "description": "A city and what matters about it.",
        "properties": {
            "name": {"type": "string", "description": "The city's name."},
            "population": {"type": "integer", "description": "How many people live there."},
            "country": {"type": "string", "default": "unknown"},
            "size": {"enum": ["small", "large"], "type": "string", "default": "small"},
            "climate": {"anyOf": [{"enum": ["dry", "wet"]}, {"type": "null"}], "default": None},
        },
        "required": ["name", "population"],
        "additionalProperties": False,
    }


def test_schema_of_a_dataclass_nests_the_attrs_class() -> None:
    schema = json_schema_for(Trip)
    assert schema["description"] == "A trip."
    assert schema["required"] == ["cities"]
    assert schema["properties"]["days"] == {"type": "integer", "default": 1}
    assert schema["properties"]["cities"]["items"] == json_schema_for(City)


def test_the_strict_schema_requires_everything_and_makes_optional_fields_nullable() -> None:
    strict = strict_schema(json_schema_for(City))
    assert strict["required"] == ["name", "population", "country", "size", "climate"]
    assert strict["additionalProperties"] is False
    assert strict["properties"]["country"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert strict_schema({"type": "object", "additionalProperties": {"type": "integer"}}) is None


@pytest.mark.parametrize("bad", [int, "City", {"type": "array", "items": {}}])
async def test_an_output_type_without_an_object_schema_is_rejected_at_inquire(bad: Any) -> None:
    async with MiniAgents():
        with pytest.raises(TypeError, match="agent 'openai_agent': output_type must be"):
            openai_agent.inquire("x", model="m", output_type=bad)


async def test_output_mode_and_retries_are_checked_at_inquire() -> None:
    async with MiniAgents():
        with pytest.raises(ValueError, match="output_mode must be 'tool' or 'native', got 'json'"):
            openai_agent.inquire("x", model="m", output_type=City, output_mode="json")
        with pytest.raises(ValueError, match="output_retries must be an int >= 0, got -1"):
            openai_agent.inquire("x", model="m", output_type=City, output_retries=-1)


# -- tool-based output (the default) -----------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tool_based_output_is_a_typed_instance(provider: str, server: FakeLLMServer) -> None:
    server.enqueue(stream(provider, tool_calls=final({**CITY_JSON, "climate": "wet"})))
    replies = await ask(provider, server, output_type=City)
    turn, confirmation = replies
    assert turn.output == {
        "name": "Paris",
        "population": 2100000,
        "country": "unknown",
        "size": "small",
        "climate": "wet",
    }
    assert confirmation.role == "tool" and confirmation.is_error is False
    city = await output_of(replies, City)
    assert city == City("Paris", 2100000, climate=Climate.WET)
    assert await output_of(turn, City) == city
    assert await output_of(replies) == dict(turn.output)
    body = server.requests[0].json
    if provider == "openai":
        tool = body["tools"][0]["function"]
        assert (tool["name"], tool["parameters"]) == ("final_result", json_schema_for(City))
        assert body["tool_choice"] == "required"
        assert "response_format" not in body
    else:
        assert (body["tools"][0]["name"], body["tools"][0]["input_schema"]) == (
            "final_result",
            json_schema_for(City),
        )
        assert body["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_invalid_result_is_sent_back_and_the_retry_succeeds(
    provider: str, server: FakeLLMServer
) -> None:
    server.enqueue(
        stream(provider, tool_calls=final({"name": "Paris", "population": "many"}, "f1")),
        stream(provider, tool_calls=final(CITY_JSON, "f2")),
    )
    replies = await ask(provider, server, output_type=City)
    first, error, second, _ = replies
    assert first.get("output") is None
    assert error.is_error is True and error.tool_call_id == "f1"
    assert 'population: expected int, got "many"' in error.content
    assert 'population: expected int, got "many"' in last_feedback(provider, server.requests[1].json)
    assert await output_of(replies, City) == City("Paris", 2100000)
    assert second.output["name"] == "Paris"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_exhausted_retries_raise_output_validation_error_with_paths(
    provider: str, server: FakeLLMServer
) -> None:
    server.enqueue(
        stream(provider, tool_calls=final({"name": 1}, "f1")),
        stream(provider, tool_calls=final({"name": "P", "population": 1.5, "size": "huge"}, "f2")),
    )
    with pytest.raises(OutputValidationError) as caught:
        await ask(provider, server, output_type=City, output_retries=1)
    error = caught.value
    assert isinstance(error, LLMError)
    assert error.agent == f"{provider}_agent" and error.attempts == 2 and error.provider == provider
    assert error.paths == ("population", "size")
    assert error.issues[1] == ("size", 'expected one of "small", "large", got "huge"')
    assert json.loads(error.raw) == {"name": "P", "population": 1.5, "size": "huge"}
    assert f"agent '{provider}_agent'" in str(error) and "City" in str(error)
    assert len(server.requests) == 2
    assert pickle.loads(pickle.dumps(error)).paths == error.paths


async def test_no_retries_fail_at_the_first_invalid_answer(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream(tool_calls=final({"population": 3})))
    with pytest.raises(OutputValidationError, match="name: missing required field") as caught:
        await ask("openai", server, output_type=City, output_retries=0)
    assert caught.value.attempts == 1 and len(server.requests) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_text_answer_in_tool_mode_is_asked_again(provider: str, server: FakeLLMServer) -> None:
    server.enqueue(stream(provider, "Paris, I think."), stream(provider, tool_calls=final(CITY_JSON)))
    replies = await ask(provider, server, output_type=City)
    assert (
        replies[1].role == "user" and "must be given by calling the final_result tool" in replies[1].content
    )
    assert "final_result" in last_feedback(provider, server.requests[1].json)
    assert await output_of(replies, City) == City("Paris", 2100000)


async def test_other_tools_still_run_and_calls_next_to_the_result_are_not_run(server: FakeLLMServer) -> None:
    ran: list[str] = []

    async def lookup(city: str) -> int:
        """Look up a population."""
        ran.append(city)
        return 2100000

    server.enqueue(
        openai_stream(tool_calls=[ToolCall("lookup", {"city": "Paris"}, id="l1")]),
        openai_stream(tool_calls=[*final(CITY_JSON), ToolCall("lookup", {"city": "Rome"}, id="l2")]),
    )
    replies = await ask("openai", server, output_type=City, tools=[lookup])
    assert ran == ["Paris"]
    assert [t["function"]["name"] for t in server.requests[0].json["tools"]] == ["lookup", "final_result"]
    assert [(r.get("tool_call_id"), r.content) for r in replies if r.role == "tool"] == [
        ("l1", "2100000"),
        ("f1", "The final result was accepted."),
        ("l2", "Not run: the final result was given in the same turn."),
    ]
    assert await output_of(replies, City) == City("Paris", 2100000)


async def test_the_output_turn_and_its_confirmation_are_replied_even_without_tool_messages(
    server: FakeLLMServer,
) -> None:
    """The accepted turn holds the output, and with its confirmation the replies stay a complete exchange."""
    server.enqueue(openai_stream(tool_calls=final(CITY_JSON)))
    replies = await ask("openai", server, output_type=City, reply_tool_messages=False)
    assert [m.get("role") for m in replies] == ["assistant", "tool"]
    assert replies[0].output["population"] == 2100000
    assert replies[1].tool_call_id == replies[0].tool_calls[0]["id"]


async def test_a_tool_named_final_result_conflicts(server: FakeLLMServer) -> None:
    async def final_result(x: int) -> int:
        """Clash."""
        return x

    with pytest.raises(ValueError, match="a tool is named 'final_result'"):
        await ask("openai", server, output_type=City, tools=[final_result])


# -- native output -----------------------------------------------------------------------------------------------
async def test_native_openai_sends_a_strict_response_format(server: FakeLLMServer) -> None:
    answer = {**CITY_JSON, "country": None, "size": "large", "climate": None}
    server.enqueue(openai_stream(['{"name": "Paris", ', json.dumps(answer)[17:]]))
    replies = await ask("openai", server, output_type=City, output_mode="native")
    assert await output_of(replies, City) == City("Paris", 2100000, size="large")  # null -> the default
    body = server.requests[0].json
    assert "tools" not in body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "City",
            "schema": strict_schema(json_schema_for(City)),
            "strict": True,
            "description": "A city and what matters about it.",
        },
    }


async def test_native_anthropic_sends_output_config_format(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream(json.dumps(CITY_JSON)))
    replies = await ask("anthropic", server, output_type=City, output_mode="native")
    assert await output_of(replies, City) == City("Paris", 2100000)
    body = server.requests[0].json
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": json_schema_for(City)}}
    assert "tools" not in body


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_native_invalid_json_is_sent_back_as_a_user_turn(provider: str, server: FakeLLMServer) -> None:
    server.enqueue(
        stream(provider, '{"name": "Paris", "population": tw'), stream(provider, json.dumps(CITY_JSON))
    )
    replies = await ask(provider, server, output_type=City, output_mode="native")
    assert replies[1].role == "user" and "not valid JSON" in replies[1].content
    assert "answer again with only the corrected JSON object" in last_feedback(
        provider, server.requests[1].json
    )
    assert replies[2].output["population"] == 2100000


async def test_a_json_schema_dict_as_output_type(server: FakeLLMServer) -> None:
    schema = {
        "title": "Answer",
        "type": "object",
        "properties": {"value": {"type": "integer"}, "unit": {"enum": ["m", "km"]}},
        "required": ["value"],
        "additionalProperties": False,
    }
    server.enqueue(
        openai_stream('{"value": "x"}'),
        openai_stream('{"value": "12", "unit": "km"}'),
    )
    replies = await ask("openai", server, output_type=schema, output_mode="native")
    assert 'value: expected int, got "x"' in replies[1].content
    assert await output_of(replies) == {"value": 12, "unit": "km"}
    assert server.requests[0].json["response_format"]["json_schema"]["name"] == "Answer"


async def test_the_fake_server_rejects_a_non_strict_schema_sent_as_strict(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("{}"))
    with pytest.raises(LLMError, match="'additionalProperties' is required to be supplied and to be false"):
        await ask(
            "openai",
            server,
            extra_body={
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "x",
                        "schema": {"type": "object", "properties": {}},
                        "strict": True,
                    },
                }
            },
        )


async def test_output_of_without_an_output_field_is_a_lookup_error() -> None:
    async with MiniAgents():
        with pytest.raises(LookupError, match="output_type="):
            await output_of([], City)


# -- properties of the validation engine ----------------------------------------------------------------------------
cities = st.builds(
    City,
    name=st.text(max_size=10),
    population=st.integers(min_value=-(2**60), max_value=2**60),
    country=st.text(max_size=5),
    size=st.sampled_from(["small", "large"]),
    climate=st.none() | st.sampled_from(Climate),
)
trips = st.builds(Trip, cities=st.lists(cities, max_size=3), days=st.integers(0, 100))


@settings(max_examples=60, deadline=None)
@given(trips)
def test_valid_instances_round_trip_through_json_and_validate(trip: Trip) -> None:
    data = json.loads(json.dumps(to_json(trip)))
    assert convert(data, Trip) == trip
    assert convert_by_schema(data, json_schema_for(Trip)) == data


WRONG = st.one_of(
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)


@settings(max_examples=60, deadline=None)
@given(
    trips.filter(lambda t: bool(t.cities)), st.sampled_from(["name", "population", "size"]), WRONG, st.data()
)
def test_an_invalid_value_is_rejected_with_its_path(
    trip: Trip, field: str, wrong: Any, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(trip.cities) - 1))
    value = to_json(trip)
    value["cities"][index][field] = wrong
    with pytest.raises(ValidationFailed) as by_type:
        convert(value, Trip)
    with pytest.raises(ValidationFailed) as by_schema:
        convert_by_schema(value, json_schema_for(Trip))
    for caught in (by_type, by_schema):
        assert [i.path for i in caught.value.issues] == [f"cities[{index}].{field}"]


@attrs.frozen
class Census:
    """Counts per district."""

    counts: dict[str, int]
    total: int = attrs.field(validator=attrs.validators.ge(0))


def test_attrs_validators_run_and_their_errors_name_the_object() -> None:
    with pytest.raises(ValidationFailed) as caught:
        convert({"trip": {"counts": {}, "total": -1}}, dict[str, Census])
    (issue,) = caught.value.issues
    assert issue.path == "trip" and issue.message.startswith("ValueError: 'total' must be >= 0")
    with pytest.raises(ValidationFailed, match=r'counts\.north: expected int, got "x"'):
        convert({"counts": {"north": "x"}, "total": 1}, Census)


async def test_a_schema_that_cannot_be_strict_is_sent_with_strict_false(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream('{"counts": {"north": 3}, "total": 3}'))
    replies = await ask("openai", server, output_type=Census, output_mode="native")
    assert await output_of(replies, Census) == Census({"north": 3}, 3)
    spec = server.requests[0].json["response_format"]["json_schema"]
    assert spec["strict"] is False and spec["schema"] == json_schema_for(Census)


async def test_an_output_type_field_without_a_schema_is_named() -> None:
    @attrs.frozen
    class Bad:
        value: complex

    async with MiniAgents():
        with pytest.raises(
            TypeError, match=r"output_type Bad\.value: no JSON schema for type <class 'complex'>"
        ):
            openai_agent.inquire("x", model="m", output_type=Bad)


async def test_the_fake_server_checks_the_anthropic_output_format(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("{}"))
    with pytest.raises(LLMError, match=r"output_config\.format: expected"):
        await ask("anthropic", server, extra_body={"output_config": {"format": {"type": "json"}}})
