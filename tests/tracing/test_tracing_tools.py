"""Function tools an LLM agent runs get ``execute_tool`` spans under its LLM call: status, error type, cancellation,
and their arguments and results only when content capture is opted in."""

from __future__ import annotations

import json

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from tracing_helpers import KEY, Traces, adder

from miniagents import MiniAgents
from miniagents.llms import openai_agent
from miniagents.testing import FakeLLMServer, ToolCall, openai_stream
from miniagents.tracing import TracingOptions

pytestmark = pytest.mark.anyio

#: The tracer the tool code uses for a span of its own (set by the test that looks at it).
USER_TRACER: list[trace.Tracer] = [trace.NoOpTracer()]


async def lookup(term: str) -> str:
    """Look a term up."""
    with USER_TRACER[0].start_as_current_span("user work"):
        await anyio.sleep(0)
    return f"{term}: found"


async def broken(term: str) -> str:
    """Always fails."""
    raise ValueError(f"cannot handle {term}")


def _turns() -> list[object]:
    return [
        openai_stream(
            tool_calls=[
                ToolCall("lookup", {"term": "otel"}, id="call-1"),
                ToolCall("broken", {"term": "x"}, id="call-2"),
                ToolCall("adder", {"a": 2}, id="call-3"),
                ToolCall("missing", {}, id="call-4"),
            ]
        ),
        openai_stream(["Done."]),
    ]


async def test_function_tools_get_execute_tool_spans_under_the_llm_call(traces: Traces) -> None:
    provider = traces.provider
    USER_TRACER[0] = provider.get_tracer("user")
    async with FakeLLMServer.serve() as server:
        server.enqueue(*_turns())  # type: ignore[arg-type]
        assistant = openai_agent.fork(
            alias="assistant",
            model="m",
            api_key=KEY,
            base_url=server.openai_base_url,
            tools=[lookup, broken, adder],
        )
        try:
            async with MiniAgents(tracing=provider):
                replies = await assistant.inquire("go")
        finally:
            USER_TRACER[0] = trace.NoOpTracer()
        assert str(replies[-1]) == "Done."
    call = next(s for s in traces.spans if s.name == "assistant")
    tool_spans = {
        s.attributes["gen_ai.tool.name"]: s for s in traces.spans if s.name.startswith("execute_tool ")
    }
    # Agent tools already have their call span; function tools (and a tool the model made up) get one each.
    assert set(tool_spans) == {"lookup", "broken", "missing"}
    assert [s.name for s in traces.spans].count("adder") == 1
    ok, failed, unknown = tool_spans["lookup"], tool_spans["broken"], tool_spans["missing"]
    for span in tool_spans.values():
        assert span.kind is SpanKind.INTERNAL
        assert traces.parent(span) is call
        assert span.attributes["gen_ai.operation.name"] == "execute_tool"
        assert span.attributes["gen_ai.tool.type"] == "function"
        assert "gen_ai.tool.call.arguments" not in span.attributes  # content only on opt-in
        assert "gen_ai.tool.call.result" not in span.attributes
        assert KEY not in span.to_json()
    assert ok.name == "execute_tool lookup"
    assert ok.attributes["gen_ai.tool.call.id"] == "call-1"
    assert ok.attributes["gen_ai.tool.description"] == "Look a term up."
    assert ok.status.status_code is StatusCode.UNSET and "error.type" not in ok.attributes
    (user_span,) = traces.named("user work")
    assert traces.parent(user_span) is ok  # the tool span is current while the tool runs
    assert failed.attributes["gen_ai.tool.call.id"] == "call-2"
    assert failed.attributes["error.type"] == "ValueError"
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert unknown.attributes["error.type"] == "LookupError"


async def test_tool_arguments_and_results_are_captured_only_on_opt_in(traces: Traces) -> None:
    async with FakeLLMServer.serve() as server:
        server.enqueue(*_turns())  # type: ignore[arg-type]
        tracing = TracingOptions(tracer_provider=traces.provider, capture_message_content=True)
        async with MiniAgents(tracing=tracing):
            await openai_agent.inquire(
                "go", model="m", api_key=KEY, base_url=server.openai_base_url, tools=[lookup, broken, adder]
            )
    (ok,) = traces.named("execute_tool lookup")
    (failed,) = traces.named("execute_tool broken")
    assert json.loads(str(ok.attributes["gen_ai.tool.call.arguments"])) == {"term": "otel"}
    assert ok.attributes["gen_ai.tool.call.result"] == "otel: found"
    assert "gen_ai.tool.call.result" not in failed.attributes  # a result only when the tool succeeded


async def test_a_cancelled_tool_span_ends_once_as_cancelled(traces: Traces) -> None:
    started = anyio.Event()

    async def slow(term: str) -> str:
        """Never finishes."""
        started.set()
        await anyio.sleep_forever()
        return term

    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(tool_calls=[ToolCall("slow", {"term": "t"}, id="c")]))
        async with MiniAgents(tracing=traces.provider):
            call = openai_agent.initiate_call(
                model="m", api_key=KEY, base_url=server.openai_base_url, tools=[slow]
            )
            call.send("go").finish()
            await started.wait()
            call.cancel()
    (span,) = traces.named("execute_tool slow")
    assert span.status.status_code is StatusCode.UNSET
    assert [e.name for e in span.events] == ["miniagents.tool.cancelled"]
