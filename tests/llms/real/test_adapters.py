"""The project's LLM adapters end to end against the real local model server (Gemma 3 270M via llama.cpp).

``openai_agent`` against its ``/v1/chat/completions`` and ``anthropic_agent`` against its ``/v1/messages``
(one server, from the prebuilt ``xllamacpp`` wheel), plain chat and tool calls on both, and ``local_agent``
forcing one tool by name.  The model is the *base* model and its text is not coherent: these tests assert
structure (streamed tokens, finish reasons, usage, tool-call JSON), never content.
``MINIAGENTS_SKIP_REAL_LLM=1`` skips this lane.
"""

from __future__ import annotations

import json

import pytest

from miniagents import Message, MiniAgents
from miniagents.llms import ToolRoundsExceededError, anthropic_agent, openai_agent
from miniagents.llms._local_server import LocalLLMServer

API_KEY = "test-key-not-secret"  # as started by conftest.local_llm
MAX_TOKENS = 16  # enough for several streamed chunks, quick at tens of tokens/s


async def stream_one(replies: object) -> tuple[list[str], Message]:
    """The tokens of the single reply message, as they streamed, and the resolved message."""
    promises = [p async for p in replies.promises()]  # type: ignore[attr-defined]
    assert len(promises) == 1
    tokens = [token async for token in promises[0]]
    return tokens, await promises[0]


async def test_openai_agent_streams_a_real_chat_completion(local_llm: LocalLLMServer) -> None:
    llm = openai_agent.fork(
        model=local_llm.model,
        base_url=local_llm.base_url,
        api_key=API_KEY,
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    async with MiniAgents():
        tokens, message = await stream_one(llm.inquire("Write a sentence about rivers.", system="Be brief."))
    assert len(tokens) >= 2  # streamed in pieces, not delivered whole
    assert "".join(tokens) == message.content
    assert message.role == "assistant"
    assert message.provider == "openai"
    assert message.finish_reason in ("stop", "length")
    assert message.model  # as reported by the server
    assert message.usage["completion_tokens"] >= 1


async def test_openai_agent_assembles_real_streamed_tool_calls(local_llm: LocalLLMServer) -> None:
    calls: list[str] = []

    async def get_weather(city: str) -> str:
        """Return the weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    llm = openai_agent.fork(
        model=local_llm.model,
        base_url=local_llm.base_url,
        api_key=API_KEY,
        tools=[get_weather],
        # the base model calls tools only when forced; llama.cpp's server knows no named tool_choice
        tool_choice="required",
        parallel_tool_calls=False,  # allowed several, it adds calls until the token limit cuts one off
        max_tool_rounds=1,  # forced, it would call tools forever
        max_tokens=64,
        temperature=0,
    )
    seen: list[Message] = []
    async with MiniAgents():
        with pytest.raises(ToolRoundsExceededError):  # noqa: PT012 - the stream raises after the tool turn
            async for message in llm.inquire("What is the weather in Paris?"):
                seen.append(message)
    tool_turns = [m for m in seen if m.get("tool_calls")]
    assert tool_turns, seen
    call = tool_turns[0].tool_calls[0]
    assert call["name"] == "get_weather"
    arguments = json.loads(call["arguments"])  # fragments assembled into valid JSON
    assert isinstance(arguments, dict)
    results = [m for m in seen if m.get("role") == "tool"]
    assert results  # the tool ran and its result went back as a message
    assert len(calls) == len(results)


async def test_local_agent_forces_the_tool_its_tool_choice_names(anyio_backend: str) -> None:
    from miniagents.llms.local import local_agent

    asked: list[str] = []

    async def get_weather(city: str) -> str:
        """Return the weather in a city."""
        asked.append("get_weather")
        return f"sunny in {city}"

    async def get_time(city: str) -> str:
        """Return the local time in a city."""
        asked.append("get_time")
        return f"noon in {city}"

    seen: list[Message] = []
    async with MiniAgents():  # local_agent starts the context's own server (about a second)
        llm = local_agent.fork(tools=[get_weather, get_time], max_tool_rounds=1, max_tokens=64, temperature=0)
        with pytest.raises(ToolRoundsExceededError):  # noqa: PT012 - the stream raises after the tool turn
            async for message in llm.inquire("What time is it in Paris?", tool_choice="get_time"):
                seen.append(message)
    calls = [call for m in seen for call in m.get("tool_calls") or ()]
    assert calls and {call["name"] for call in calls} == {"get_time"}
    assert asked == ["get_time"]  # one call per turn, of the named tool only
    assert isinstance(json.loads(calls[0]["arguments"]), dict)


async def test_anthropic_agent_streams_from_real_messages_endpoint(local_llm: LocalLLMServer) -> None:
    llm = anthropic_agent.fork(
        model=local_llm.model, base_url=local_llm.url, api_key=API_KEY, max_tokens=MAX_TOKENS
    )
    async with MiniAgents():
        tokens, message = await stream_one(
            llm.inquire("Write a sentence about mountains.", system="Be brief.")
        )
    assert len(tokens) >= 2
    assert "".join(tokens) == message.content
    assert message.role == "assistant"
    assert message.provider == "anthropic"
    assert message.finish_reason in ("end_turn", "max_tokens", "stop_sequence")
    assert message.usage["output_tokens"] >= 1


async def test_anthropic_agent_runs_a_real_tool_use_round(local_llm: LocalLLMServer) -> None:
    cities: list[str] = []

    async def get_weather(city: str) -> str:
        """Return the weather in a city."""
        cities.append(city)
        return f"sunny in {city}"

    llm = anthropic_agent.fork(
        model=local_llm.model,
        base_url=local_llm.url,
        api_key=API_KEY,
        tools=[get_weather],
        tool_choice="get_weather",  # Anthropic's named form: the server forces that tool
        parallel_tool_calls=False,
        max_tool_rounds=1,
        max_tokens=64,
        temperature=0,
    )
    seen: list[Message] = []
    async with MiniAgents():
        with pytest.raises(ToolRoundsExceededError):  # noqa: PT012 - the stream raises after the tool turn
            async for message in llm.inquire("What is the weather in Paris?"):
                seen.append(message)
    tool_turns = [m for m in seen if m.get("tool_calls")]
    assert tool_turns, seen
    assert tool_turns[0].provider == "anthropic" and tool_turns[0].finish_reason == "tool_use"
    call = tool_turns[0].tool_calls[0]
    assert call["name"] == "get_weather"
    assert isinstance(json.loads(call["arguments"]), dict)
    results = [m for m in seen if m.get("role") == "tool"]
    assert len(results) == len(cities) == 1  # the tool ran once; round 2's calls were refused


async def test_anthropic_agent_gets_a_typed_error_for_a_wrong_key(local_llm: LocalLLMServer) -> None:
    from miniagents.llms import AuthenticationError

    llm = anthropic_agent.fork(
        model=local_llm.model, base_url=local_llm.url, api_key="wrong-key", max_tokens=MAX_TOKENS
    )
    async with MiniAgents():
        with pytest.raises(AuthenticationError) as info:
            await llm.inquire("hi")
    assert info.value.status == 401
    assert "wrong-key" not in repr(info.value) and "wrong-key" not in str(info.value)
