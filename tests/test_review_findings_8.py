"""Review of issue #8 (rate limits, tracing): each test pins a defect found in review, or the execute_tool spans."""

from __future__ import annotations

import json

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from miniagents import InteractionContext, MiniAgents, RateLimit, RateLimiter, miniagent
from miniagents.llms import openai_agent
from miniagents.testing import FakeLLMServer, openai_stream
from miniagents.testing.limits import ManualClock, wait_all_tasks_blocked
from miniagents.tracing import CAPTURE_CONTENT_ENV

pytestmark = pytest.mark.anyio

KEY = "sk-REVIEW8-SENTINEL-never-in-a-span"


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", CAPTURE_CONTENT_ENV):
        monkeypatch.delenv(name, raising=False)


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all if s.name == name]

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        if span.parent is None:
            return None
        return next((s for s in self.all if s.context.span_id == span.parent.span_id), None)


@pytest.fixture
def spans() -> Spans:
    return Spans()


# -- settle() while the lease is held frees capacity at once (as the module docstring promises) ---------------
async def test_settle_while_held_frees_capacity_for_a_waiter_at_once() -> None:
    limiter = RateLimiter(default=RateLimit(tokens_per_minute=100), clock=ManualClock())
    granted: list[str] = []
    settle, done = anyio.Event(), anyio.Event()

    async def first() -> None:
        async with limiter.acquire("k", tokens=80) as lease:
            granted.append("first")
            await settle.wait()
            lease.settle(30)  # the usage is known while the response is still being drained
            await done.wait()

    async def second() -> None:
        async with limiter.acquire("k", tokens=60):
            granted.append("second")

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await wait_all_tasks_blocked()
        tg.start_soon(second)
        await wait_all_tasks_blocked()
        assert granted == ["first"] and limiter.statistics()["k"].waiting == 1
        settle.set()
        await wait_all_tasks_blocked()
        # 30 settled + 60 reserved fit in 100 while the first lease is still held.
        assert granted == ["first", "second"]
        assert limiter.statistics()["k"].in_flight == 1
        done.set()
    assert limiter.statistics()["k"].tokens_in_window == 90


# -- a nested MiniAgents(tracing=False) inside a traced call is not traced -------------------------------------
async def test_a_nested_untraced_context_makes_no_llm_spans_and_sends_no_traceparent(spans: Spans) -> None:
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["inner"]), openai_stream(["outer"]))

        @miniagent
        async def outer(ctx: InteractionContext) -> None:
            async with MiniAgents(tracing=False):
                inner = await openai_agent.inquire(
                    "hi", model="inner-model", api_key=KEY, base_url=server.openai_base_url
                )
            ctx.reply(inner)
            ctx.reply(
                openai_agent.inquire("hi", model="outer-model", api_key=KEY, base_url=server.openai_base_url)
            )

        async with MiniAgents(tracing=spans.provider):
            replies = await outer.inquire()
        assert [str(r) for r in replies] == ["inner", "outer"]
        requests = list(server.requests)
    assert [json.loads(r.body)["model"] for r in requests] == ["inner-model", "outer-model"]
    assert "traceparent" not in requests[0].headers  # the untraced context's request
    assert "traceparent" in requests[1].headers
    assert spans.named("chat inner-model") == []
    assert len(spans.named("chat outer-model")) == 1
