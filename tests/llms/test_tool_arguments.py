"""Tool arguments are validated against the declared parameter types before a tool runs."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Literal, Optional

import attrs
import pytest

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.llms import Tool, anthropic_agent, openai_agent
from miniagents.llms._tools import ToolArgumentsError
from miniagents.testing.fake_llm_server import FakeLLMServer, ToolCall, anthropic_stream, openai_stream

pytestmark = pytest.mark.anyio

KEY = "sk-test-key"
PROVIDERS = ["openai", "anthropic"]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Item:
    name: str
    quantity: int = 1


@attrs.frozen
class Order:
    """An order."""

    customer: str
    items: list[Item]
    color: Color = Color.RED
    note: Optional[str] = None  # noqa: UP045 - the typing spelling is what is tested


calls: list[tuple[Any, ...]] = []


async def add(a: int, b: int) -> int:
    """Add two integers."""
    calls.append((a, b))
    return a + b


async def place_order(order: Order, express: bool = False) -> str:
    """Place an order."""
    calls.append((order, express))
    return f"{order.customer}: {sum(i.quantity for i in order.items)} items, {order.color.value}, express={express}"


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


def stream(provider: str, text: str = "", tool_calls: list[ToolCall] | None = None) -> Any:
    if provider == "openai":
        return openai_stream(text, tool_calls=tool_calls or ())
    return anthropic_stream(text, tool_uses=tool_calls or ())


async def ask(provider: str, server: FakeLLMServer, **options: Any) -> tuple[Message, ...]:
    agent = openai_agent if provider == "openai" else anthropic_agent
    base = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    async with MiniAgents():
        replies = await agent.inquire("go", model="m", api_key=KEY, base_url=base, **options)
    assert all(r.validation_error is None for r in server.requests)
    return tuple(replies)


def tool_results_sent(provider: str, body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The (content, is_error) of the tool results in a request body."""
    if provider == "openai":
        return [(m["content"], False) for m in body["messages"] if m["role"] == "tool"]
    return [
        (b.get("content", ""), bool(b.get("is_error")))
        for m in body["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
        if b["type"] == "tool_result"
    ]


# -- the coercion rules, on the tool handler ---------------------------------------------------------------------
async def test_integer_strings_are_coerced_and_the_sum_is_a_number() -> None:
    tool = Tool.from_function(add)
    assert await tool.handler({"a": "2", "b": "3"}) == 5
    assert await tool.handler({"a": 2.0, "b": " -3 "}) == -1
    assert calls == [(2, 3), (2, -3)]


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"a": 1, "b": 2.5}, "b: expected int, got 2.5"),
        ({"a": 1, "b": "2.5"}, 'b: expected int, got "2.5"'),
        ({"a": 1, "b": "x"}, 'b: expected int, got "x"'),
        ({"a": True, "b": 1}, "a: expected int, got true"),
        ({"a": 1, "b": None}, "b: expected int, got null"),
        ({"a": 1, "b": [1]}, "b: expected int, got [1]"),
        ({"a": 1}, "b: missing required argument"),
        ({"a": 1, "b": 2, "c": 3}, "c: unknown argument (the arguments are: a, b)"),
    ],
)
async def test_lossy_or_wrong_arguments_are_rejected_without_calling_the_tool(
    arguments: dict[str, Any], problem: str
) -> None:
    tool = Tool.from_function(add)
    with pytest.raises(ToolArgumentsError) as caught:
        await tool.handler(arguments)
    assert problem in str(caught.value)
    assert "tool 'add'" in str(caught.value)
    assert calls == []


async def test_nested_attrs_and_dataclass_arguments_arrive_as_instances() -> None:
    tool = Tool.from_function(place_order)
    text = await tool.handler(
        {
            "order": {
                "customer": "Ann",
                "items": [{"name": "pen", "quantity": "3"}, {"name": "ink"}],
                "color": "blue",
            },
            "express": "true",
        }
    )
    assert text == "Ann: 4 items, blue, express=True"
    ((order, express),) = calls
    assert order == Order("Ann", [Item("pen", 3), Item("ink")], Color.BLUE)
    assert express is True


async def test_nested_errors_name_the_whole_path() -> None:
    tool = Tool.from_function(place_order)
    with pytest.raises(ToolArgumentsError) as caught:
        await tool.handler(
            {"order": {"customer": "Ann", "items": [{"name": "pen"}, {"quantity": 2, "size": 1}]}}
        )
    assert [str(i) for i in caught.value.issues] == [
        "order.items[1].size: unknown field (the fields are: name, quantity)",
        "order.items[1].name: missing required field",
    ]
    with pytest.raises(ToolArgumentsError, match=r'order\.color: expected one of "red", "blue", got "green"'):
        await tool.handler({"order": {"customer": "Ann", "items": [], "color": "green"}})
    assert calls == []


async def test_unions_literals_containers_and_kwargs() -> None:
    received: dict[str, Any] = {}

    async def pick(
        mode: Literal["fast", "slow"],
        size: int | str,
        point: tuple[float, float],
        tags: frozenset[str] = frozenset(),
        limit: Optional[int] = None,  # noqa: UP045 - the typing spelling is what is tested
        **extra: Any,
    ) -> str:
        """Pick."""
        received.update(mode=mode, size=size, point=point, tags=tags, limit=limit, extra=extra)
        return "ok"

    tool = Tool.from_function(pick)
    await tool.handler(
        {"mode": "fast", "size": "2", "point": [1, "2.5"], "tags": ["a", "a"], "limit": "7", "x": 1}
    )
    # "2" stays a str for int | str: a union takes the first option that matches without coercion.
    assert received == {
        "mode": "fast",
        "size": "2",
        "point": (1.0, 2.5),
        "tags": frozenset({"a"}),
        "limit": 7,
        "extra": {"x": 1},
    }
    with pytest.raises(ToolArgumentsError, match=r"point: expected an array of 2 items, got 3 items"):
        await tool.handler({"mode": "fast", "size": 1, "point": [1, 2, 3]})
    with pytest.raises(ToolArgumentsError, match=r'mode: expected one of "fast", "slow", got "medium"'):
        await tool.handler({"mode": "medium", "size": 1, "point": [1, 2]})


# -- through the tool loop, on both providers --------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_add_with_string_numbers_is_coerced_to_five(provider: str, server: FakeLLMServer) -> None:
    server.enqueue(
        stream(provider, tool_calls=[ToolCall("add", {"a": "2", "b": "3"}, id="c1")]), stream(provider, "5")
    )
    replies = await ask(provider, server, tools=[add])
    result = replies[1]
    assert (result.role, result.content, result.is_error) == ("tool", "5", False)
    assert calls == [(2, 3)]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_wrong_type_is_sent_back_and_the_corrected_call_succeeds(
    provider: str, server: FakeLLMServer
) -> None:
    server.enqueue(
        stream(provider, tool_calls=[ToolCall("add", {"a": 2, "b": "x"}, id="c1")]),
        stream(provider, tool_calls=[ToolCall("add", {"a": 2, "b": 3}, id="c2")]),
        stream(provider, "It is 5."),
    )
    replies = await ask(provider, server, tools=[add])
    error, fixed = replies[1], replies[3]
    assert error.is_error is True and error.tool_name == "add"
    assert "tool 'add' got invalid arguments: b: expected int, got \"x\"" in error.content
    assert (fixed.content, fixed.is_error) == ("5", False)
    assert replies[-1].content == "It is 5."
    assert calls == [(2, 3)]  # the invalid call never reached the function
    sent = tool_results_sent(provider, server.requests[1].json)
    assert len(sent) == 1 and 'b: expected int, got "x"' in sent[0][0]
    if provider == "anthropic":
        assert sent[0][1] is True  # is_error on the tool_result block


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_missing_and_unknown_arguments_are_one_error_result(
    provider: str, server: FakeLLMServer
) -> None:
    server.enqueue(
        stream(provider, tool_calls=[ToolCall("add", {"a": 1, "c": 2}, id="c1")]), stream(provider, "sorry")
    )
    replies = await ask(provider, server, tools=[add])
    assert replies[1].is_error is True
    assert "c: unknown argument (the arguments are: a, b)" in replies[1].content
    assert "b: missing required argument" in replies[1].content
    assert calls == []


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_nested_object_arguments_through_the_loop(provider: str, server: FakeLLMServer) -> None:
    order = {"customer": "Bo", "items": [{"name": "cup", "quantity": 2}], "color": "red"}
    server.enqueue(
        stream(provider, tool_calls=[ToolCall("place_order", {"order": order}, id="c1")]),
        stream(provider, "done"),
    )
    replies = await ask(provider, server, tools=[place_order])
    assert replies[1].content == "Bo: 2 items, red, express=False"
    assert isinstance(calls[0][0], Order) and calls[0][0].items == [Item("cup", 2)]
    schema = Tool.from_function(place_order).parameters["properties"]["order"]
    assert schema["additionalProperties"] is False and schema["required"] == ["customer", "items"]
    assert schema["properties"]["items"]["items"]["required"] == ["name"]


@miniagent
async def adder(ctx: InteractionContext, a: int, b: int = 0) -> None:
    """Add two numbers."""
    ctx.reply(f"sum={a + b}")


@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(f"echo:{message}")


async def test_agent_tools_validate_declared_parameters_and_keep_the_input_argument(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        openai_stream(
            tool_calls=[
                ToolCall("adder", {"a": "2", "b": 3}, id="c1"),
                ToolCall("adder", {"a": "two"}, id="c2"),
                ToolCall("echo", {"input": "hi"}, id="c3"),
            ]
        ),
        openai_stream("ok"),
    )
    replies = await ask("openai", server, tools=[adder, echo])
    assert [(r.content, r.is_error) for r in replies[1:4]] == [
        ("sum=5", False),
        (
            "ToolArgumentsError: tool 'adder' got invalid arguments: a: expected int, got \"two\"; the tool was "
            "not run, call it again with corrected arguments",
            True,
        ),
        ("echo:hi", False),
    ]


async def test_float_parameters_take_numbers_and_numeric_strings_but_not_overflow() -> None:
    async def scale(factor: float) -> float:
        """Scale."""
        return factor * 2

    tool = Tool.from_function(scale)
    assert await tool.handler({"factor": 2}) == 4.0
    assert await tool.handler({"factor": "1.25"}) == 2.5
    for bad in (10**400, "1e999", "nan", True):
        with pytest.raises(ToolArgumentsError, match="factor: expected float"):
            await tool.handler({"factor": bad})
