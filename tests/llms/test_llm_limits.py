"""LLM agents through rate limiters, against the fake provider server: what is reserved, settled, given back and
paused, and which limiters apply (the context's, the agent's, both) — nested tool calls included."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import attrs
import pytest

from miniagents import AgentCallCancelledError, MiniAgents, RateLimit, RateLimiter
from miniagents.llms import ServerError, anthropic_agent, api_key_fingerprint, openai_agent
from miniagents.testing.fake_llm_server import (
    FakeLLMServer,
    Gate,
    ToolCall,
    anthropic_error,
    anthropic_stream,
    openai_error,
    openai_stream,
)
from miniagents.testing.limits import ManualClock

pytestmark = pytest.mark.anyio

KEY = ("openai", "m")


async def until(condition: Callable[[], bool]) -> None:
    """Wait (yielding to the event loop and the sockets) until *condition* holds; fails after 10 s."""
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.001)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def test_the_context_limiter_sees_every_request_and_settles_to_the_usage(server: FakeLLMServer) -> None:
    limiter = RateLimiter(default=RateLimit(tokens_per_minute=100_000, requests_per_minute=100))
    server.enqueue(openai_stream("one", usage=usage(11, 5)), openai_stream("two", usage=usage(20, 7)))
    async with MiniAgents(rate_limiter=limiter):
        for _ in range(2):
            await openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key="k")
    s = limiter.statistics()[KEY]
    assert (s.granted, s.in_flight, s.waiting) == (2, 0, 0)
    assert (s.requests_in_window, s.tokens_in_window) == (2, 16 + 27)


async def test_the_reservation_is_the_prompt_estimate_plus_max_tokens(server: FakeLLMServer) -> None:
    limiter = RateLimiter(default=RateLimit(tokens_per_minute=100_000))
    gate = Gate()
    server.enqueue(openai_stream(["a", "b"], gate=gate, usage=usage(3, 2)))
    async with MiniAgents(rate_limiter=limiter):
        reply = openai_agent.inquire(
            "hello there", model="m", max_tokens=500, base_url=server.openai_base_url, api_key="k"
        )
        await server.wait_for_requests(1)
        await until(lambda: limiter.statistics()[KEY].in_flight == 1)
        body = server.requests[0].body
        assert json.loads(body)["max_completion_tokens"] == 500
        assert limiter.statistics()[KEY].tokens_in_window == len(body) // 4 + 500
        gate.open()
        await reply
    assert limiter.statistics()[KEY].tokens_in_window == 5


async def test_a_failed_request_gives_its_tokens_back_but_counts_as_a_request(server: FakeLLMServer) -> None:
    limiter = RateLimiter(default=RateLimit(tokens_per_minute=100_000, requests_per_minute=10))
    server.enqueue(openai_error(500), openai_error(500))
    async with MiniAgents(rate_limiter=limiter):
        with pytest.raises(ServerError):
            await openai_agent.inquire(
                "hi",
                model="m",
                max_tokens=100,
                max_retries=1,
                base_url=server.openai_base_url,
                api_key="k",
                retry_policy={"initial_delay": 0.001},
            )
    s = limiter.statistics()[KEY]
    assert (s.granted, s.requests_in_window, s.tokens_in_window, s.in_flight) == (2, 2, 0, 0)


async def test_a_stream_cut_after_acceptance_keeps_the_prompt_estimate(server: FakeLLMServer) -> None:
    limiter = RateLimiter(default=RateLimit(tokens_per_minute=100_000))
    server.enqueue(openai_stream(["partial"], truncate=True))
    async with MiniAgents(rate_limiter=limiter):
        with pytest.raises(Exception, match=r"stream|terminal|truncat"):
            await openai_agent.inquire(
                "hi", model="m", max_tokens=300, base_url=server.openai_base_url, api_key="k"
            )
    body = server.requests[0].body
    assert limiter.statistics()[KEY].tokens_in_window == len(body) // 4


async def test_cancelling_a_waiting_call_leaves_the_queue(server: FakeLLMServer) -> None:
    limiter = RateLimiter(default=RateLimit(max_concurrent=1))
    gate = Gate()
    server.enqueue(openai_stream("first", gate=gate), openai_stream("third"))
    async with MiniAgents(rate_limiter=limiter):
        first = openai_agent.inquire("1", model="m", base_url=server.openai_base_url, api_key="k")
        await server.wait_for_requests(1)
        second = openai_agent.initiate_call(model="m", base_url=server.openai_base_url, api_key="k")
        second.send("2").finish()
        await until(lambda: limiter.statistics()[KEY].waiting == 1)
        second.cancel()
        await until(lambda: limiter.statistics()[KEY].waiting == 0)
        third = openai_agent.inquire("3", model="m", base_url=server.openai_base_url, api_key="k")
        await until(lambda: limiter.statistics()[KEY].waiting == 1)
        gate.open()
        assert await first.as_single_text() == "first"
        assert await third.as_single_text() == "third"
        with pytest.raises(AgentCallCancelledError):
            await second.reply_sequence()
    s = limiter.statistics()[KEY]
    assert (s.granted, s.cancelled, s.in_flight, len(server.requests)) == (2, 1, 0, 2)


async def test_a_call_cancelled_in_the_second_limiter_gives_the_first_its_request_back(
    server: FakeLLMServer,
) -> None:
    # The agent's limiter grants first; the context's (one request at a time) makes the second request wait.
    # Cancelled there, the request was never sent: the agent's limiter must not count it.
    agent_limiter = RateLimiter(default=RateLimit(requests_per_minute=10, tokens_per_minute=10_000))
    context_limiter = RateLimiter(default=RateLimit(max_concurrent=1))
    gate = Gate()
    server.enqueue(openai_stream("first", gate=gate))
    options = {
        "model": "m",
        "base_url": server.openai_base_url,
        "api_key": "k",
        "rate_limiter": agent_limiter,
    }
    async with MiniAgents(rate_limiter=context_limiter):
        first = openai_agent.inquire("1", **options)
        await server.wait_for_requests(1)
        second = openai_agent.initiate_call(**options)
        second.send("2").finish()
        await until(lambda: context_limiter.statistics()[KEY].waiting == 1)
        assert agent_limiter.statistics()[KEY].requests_in_window == 2
        second.cancel()
        await until(lambda: context_limiter.statistics()[KEY].waiting == 0)
        s = agent_limiter.statistics()[KEY]
        assert (s.requests_in_window, s.in_flight) == (1, 1)
        gate.open()
        assert await first.as_single_text() == "first"
        with pytest.raises(AgentCallCancelledError):
            await second.reply_sequence()
    assert len(server.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_retry_after_pauses_every_waiter_then_a_probe_goes_first(
    server: FakeLLMServer, provider: str
) -> None:
    clock = ManualClock()
    limiter = RateLimiter(default=RateLimit(max_concurrent=10), clock=clock)
    gate = Gate()
    if provider == "openai":
        agent, base_url, key = openai_agent, server.openai_base_url, ("openai", "m")
        refusal = openai_error(429, retry_after_ms=5000)
        stream = openai_stream
    else:
        agent, base_url, key = anthropic_agent, server.anthropic_base_url, ("anthropic", "m")
        refusal = anthropic_error(529, retry_after=5)
        stream = anthropic_stream
    server.enqueue(refusal, attrs.evolve(stream("probe"), before_headers=gate))
    server.enqueue(stream("ok"), stream("ok"))
    async with MiniAgents(rate_limiter=limiter):
        first = agent.inquire("a", model="m", base_url=base_url, api_key="k")
        await server.wait_for_requests(1)
        await until(lambda: limiter.statistics()[key].paused_for == 5.0)
        others = [agent.inquire(x, model="m", base_url=base_url, api_key="k") for x in "bc"]
        await until(lambda: limiter.statistics()[key].waiting == 3)  # the retry and the two others
        assert len(server.requests) == 1
        clock.advance(5.0)
        await server.wait_for_requests(2)
        await anyio.sleep(0.05)  # not an assertion on time: gives a wrongly released waiter a chance to show
        assert len(server.requests) == 2 and limiter.statistics()[key].probing
        gate.open()
        texts = sorted([await first.as_single_text()] + [await o.as_single_text() for o in others])
    assert texts == ["ok", "ok", "probe"]
    s = limiter.statistics()[key]
    assert (s.pauses, s.granted, s.in_flight, s.probing, len(server.requests)) == (1, 4, 0, False, 4)


async def test_tool_calls_nested_agents_and_the_agents_own_limiter_all_count(server: FakeLLMServer) -> None:
    shared = RateLimiter(default=RateLimit(max_concurrent=2))
    own = RateLimiter(default=RateLimit(max_concurrent=1))
    worker = openai_agent.fork(model="worker", base_url=server.openai_base_url, api_key="k", rate_limiter=own)

    async def ask_worker(question: str) -> str:
        """Ask the worker model."""
        return str(await worker.inquire(question).as_single_text())

    def respond(request):  # type: ignore[no-untyped-def]
        body = request.json
        if body["model"] == "worker":
            return openai_stream("answer")
        if any(m["role"] == "tool" for m in body["messages"]):
            return openai_stream("done")
        calls = [ToolCall("ask_worker", {"question": f"q{i}"}) for i in range(4)]
        return openai_stream(tool_calls=calls)

    server.handler = respond
    async with MiniAgents(rate_limiter=shared):
        replies = await openai_agent.inquire(
            "go", model="boss", base_url=server.openai_base_url, api_key="k", tools=[ask_worker]
        )
    assert str(replies[-1]) == "done"
    stats = shared.statistics()
    assert stats[("openai", "boss")].granted == 2
    assert stats[("openai", "worker")].granted == 4
    assert own.statistics()[("openai", "worker")].granted == 4
    assert all(s.in_flight == 0 for s in [*stats.values(), *own.statistics().values()])


async def test_a_limiter_keyed_per_api_key_never_holds_the_key(server: FakeLLMServer) -> None:
    limiter = RateLimiter(default=RateLimit(requests_per_minute=5), key=lambda info: info.api_key_fingerprint)
    server.enqueue(openai_stream("x"))
    async with MiniAgents(rate_limiter=limiter):
        await openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key="sk-very-secret")
    stats = limiter.statistics()
    assert list(stats) == [api_key_fingerprint("sk-very-secret")]
    assert "sk-very-secret" not in repr(stats) + repr(limiter)


async def test_the_limiter_options_are_checked() -> None:
    with pytest.raises(TypeError, match=r"rate_limiter= needs a miniagents\.RateLimiter"):
        MiniAgents(rate_limiter=RateLimit())  # type: ignore[arg-type]
    async with MiniAgents():
        with pytest.raises(TypeError, match=r"rate_limiter must be a miniagents\.RateLimiter"):
            await openai_agent.inquire("hi", model="m", rate_limiter=RateLimiter)
