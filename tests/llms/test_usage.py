"""Normalised usage and its totals, usage limits on tool loops, and the rate-limit details of RateLimitError."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import anyio
import pytest
from llm_helpers import DEADLINE

from miniagents import MiniAgents, TextMessage
from miniagents.llms import (
    RateLimitError,
    Usage,
    UsageLimit,
    UsageLimitExceededError,
    anthropic_agent,
    openai_agent,
)
from miniagents.persistence import SQLiteStore
from miniagents.testing.fake_llm_server import (
    SSE,
    FakeLLMServer,
    ScriptedResponse,
    ToolCall,
    anthropic_error,
    anthropic_stream,
    openai_error,
    openai_stream,
)

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-usage-0123"


def oai(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "base_url": server.openai_base_url, "api_key": KEY, **kwargs}


def ant(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "claude-test", "base_url": server.anthropic_base_url, "api_key": KEY, **kwargs}


async def collect_messages(replies: Any, into: list[Any]) -> None:
    async for promise in replies.promises():
        into.append(await promise)


async def ping(n: int) -> str:
    """Ping."""
    return f"pong {n}"


def tool_turn(provider: str, n: int) -> ScriptedResponse:
    call = [ToolCall("ping", {"n": n}, id=f"call_{n}")]
    return openai_stream(tool_calls=call) if provider == "openai" else anthropic_stream(tool_uses=call)


def agent_and_options(provider: str, server: FakeLLMServer, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    if provider == "openai":
        return openai_agent, oai(server, **kwargs)
    return anthropic_agent, ant(server, **kwargs)


# -- normalised usage -------------------------------------------------------------------------------------------
async def test_openai_usage_is_normalised_next_to_the_raw_usage(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream(["a", "b"], reasoning=["r1", "r2", "r3"], cached_tokens=8))
    async with MiniAgents():
        (message,) = await openai_agent.inquire("q", **oai(server))
    assert message.usage["prompt_tokens"] == 11 and message.usage["completion_tokens"] == 5  # as reported
    assert message.normalized_usage == {
        "input_tokens": 11,
        "output_tokens": 5,
        "total_tokens": 16,
        "cache_read_tokens": 8,
        "cache_write_tokens": 0,
        "reasoning_tokens": 3,
        "requests": 1,
    }
    assert message.total_usage == message.normalized_usage
    assert Usage.of(message) == Usage(
        input_tokens=11, output_tokens=5, cache_read_tokens=8, reasoning_tokens=3, requests=1
    )


async def test_anthropic_usage_counts_cached_prompt_tokens_as_input(server: FakeLLMServer) -> None:
    server.enqueue(
        anthropic_stream(
            ["x"],
            input_tokens=11,
            cache_read_input_tokens=100,
            cache_creation_input_tokens=50,
            output_tokens=7,
        )
    )
    async with MiniAgents():
        (message,) = await anthropic_agent.inquire("q", **ant(server))
    assert message.usage["input_tokens"] == 11  # the raw usage as reported: cached tokens apart
    assert Usage.of(message) == Usage(
        input_tokens=161, output_tokens=7, cache_read_tokens=100, cache_write_tokens=50, requests=1
    )
    assert message.normalized_usage["total_tokens"] == 168


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_every_assistant_message_carries_the_running_total_of_its_call(
    server: FakeLLMServer, provider: str
) -> None:
    final = openai_stream(["done"]) if provider == "openai" else anthropic_stream(["done"])
    server.enqueue(tool_turn(provider, 1), tool_turn(provider, 2), final)
    agent, options = agent_and_options(provider, server, tools=[ping])
    async with MiniAgents():
        replies = await agent.inquire("go", **options)
    turns = [m for m in replies if m.role == "assistant"]
    assert len(turns) == 3
    per_turn = [Usage.of(m) for m in turns]
    assert all(u.requests == 1 and u.total_tokens > 0 for u in per_turn)
    assert [Usage.of(m, total=True) for m in turns] == [
        per_turn[0],
        per_turn[0] + per_turn[1],
        sum(per_turn, Usage()),
    ]
    assert Usage.of(turns[-1], total=True).requests == 3
    assert sum(per_turn) == sum(per_turn, Usage())


async def test_hidden_tool_turns_still_count_in_the_total(server: FakeLLMServer) -> None:
    server.enqueue(tool_turn("anthropic", 1), anthropic_stream(["done"]))
    async with MiniAgents():
        replies = await anthropic_agent.inquire("go", **ant(server, tools=[ping], reply_tool_messages=False))
    (answer,) = replies
    assert Usage.of(answer, total=True).requests == 2
    assert Usage.of(answer, total=True).total_tokens > Usage.of(answer).total_tokens


async def test_a_server_without_usage_counts_zero_tokens_and_one_request(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("x", usage=None))
    async with MiniAgents():
        (message,) = await openai_agent.inquire("q", **oai(server))
    assert message.get("usage") is None
    assert Usage.of(message) == Usage(requests=1)


def test_usage_normalises_each_provider_shape() -> None:
    chat = {
        "prompt_tokens": 20,
        "completion_tokens": 9,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 6},
    }
    assert Usage.from_provider(chat, provider="openai") == Usage(
        input_tokens=20, output_tokens=9, cache_read_tokens=4, reasoning_tokens=6, requests=1
    )
    deepseek = {"prompt_tokens": 20, "completion_tokens": 2, "prompt_cache_hit_tokens": 16}
    assert Usage.from_provider(deepseek, provider="openai").cache_read_tokens == 16
    responses = {
        "input_tokens": 30,
        "output_tokens": 12,
        "input_tokens_details": {"cached_tokens": 10},
        "output_tokens_details": {"reasoning_tokens": 5},
    }
    assert Usage.from_provider(responses, provider="openai") == Usage(
        input_tokens=30, output_tokens=12, cache_read_tokens=10, reasoning_tokens=5, requests=1
    )
    anthropic = {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5}
    assert Usage.from_provider(anthropic, provider="anthropic") == Usage(
        input_tokens=8, output_tokens=4, cache_read_tokens=5, requests=1
    )
    assert Usage.from_provider({"prompt_tokens": "lots", "completion_tokens": -1}) == Usage(requests=1)
    assert Usage.from_provider(None) == Usage(requests=1)


def test_usage_dict_round_trip_and_arithmetic() -> None:
    a = Usage(input_tokens=1, output_tokens=2, cache_read_tokens=3, cache_write_tokens=4, reasoning_tokens=5)
    b = Usage(input_tokens=10, output_tokens=20, requests=2)
    assert Usage.from_dict(a.as_dict()) == a
    assert (a + b).as_dict() == {
        "input_tokens": 11,
        "output_tokens": 22,
        "total_tokens": 33,
        "cache_read_tokens": 3,
        "cache_write_tokens": 4,
        "reasoning_tokens": 5,
        "requests": 2,
    }
    assert sum([a, b]) == a + b
    with pytest.raises(TypeError):
        a + 1  # type: ignore[operator]


def test_usage_of_a_message_without_normalised_fields_uses_its_raw_usage() -> None:
    old = TextMessage(
        "hi", role="assistant", provider="anthropic", usage={"input_tokens": 2, "output_tokens": 3}
    )
    assert Usage.of(old) == Usage(input_tokens=2, output_tokens=3, requests=1)
    assert Usage.of(TextMessage("ok", role="assistant")) == Usage(requests=1)
    assert Usage.of(TextMessage("a user turn")) == Usage()
    with pytest.raises(TypeError, match="takes a message"):
        Usage.of("not a message")


async def test_usage_fields_survive_a_sqlite_store_round_trip(server: FakeLLMServer, tmp_path: Path) -> None:
    server.enqueue(openai_stream(["a"], reasoning=["r"], cached_tokens=2))
    store = SQLiteStore(str(tmp_path / "usage.db"))
    async with MiniAgents(store=store):
        (message,) = await openai_agent.inquire("q", **oai(server))
    async with store:
        loaded = await store.get(message.hash_key)
    assert loaded == message
    assert loaded is not None and Usage.of(loaded) == Usage.of(message)
    assert Usage.of(loaded, total=True) == Usage.of(message, total=True)
    assert loaded.reasoning == "r"


# -- usage limits -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_usage_limit_stops_a_runaway_tool_loop_and_keeps_what_was_replied(
    server: FakeLLMServer, provider: str
) -> None:
    turns = iter(range(1, 100))
    server.handler = lambda request: tool_turn(provider, next(turns))  # the model never stops calling tools
    agent, options = agent_and_options(provider, server, tools=[ping], usage_limit=UsageLimit(requests=2))
    seen: list[Any] = []
    async with MiniAgents():
        replies = agent.inquire("go", **options)
        with anyio.fail_after(DEADLINE), pytest.raises(UsageLimitExceededError) as caught:
            await collect_messages(replies, seen)
    error = caught.value
    assert len(server.requests) == 2  # no third request
    # The replies streamed before the limit stay replied: turn 1, its tool result, turn 2 (whose tools did not run).
    assert [m.role for m in seen] == ["assistant", "tool", "assistant"]
    assert str(seen[1]) == "pong 1"
    assert error.agent == agent.alias and error.limit == UsageLimit(requests=2)
    assert error.limit_name == "requests" and error.usage == Usage.of(seen[-1], total=True)
    assert error.usage.requests == 2 and error.provider == provider
    assert f"agent {agent.alias!r} reached its usage limit requests=2" in str(error)
    assert KEY not in str(error) and KEY not in repr(error)


async def test_an_int_usage_limit_is_a_total_token_budget(server: FakeLLMServer) -> None:
    turns = iter(range(1, 100))
    usage = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    server.handler = lambda request: openai_stream(
        tool_calls=[ToolCall("ping", {"n": next(turns)})], usage=usage
    )
    async with MiniAgents():
        replies = openai_agent.inquire("go", **oai(server, tools=[ping], usage_limit=40))
        with anyio.fail_after(DEADLINE), pytest.raises(UsageLimitExceededError) as caught:
            await replies
    # Each turn reports 11 prompt + 3 completion tokens: 14, 28, 42 >= 40 stops after the third request.
    assert len(server.requests) == 3
    assert caught.value.limit == UsageLimit(total_tokens=40)
    assert caught.value.limit_name == "total_tokens" and caught.value.usage.total_tokens == 42


async def test_a_final_answer_past_the_limit_is_not_withheld(server: FakeLLMServer) -> None:
    server.enqueue(tool_turn("openai", 1), openai_stream(["all ", "done"]))
    async with MiniAgents():
        replies = await openai_agent.inquire(
            "go", **oai(server, tools=[ping], usage_limit=UsageLimit(requests=2))
        )
    assert str(replies[-1]) == "all done"
    assert Usage.of(replies[-1], total=True).requests == 2


async def test_usage_limit_values_are_checked() -> None:
    with pytest.raises(ValueError, match=r"UsageLimit.requests must be an int >= 1"):
        UsageLimit(requests=0)
    with pytest.raises(ValueError, match=r"UsageLimit.output_tokens must be an int >= 1"):
        UsageLimit(output_tokens=True)
    async with MiniAgents():
        with pytest.raises(
            TypeError, match=r"'openai_agent': usage_limit must be a miniagents.llms.UsageLimit"
        ):
            openai_agent.inquire("q", model="m", usage_limit="10k")
        with pytest.raises(ValueError, match=r"usage_limit must be >= 1"):
            openai_agent.inquire("q", model="m", usage_limit=0)


def test_usage_limit_error_pickles_with_its_details() -> None:
    error = UsageLimitExceededError(
        "stop",
        provider="openai",
        agent="a",
        limit=UsageLimit(output_tokens=5),
        usage=Usage(output_tokens=6, requests=1),
        limit_name="output_tokens",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.agent, copy.limit, copy.usage, copy.limit_name, copy.provider) == (
        "a",
        UsageLimit(output_tokens=5),
        Usage(output_tokens=6, requests=1),
        "output_tokens",
        "openai",
    )


# -- rate-limit details -----------------------------------------------------------------------------------------
async def test_openai_rate_limit_error_has_retry_after_and_the_rate_limit_headers(
    server: FakeLLMServer,
) -> None:
    headers = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-remaining-tokens": "1200",
        "set-cookie": "session=abc",
    }
    server.enqueue(openai_error(429, "slow down", retry_after_ms=1500, retry_after=9, headers=headers))
    async with MiniAgents():
        with anyio.fail_after(DEADLINE), pytest.raises(RateLimitError) as caught:
            await openai_agent.inquire("q", **oai(server, max_retries=0))
    error = caught.value
    assert error.retry_after == 1.5  # retry-after-ms wins over retry-after
    assert error.rate_limit_headers == {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-remaining-tokens": "1200",
    }
    with pytest.raises(TypeError):
        error.rate_limit_headers["x-ratelimit-remaining-requests"] = "9"  # type: ignore[index]
    assert KEY not in repr(dict(error.rate_limit_headers)) and "authorization" not in error.rate_limit_headers
    copy = pickle.loads(pickle.dumps(error))
    assert copy.retry_after == 1.5 and copy.rate_limit_headers == error.rate_limit_headers


async def test_anthropic_rate_limit_error_has_retry_after_and_the_rate_limit_headers(
    server: FakeLLMServer,
) -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:07Z",
    }
    server.enqueue(anthropic_error(429, "rate limited", retry_after=7, headers=headers))
    async with MiniAgents():
        with anyio.fail_after(DEADLINE), pytest.raises(RateLimitError) as caught:
            await anthropic_agent.inquire("q", **ant(server, max_retries=0))
    assert caught.value.retry_after == 7.0
    assert caught.value.rate_limit_headers == headers


@pytest.mark.parametrize(
    ("retry_after", "check"),
    [
        ("Wed, 21 Oct 2015 07:28:00 GMT", lambda seconds: seconds == 0.0),  # a date in the past: no wait
        ("Fri, 01 Jan 2100 00:00:00 GMT", lambda seconds: seconds > 365 * 24 * 3600),
        ("soon", lambda seconds: seconds is None),  # unparseable: not given
    ],
)
async def test_retry_after_as_an_http_date(server: FakeLLMServer, retry_after: str, check: Any) -> None:
    server.enqueue(openai_error(429, retry_after=retry_after))
    async with MiniAgents():
        with anyio.fail_after(DEADLINE), pytest.raises(RateLimitError) as caught:
            await openai_agent.inquire("q", **oai(server, max_retries=0))
    assert check(caught.value.retry_after)
    assert caught.value.rate_limit_headers == {}


async def test_a_mid_stream_rate_limit_error_has_no_retry_details(server: FakeLLMServer) -> None:
    body = [
        SSE({"error": {"message": "tokens per minute", "type": "requests", "code": "rate_limit_exceeded"}})
    ]
    server.enqueue(ScriptedResponse(headers={"content-type": "text/event-stream"}, body=body))
    async with MiniAgents():
        with anyio.fail_after(DEADLINE), pytest.raises(RateLimitError) as caught:
            await openai_agent.inquire("q", **oai(server))
    assert caught.value.retry_after is None and caught.value.rate_limit_headers == {}
