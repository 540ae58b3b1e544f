"""Tools: JSON schemas from typed functions and agents; the tool-call loop on both providers."""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Literal, Optional, TypedDict

import anyio
import pytest

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.llms import Tool, ToolRoundsExceededError, anthropic_agent, openai_agent
from miniagents.llms._tools import json_schema_for
from miniagents.testing.fake_llm_server import (
    SSE,
    FakeLLMServer,
    ScriptedResponse,
    ToolCall,
    anthropic_stream,
    openai_stream,
)

KEY = "sk-test-key"


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


class Place(TypedDict):
    city: str
    country: str


async def get_weather(city: str, unit: Unit = Unit.C, days: int = 1) -> dict[str, Any]:
    """Get the weather forecast.

    Args:
        city: The city name.
        days: How many days ahead.

    """
    return {"city": city, "unit": unit if isinstance(unit, str) else unit.value, "days": days, "temp": 21}


@miniagent(description="Translates the input to French.")
async def translator(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(f"fr:{message}")


@miniagent
async def adder(ctx: InteractionContext, a: int, b: int = 0, label: str = "sum") -> None:
    """Add two numbers."""
    ctx.reply(f"{label}={a + b}")


# -- schemas ----------------------------------------------------------------------------------------------------
def test_schema_of_types() -> None:
    assert json_schema_for(str) == {"type": "string"}
    assert json_schema_for(Optional[int])  # noqa: UP045 - the typing spelling is what is tested == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert json_schema_for(float | None) == {"anyOf": [{"type": "number"}, {"type": "null"}]}
    assert json_schema_for(list[bool]) == {"type": "array", "items": {"type": "boolean"}}
    assert json_schema_for(tuple[int, ...]) == {"type": "array", "items": {"type": "integer"}}
    assert json_schema_for(dict[str, float]) == {"type": "object", "additionalProperties": {"type": "number"}}
    assert json_schema_for(Literal["a", "b"]) == {"enum": ["a", "b"], "type": "string"}
    assert json_schema_for(Unit) == {"enum": ["celsius", "fahrenheit"]}
    assert json_schema_for(Annotated[str, "a name"]) == {"type": "string", "description": "a name"}
    assert json_schema_for(Place) == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    assert json_schema_for(Any) == {}
    with pytest.raises(TypeError, match=r"f\.x"):
        json_schema_for(dict[int, str], where="f.x")
    with pytest.raises(TypeError, match="no JSON schema"):
        json_schema_for(complex)


def test_tool_from_function() -> None:
    tool = Tool.from_function(get_weather)
    assert tool.name == "get_weather"
    assert tool.description == "Get the weather forecast."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city name."},
            "unit": {"enum": ["celsius", "fahrenheit"], "default": "celsius"},
            "days": {"type": "integer", "description": "How many days ahead.", "default": 1},
        },
        "required": ["city"],
    }
    with pytest.raises(TypeError, match="async"):
        Tool.from_function(lambda: None)  # type: ignore[arg-type, return-value]


def test_tool_from_agent() -> None:
    tool = Tool.from_agent(adder)
    assert (tool.name, tool.description) == ("adder", "Add two numbers.")
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "a": {"type": "integer"},
            "b": {"type": "integer", "default": 0},
            "label": {"type": "string", "default": "sum"},
        },
        "required": ["a"],
    }
    forked = Tool.from_agent(adder.fork(alias="add ten!", b=10))
    assert forked.name == "add_ten_"
    assert set(forked.parameters["properties"]) == {"a", "label"}  # kwargs set by fork() are not offered
    assert Tool.from_agent(translator).parameters["required"] == ["input"]
    assert Tool.from_agent(translator).description == "Translates the input to French."


# -- the loop ---------------------------------------------------------------------------------------------------
def weather_call(call_id: str, city: str, **kw: Any) -> ToolCall:
    return ToolCall("get_weather", {"city": city}, id=call_id, **kw)


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_parallel_tool_calls_loop_until_answer(provider: str) -> None:
    calls = [
        weather_call("c1", "Paris", fragment_size=2),
        ToolCall("adder", {"a": 2, "b": 3}, id="c2"),
        ToolCall("translator", {"input": "hello"}, id="c3", fragments=['{"in', 'put": "hel', 'lo"}']),
    ]
    async with FakeLLMServer.serve() as server:
        if provider == "openai":
            server.enqueue(
                openai_stream(tool_calls=calls, interleave_tool_calls=True),
                openai_stream("It is 21 degrees."),
            )
            agent, base = openai_agent, server.openai_base_url
        else:
            server.enqueue(
                anthropic_stream(["Let me check."], tool_uses=calls), anthropic_stream("It is 21 degrees.")
            )
            agent, base = anthropic_agent, server.anthropic_base_url
        async with MiniAgents():
            replies = await agent.inquire(
                "weather?", model="m", api_key=KEY, base_url=base, tools=[get_weather, adder, translator]
            )
        assert all(r.validation_error is None for r in server.requests)
    call_turn, r1, r2, r3, answer = replies
    assert [c["name"] for c in call_turn.tool_calls] == ["get_weather", "adder", "translator"]
    assert call_turn.finish_reason == ("tool_calls" if provider == "openai" else "tool_use")
    assert [(r.role, r.tool_call_id, r.is_error) for r in (r1, r2, r3)] == [
        ("tool", "c1", False),
        ("tool", "c2", False),
        ("tool", "c3", False),
    ]
    assert r1.content == '{"city": "Paris", "unit": "celsius", "days": 1, "temp": 21}'
    assert r2.content == "sum=5"
    assert r3.content == "fr:hello"
    assert answer.content == "It is 21 degrees." and not answer.get("tool_calls")
    sent = server.requests[0].json
    names = (
        [t["function"]["name"] for t in sent["tools"]]
        if provider == "openai"
        else [t["name"] for t in sent["tools"]]
    )
    assert names == ["get_weather", "adder", "translator"]
    second = server.requests[1].json["messages"]
    if provider == "openai":
        assert second[1]["tool_calls"][2]["function"]["arguments"] == '{"input": "hello"}'
        # "" and not null: OpenAI accepts both, llama-cpp-python answers null with HTTP 500.
        assert second[1]["content"] == ""
        assert [m["role"] for m in second] == ["user", "assistant", "tool", "tool", "tool"]
    else:
        assert [m["role"] for m in second] == ["user", "assistant", "user"]
        assert [b["type"] for b in second[1]["content"]] == ["text", "tool_use", "tool_use", "tool_use"]
        assert second[1]["content"][1]["input"] == {"city": "Paris"}
        assert [b["tool_use_id"] for b in second[2]["content"]] == ["c1", "c2", "c3"]


@pytest.mark.anyio
async def test_tool_calls_run_concurrently() -> None:
    both_started = anyio.Event()
    started = 0

    async def slow(name: str) -> str:
        """Wait for the other call."""
        nonlocal started
        started += 1
        if started == 2:
            both_started.set()
        await both_started.wait()  # deadlocks unless both calls run at the same time
        return name

    async with FakeLLMServer.serve() as server, MiniAgents():
        server.enqueue(
            openai_stream(
                tool_calls=[ToolCall("slow", {"name": "x"}, id="a"), ToolCall("slow", {"name": "y"}, id="b")]
            ),
            openai_stream("ok"),
        )
        with anyio.fail_after(30):
            replies = await openai_agent.inquire(
                "q", model="m", api_key=KEY, base_url=server.openai_base_url, tools=[slow]
            )
    assert [r.content for r in replies] == ["", "x", "y", "ok"]


@pytest.mark.anyio
async def test_repeated_ids_hidden_tool_messages_and_tool_errors() -> None:
    async def fails(x: int) -> str:
        """Always fails."""
        raise RuntimeError(f"no luck with {x}")

    persisted: list[Any] = []
    async with FakeLLMServer.serve() as server, MiniAgents(on_persist_message=persisted.append):
        server.enqueue(
            openai_stream(
                tool_calls=[
                    ToolCall("fails", {"x": 1}, id="a"),
                    ToolCall("nope", {}, id="b"),
                    ToolCall("fails", "{not json", id="c"),
                ],
                repeat_tool_call_ids=True,
            ),
            openai_stream("sorry"),
        )
        replies = await openai_agent.inquire(
            "q",
            model="m",
            api_key=KEY,
            base_url=server.openai_base_url,
            tools=[fails],
            reply_tool_messages=False,
        )
        tool_messages = server.requests[1].json["messages"][2:]
    assert [r.content for r in replies] == ["sorry"]
    assert [m["content"] for m in tool_messages] == [
        "RuntimeError: no luck with 1",
        "LookupError: unknown tool 'nope'; available: fails",
        tool_messages[2]["content"],
    ]
    assert tool_messages[2]["content"].startswith("ValueError: the arguments are not valid JSON")
    assert server.requests[1].json["messages"][1]["tool_calls"][0]["id"] == "a"  # set once, not concatenated
    assert sum(1 for m in persisted if m.get("role") == "tool" and m.get("is_error")) == 3


@pytest.mark.anyio
async def test_max_tool_rounds() -> None:
    async def ping() -> str:
        """Ping."""
        return "pong"

    async with FakeLLMServer.serve() as server:
        server.handler = lambda request: openai_stream(
            tool_calls=[ToolCall("ping", {}, id=f"c{request.index}")]
        )
        async with MiniAgents():
            with pytest.raises(ToolRoundsExceededError):
                await openai_agent.inquire(
                    "q",
                    model="m",
                    api_key=KEY,
                    base_url=server.openai_base_url,
                    tools=[ping],
                    max_tool_rounds=2,
                )
    assert len(server.requests) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_tool_calls_cut_off_by_the_token_limit_are_not_run(provider: str) -> None:
    ran: list[str] = []

    async def record(city: str) -> str:
        """Record the call."""
        ran.append(city)
        return city

    # The limit hit while the model was writing the arguments: the JSON is incomplete.
    cut = [ToolCall("record", '{"city": "Pa', id="c1", fragments=['{"ci', 'ty": "Pa'])]
    async with FakeLLMServer.serve() as server:
        if provider == "openai":
            server.enqueue(openai_stream(["Let me"], tool_calls=cut, finish_reason="length"))
            server.enqueue(openai_stream("next"))
            agent, base = openai_agent, server.openai_base_url
        else:
            server.enqueue(anthropic_stream(["Let me"], tool_uses=cut, stop_reason="max_tokens"))
            server.enqueue(anthropic_stream("next"))
            agent, base = anthropic_agent, server.anthropic_base_url
        async with MiniAgents():
            replies = await agent.inquire("q", model="m", api_key=KEY, base_url=base, tools=[record])
            (turn,) = replies  # the turn ends the call: no tool results, no second model request
            assert ran == [] and len(server.requests) == 1
            assert turn.finish_reason == ("length" if provider == "openai" else "max_tokens")
            assert turn.content == "Let me"
            assert not turn.get("tool_calls")
            assert [dict(c) for c in turn.incomplete_tool_calls] == [
                {"id": "c1", "name": "record", "arguments": '{"city": "Pa'}
            ]
            # The cut turn is still a valid assistant turn in the next call's history.
            await agent.inquire(["q", turn, "go on"], model="m", api_key=KEY, base_url=base, tools=[record])
        assert server.requests[1].validation_error is None


@pytest.mark.anyio
async def test_anthropic_tool_use_input_given_in_content_block_start_is_used() -> None:
    def ev(payload: dict[str, Any]) -> SSE:
        return SSE(payload, event=payload["type"])

    start = {"type": "tool_use", "id": "t1", "name": "adder", "input": {"a": 2, "b": 3}}
    whole_input = ScriptedResponse(
        status=200,
        headers={"content-type": "text/event-stream"},
        body=[
            ev(
                {"type": "message_start", "message": {"id": "m1", "model": "c", "usage": {"input_tokens": 1}}}
            ),
            ev({"type": "content_block_start", "index": 0, "content_block": start}),
            ev({"type": "content_block_stop", "index": 0}),  # no input_json_delta at all
            ev(
                {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}
            ),
            ev({"type": "message_stop"}),
        ],
    )
    async with FakeLLMServer.serve() as server:
        server.enqueue(whole_input, anthropic_stream("done"))
        async with MiniAgents():
            replies = await anthropic_agent.inquire(
                "q", model="m", api_key=KEY, base_url=server.anthropic_base_url, tools=[adder]
            )
    call_turn, result, answer = replies
    assert json.loads(call_turn.tool_calls[0]["arguments"]) == {"a": 2, "b": 3}
    assert result.content == "sum=5" and not result.is_error
    assert answer.content == "done"
