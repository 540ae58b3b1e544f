"""The project's LLM adapters end to end against real local model servers (Gemma 3 270M via llama.cpp).

``openai_agent`` against llama-cpp-python's OpenAI-compatible server (plain chat, and tool calls with the
``chatml-function-calling`` chat format), ``anthropic_agent`` against llama.cpp's ``llama-server``
``/v1/messages``.  The model is the *base* model and its text is not coherent: these tests assert structure
(streamed tokens, finish reasons, usage where the server sends it, tool-call JSON), never content.  The servers
are built and cached on first use; ``MINIAGENTS_SKIP_REAL_LLM=1`` skips this lane.
"""

from __future__ import annotations

import json

import pytest

from miniagents import Message, MiniAgents
from miniagents.llms import ToolRoundsExceededError, anthropic_agent, openai_agent
from miniagents.llms._local_server import LocalLLMServer

API_KEY = "test-key-not-secret"  # as started by conftest.llama_server
MAX_TOKENS = 16  # enough for several streamed chunks, quick at tens of tokens/s


async def stream_one(replies: object) -> tuple[list[str], Message]:
    """The tokens of the single reply message, as they streamed, and the resolved message."""
    promises = [p async for p in replies.promises()]  # type: ignore[attr-defined]
    assert len(promises) == 1
    tokens = [token async for token in promises[0]]
    return tokens, await promises[0]


async def test_openai_agent_streams_a_real_chat_completion(llama_cpp_python: LocalLLMServer) -> None:
    llm = openai_agent.fork(
        model=llama_cpp_python.model,
        base_url=llama_cpp_python.base_url,
        api_key="unused",
        max_tokens=MAX_TOKENS,
        extra_body={"max_tokens": MAX_TOKENS},  # llama-cpp-python knows only the older field
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


async def test_openai_agent_assembles_real_streamed_tool_calls(
    llama_cpp_python_tools: LocalLLMServer,
) -> None:
    calls: list[str] = []

    async def get_weather(city: str) -> str:
        """Return the weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    llm = openai_agent.fork(
        model=llama_cpp_python_tools.model,
        base_url=llama_cpp_python_tools.base_url,
        api_key="unused",
        tools=[get_weather],
        tool_choice="get_weather",  # the base model calls tools only when forced
        max_tool_rounds=1,  # forced, it would call tools forever
        extra_body={"max_tokens": 64},
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


async def test_anthropic_agent_streams_from_real_messages_endpoint(llama_server: LocalLLMServer) -> None:
    llm = anthropic_agent.fork(
        model=llama_server.model, base_url=llama_server.url, api_key=API_KEY, max_tokens=MAX_TOKENS
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


async def test_anthropic_agent_gets_a_typed_error_for_a_wrong_key(llama_server: LocalLLMServer) -> None:
    from miniagents.llms import AuthenticationError

    llm = anthropic_agent.fork(
        model=llama_server.model, base_url=llama_server.url, api_key="wrong-key", max_tokens=MAX_TOKENS
    )
    async with MiniAgents():
        with pytest.raises(AuthenticationError) as info:
            await llm.inquire("hi")
    assert info.value.status == 401
    assert "wrong-key" not in repr(info.value) and "wrong-key" not in str(info.value)
