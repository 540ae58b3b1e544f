"""A small agent graph with LLM agents, run live against FakeLLMServer or replayed from a cassette.

Imported by its bare name: pytest (import mode ``prepend``) puts each test directory on
``sys.path``, the directories not being packages, so every helper module's name is unique in the suite.
"""

from __future__ import annotations

from typing import Any

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.llms import anthropic_agent, openai_agent
from miniagents.testing import ToolCall, anthropic_stream, openai_stream

SENTINEL = "sk-SENTINEL-0123456789abcdef"
DEAD_URL = "http://127.0.0.1:9"  # nothing listens there: a request that escapes the cassette fails
DEAD_OPENAI_URL = DEAD_URL + "/v1"  # the same dead address as an OpenAI base URL


async def weather(city: str) -> str:
    """The weather of a city."""
    return f"sunny in {city}"


def scripted_rounds(provider: str, tokens: list[str], city: str = "Zürich") -> list[Any]:
    """A tool round (one call of ``weather``) then a text answer made of *tokens*."""
    call = ToolCall("weather", {"city": city}, id=f"call_{provider}", fragment_size=4)
    if provider == "openai":
        return [openai_stream(["Let me check. "], tool_calls=[call]), openai_stream(tokens)]
    return [anthropic_stream(["Let me check."], tool_uses=[call]), anthropic_stream(tokens)]


def agent_for(provider: str, base_url: str, api_key: str = "sk-test-key") -> Any:
    base = openai_agent if provider == "openai" else anthropic_agent
    return base.fork(
        alias=f"{provider}_assistant",
        model=f"{provider}-model",
        base_url=base_url,
        api_key=api_key,
        max_tokens=64,
        temperature=0,
        tools=[weather],
        reply_tool_messages=True,
    )


async def run_graph(
    provider: str, base_url: str, question: str = "Weather in Zürich?", **options: Any
) -> Any:
    """Run a two-agent graph (a host forwarding to the LLM agent); return the tokens and messages seen."""
    assistant = agent_for(provider, base_url, **options)

    @miniagent
    async def host(ctx: InteractionContext) -> None:
        ctx.reply(assistant.inquire(ctx.messages))

    async with MiniAgents():
        tokens: list[list[str]] = []
        async for promise in host.inquire(question).promises():
            tokens.append([token async for token in promise])
        messages = await host.inquire(question)
        # the second inquiry repeats the same requests: the cassette serves their second recordings
        return tokens, [m.to_dict() for m in messages]
