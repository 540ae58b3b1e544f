"""Anthropic prompt-caching breakpoints: ``cache_system`` / ``cache_tools`` options and ``cache_control`` fields.

What is specified here: each marker becomes ``cache_control`` on exactly the block it names (the last system
block, the last tool, the last block a message adds); the API's limits are checked before anything is sent (at
most 4 breakpoints, naming the count and where they are; ``1h`` breakpoints before ``5m`` ones); a wrong value
is refused naming the option or the input message; OpenAI, which caches prompt prefixes by itself, gets the very
same body with or without markers.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_helpers import KEY, ant, oai

from miniagents import MiniAgents, TextMessage
from miniagents.llms import ImagePart, LLMError, anthropic_agent, openai_agent, user_message
from miniagents.llms._anthropic import AnthropicSpec
from miniagents.llms._common import parse_options
from miniagents.llms._tools import as_tools
from miniagents.testing.fake_llm_server import (
    FakeLLMServer,
    ToolCall,
    anthropic_stream,
    openai_stream,
)
from miniagents.testing.fake_llm_server._validation import _validate_anthropic

pytestmark = pytest.mark.anyio

EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


async def lookup(term: str) -> str:
    """Look a term up."""
    return f"{term}: found"


async def define(word: str) -> str:
    """Define a word."""
    return f"{word}: defined"


async def test_cache_system_marks_the_system_prompt_sent_as_a_text_block(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("ok"))
    async with MiniAgents():
        await anthropic_agent.inquire("hi", **ant(server, system="A long, stable prompt.", cache_system=True))
    body = server.requests[0].json
    assert server.requests[0].validation_error is None
    assert body["system"] == [{"type": "text", "text": "A long, stable prompt.", "cache_control": EPHEMERAL}]
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


async def test_without_any_marker_the_system_stays_one_string(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("ok"))
    async with MiniAgents():
        await anthropic_agent.inquire(
            [TextMessage("More rules.", role="system"), "hi"], **ant(server, system="Rules.")
        )
    assert server.requests[0].json["system"] == "Rules.\n\nMore rules."


async def test_cache_system_marks_the_last_system_block_when_system_messages_follow_the_option(
    server: FakeLLMServer,
) -> None:
    server.enqueue(anthropic_stream("ok"))
    async with MiniAgents():
        await anthropic_agent.inquire(
            [TextMessage("More rules.", role="system"), "hi"],
            **ant(server, system="Rules.", cache_system={"type": "ephemeral", "ttl": "1h"}),
        )
    assert server.requests[0].json["system"] == [
        {"type": "text", "text": "Rules."},
        {"type": "text", "text": "More rules.", "cache_control": HOUR},
    ]


async def test_cache_tools_marks_the_last_tool(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("ok"))
    async with MiniAgents():
        await anthropic_agent.inquire("hi", **ant(server, tools=[lookup, define], cache_tools=True))
    tools = server.requests[0].json["tools"]
    assert server.requests[0].validation_error is None
    assert [t["name"] for t in tools] == ["lookup", "define"]
    assert "cache_control" not in tools[0] and tools[1]["cache_control"] == EPHEMERAL


async def test_a_message_marker_goes_on_the_last_block_of_that_message_also_in_a_merged_turn(
    server: FakeLLMServer,
) -> None:
    server.enqueue(anthropic_stream("ok"))
    history = [
        user_message("Here is the manual:", ImagePart(url="https://example.com/p1.png"), cache_control=True),
        TextMessage("Question one?"),  # merged into the same user turn, after the breakpoint
    ]
    async with MiniAgents():
        await anthropic_agent.inquire(history, **ant(server))
    assert server.requests[0].validation_error is None
    assert server.requests[0].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here is the manual:"},
                {
                    "type": "image",
                    "source": {"type": "url", "url": "https://example.com/p1.png"},
                    "cache_control": EPHEMERAL,
                },
                {"type": "text", "text": "Question one?"},
            ],
        }
    ]


async def test_markers_on_assistant_turns_tool_results_and_system_messages(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("ok"))
    history = [
        TextMessage("Be exact.", role="system", cache_control={"type": "ephemeral", "ttl": "1h"}),
        TextMessage("Look it up"),
        TextMessage(
            "Looking.",
            role="assistant",
            tool_calls=[{"id": "t1", "name": "lookup", "arguments": '{"term": "x"}'}],
            cache_control=True,
        ),
        TextMessage("x: found", role="tool", tool_call_id="t1", cache_control=True),
    ]
    async with MiniAgents():
        await anthropic_agent.inquire(history, **ant(server, tools=[lookup]))
    body = server.requests[0].json
    assert server.requests[0].validation_error is None
    assert body["system"] == [{"type": "text", "text": "Be exact.", "cache_control": HOUR}]
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Looking."},
        {
            "type": "tool_use",
            "id": "t1",
            "name": "lookup",
            "input": {"term": "x"},
            "cache_control": EPHEMERAL,
        },
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "x: found", "cache_control": EPHEMERAL}
    ]


async def test_the_tool_loop_keeps_the_markers_of_the_input_in_every_round(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("", tool_uses=[ToolCall("lookup", {"term": "y"}, id="t9")]))
    server.enqueue(anthropic_stream("y is found"))
    async with MiniAgents():
        await anthropic_agent.inquire(
            TextMessage("Long context.", cache_control=True),
            **ant(server, system="S.", cache_system=True, tools=[lookup], cache_tools=True),
        )
    for request in server.requests:
        body = request.json
        assert request.validation_error is None
        assert body["system"][-1]["cache_control"] == EPHEMERAL
        assert body["tools"][-1]["cache_control"] == EPHEMERAL
        assert body["messages"][0]["content"][-1] == {
            "type": "text",
            "text": "Long context.",
            "cache_control": EPHEMERAL,
        }


async def test_five_breakpoints_are_refused_naming_the_count_and_where_they_are(
    server: FakeLLMServer,
) -> None:
    history = [TextMessage(f"part {i}", cache_control=True) for i in range(3)]
    cached = anthropic_agent.fork(alias="cached_claude", **ant(server, system="S.", cache_system=True))
    async with MiniAgents():
        with pytest.raises(LLMError) as caught:
            await cached.inquire(history, tools=[lookup], cache_tools=True)
    text = str(caught.value)
    assert "agent 'cached_claude'" in text and "5 cache_control breakpoints" in text
    assert (
        "(tools[0], system[0], messages[0].content[0], messages[0].content[1], messages[0].content[2])"
        in text
    )
    assert "at most 4" in text and "nothing was sent" in text
    assert server.requests == []


async def test_four_breakpoints_are_accepted(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("ok"))
    history = [TextMessage(f"part {i}", cache_control=True) for i in range(2)]
    async with MiniAgents():
        await anthropic_agent.inquire(
            history, **ant(server, system="S.", cache_system=True, tools=[lookup], cache_tools=True)
        )
    assert server.requests[0].validation_error is None


async def test_a_1h_breakpoint_after_a_5m_one_is_refused(server: FakeLLMServer) -> None:
    async with MiniAgents():
        with pytest.raises(
            LLMError,
            match=r"the 1h cache_control breakpoint at messages\[0\]\.content\[0\] comes "
            r"after the 5m one at system\[0\]",
        ):
            await anthropic_agent.inquire(
                TextMessage("doc", cache_control=HOUR), **ant(server, system="S.", cache_system=True)
            )
    assert server.requests == []


@pytest.mark.parametrize(
    ("value", "error", "text"),
    [
        ("yes", TypeError, "cache_system must be True, False, None or a mapping"),
        ({"type": "persistent"}, ValueError, "cache_system: the cache_control type must be 'ephemeral'"),
        (
            {"type": "ephemeral", "ttl": "2h"},
            ValueError,
            "cache_system: the cache_control ttl must be '5m' or '1h'",
        ),
        ({"ttl": "1h", "scope": "org"}, ValueError, "cache_system: unknown cache_control key"),
    ],
)
async def test_a_wrong_cache_option_is_refused_at_the_call_naming_the_agent_and_the_option(
    server: FakeLLMServer, value: Any, error: type[Exception], text: str
) -> None:
    async with MiniAgents():
        with pytest.raises(error, match=f"agent 'anthropic_agent': {text}"):
            anthropic_agent.inquire("hi", **ant(server, cache_system=value))
        with pytest.raises(error, match="agent 'anthropic_agent': cache_tools"):
            anthropic_agent.fork(cache_tools=value)
    assert server.requests == []


async def test_a_wrong_message_marker_is_refused_naming_the_agent_and_the_input_message(
    server: FakeLLMServer,
) -> None:
    async with MiniAgents():
        with pytest.raises(
            LLMError, match=r"agent 'anthropic_agent': input message 1: cache_control must be True"
        ):
            await anthropic_agent.inquire(["a", TextMessage("b", cache_control="soon")], **ant(server))
    assert server.requests == []


async def test_a_marker_on_a_message_that_sends_no_block_is_refused(server: FakeLLMServer) -> None:
    async with MiniAgents():
        with pytest.raises(LLMError, match="input message 1 has cache_control but sends no content block"):
            await anthropic_agent.inquire(["a", TextMessage(" ", cache_control=True)], **ant(server))
    assert server.requests == []


async def test_openai_gets_the_same_body_with_and_without_markers(server: FakeLLMServer) -> None:
    server.handler = lambda request: openai_stream("ok")
    plain = [
        TextMessage("Be exact.", role="system"),
        user_message("Look", ImagePart(url="https://e.com/a.png")),
    ]
    marked = [
        TextMessage("Be exact.", role="system", cache_control=True),
        user_message("Look", ImagePart(url="https://e.com/a.png"), cache_control=HOUR),
    ]
    async with MiniAgents():
        await openai_agent.inquire(plain, **oai(server, system="S.", tools=[lookup]))
        await openai_agent.inquire(
            marked, **oai(server, system="S.", tools=[lookup], cache_system=True, cache_tools=True)
        )
    assert server.requests[0].json == server.requests[1].json
    assert "cache_control" not in server.requests[1].body.decode()


# -- property ------------------------------------------------------------------------------------------------------
_MARKER = st.sampled_from([None, True, HOUR])


@settings(max_examples=200, deadline=None)
@given(
    markers=st.lists(_MARKER, max_size=6),
    system_marker=_MARKER,
    tools_marker=_MARKER,
    with_tools=st.booleans(),
)
def test_property_breakpoints_land_where_marked_or_the_request_is_refused(
    markers: list[Any], system_marker: Any, tools_marker: Any, with_tools: bool
) -> None:
    """For any markers: the request is refused exactly when there are more than 4 breakpoints or a 1h one
    follows a 5m one (in the order tools, system, messages); otherwise each marked block carries its marker,
    no other block has one, and the fake server's copy of the API checks accepts the body."""
    history = []
    for i, marker in enumerate(markers):
        role = "user" if i % 2 == 0 else "assistant"
        history.append(TextMessage(f"turn {i}", role=role, cache_control=marker))
    options = parse_options(
        "claude",
        {
            "model": "m",
            "system": "S.",
            "cache_system": system_marker,
            "cache_tools": tools_marker,
            "tools": [lookup] if with_tools else [],
        },
    )
    expected = ([tools_marker] if with_tools else []) + [system_marker] + markers
    placed = [m for m in expected if m is not None]
    ttls = ["1h" if m == HOUR else "5m" for m in placed]
    misordered = "5m" in ttls and "1h" in ttls[ttls.index("5m") :]
    spec = AnthropicSpec(agent="claude")
    if len(placed) > 4 or misordered:
        with pytest.raises(LLMError, match="agent 'claude'"):
            spec.request(options, history, as_tools(options.tools), KEY, "http://127.0.0.1:1")
        return
    _, _, body = spec.request(options, history, as_tools(options.tools), KEY, "http://127.0.0.1:1")
    assert _validate_anthropic(body) is None

    def marker_of(block: dict[str, Any]) -> Any:
        value = block.get("cache_control")
        return None if value is None else (HOUR if value == HOUR else True)

    assert [marker_of(t) for t in body.get("tools", [])] == ([tools_marker] if with_tools else [])
    system = body["system"]
    assert ([marker_of(b) for b in system] if isinstance(system, list) else [None]) == [system_marker]
    in_messages = [marker_of(b) for turn in body["messages"] for b in turn["content"]]
    # one text block per message (alternating roles: nothing merges); no message: the placeholder turn
    assert in_messages == (markers if markers else [None])
