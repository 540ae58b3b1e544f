"""Property: a transcript split at arbitrary byte boundaries yields exactly the same tokens and message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import MiniAgents
from miniagents.llms._anthropic import AnthropicSpec
from miniagents.llms._common import parse_options
from miniagents.llms._openai import OpenAISpec
from miniagents.llms._sse import SSEDecoder
from miniagents.testing.fake_llm_server import ScriptedResponse, ToolCall, anthropic_stream, openai_stream

TOKENS = ["Grüß", " Gott", " — ", "日本語", " 🎉", "\n", "done"]
CALL = ToolCall("lookup", {"city": "Zürich", "note": "🎉 ünïcödé"}, id="call_1", fragment_size=3)


def transcripts() -> dict[str, tuple[Any, ScriptedResponse]]:
    return {
        "openai": (OpenAISpec(), openai_stream(TOKENS, tool_calls=[CALL], newline="\r\n")),
        "anthropic": (AnthropicSpec(), anthropic_stream(TOKENS, tool_uses=[CALL], unknown_events=True)),
    }


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(raw)) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


def decode(spec: Any, chunks: list[bytes]) -> tuple[list[str], dict[str, Any], list[Any]]:
    decoder = spec.decoder(parse_options("test", {"model": "m"}), "req")
    sse = SSEDecoder()
    tokens = [t for chunk in chunks for event in sse.feed(chunk) for t in decoder.feed(event)]
    tokens += [t for event in sse.close() for t in decoder.feed(event)]
    fields, calls = decoder.result()
    return tokens, fields, calls


cuts_strategy = st.lists(st.integers(min_value=0, max_value=6000), max_size=40)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@given(cuts=cuts_strategy)
def test_decoding_is_independent_of_chunk_boundaries(provider: str, cuts: list[int]) -> None:
    spec, response = transcripts()[provider]
    raw = response.body_bytes()
    expected = decode(spec, [raw])
    assert "".join(expected[0]) == "".join(TOKENS)
    assert [c.name for c in expected[2]] == ["lookup"]
    assert decode(spec, split(raw, cuts)) == expected


def test_every_single_byte_boundary() -> None:
    for spec, response in transcripts().values():
        raw = response.body_bytes()
        assert decode(spec, [bytes([b]) for b in raw]) == decode(spec, [raw])


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


pytestmark_anyio = pytest.mark.anyio


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=cuts_strategy)
async def test_whole_agent_sees_the_same_tokens_and_message(provider: str, cuts: list[int]) -> None:
    """Through the agent and a real httpx client whose transport delivers exactly the given chunks."""
    from miniagents.llms import anthropic_agent, openai_agent

    _, response = transcripts()[provider]
    raw = response.body_bytes()
    text_only = (openai_stream(TOKENS) if provider == "openai" else anthropic_stream(TOKENS)).body_bytes()
    del raw

    async def run(chunks: list[bytes]) -> tuple[list[str], Any]:
        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers=dict(response.headers), stream=_Chunks(chunks))

        agent = openai_agent if provider == "openai" else anthropic_agent
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client, MiniAgents():
            replies = agent.inquire("q", model="m", api_key="k", base_url="http://test", http_client=client)
            promise = await anext(aiter(replies.promises()))
            return [t async for t in promise], await promise

    expected = await run([text_only])
    assert "".join(expected[0]) == "".join(TOKENS)
    assert await run(split(text_only, cuts)) == expected
