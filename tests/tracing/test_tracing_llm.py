"""LLM requests: GenAI spans under the agent call, traceparent on every HTTP request, no key anywhere."""

from __future__ import annotations

import json

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from tracing_helpers import KEY, Traces, adder

from miniagents import AgentCallCancelledError, InteractionContext, MiniAgents, miniagent
from miniagents.llms import LLMError, anthropic_agent, openai_agent
from miniagents.testing import (
    FakeLLMServer,
    RecordedRequest,
    ToolCall,
    anthropic_stream,
    openai_error,
    openai_stream,
)
from miniagents.tracing import CAPTURE_CONTENT_ENV, TracingOptions

pytestmark = pytest.mark.anyio


def _assert_no_key(traces: Traces) -> None:
    for span in traces.spans:
        assert KEY not in span.to_json(), span.name
        assert KEY[3:20] not in span.to_json(), span.name


def _traceparent(request: RecordedRequest) -> tuple[int, int]:
    version, trace_id, span_id, flags = request.headers["traceparent"].split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return int(trace_id, 16), int(span_id, 16)


def _ids(span: ReadableSpan) -> tuple[int, int]:
    return span.context.trace_id, span.context.span_id


async def test_llm_spans_nest_under_calls_and_tools_and_carry_the_trace_context(traces: Traces) -> None:
    async with FakeLLMServer.serve() as server:

        @miniagent
        async def summarizer(ctx: InteractionContext, text: str) -> None:
            """Summarize a text (with a model of its own)."""
            ctx.reply(openai_agent.inquire(text, model="small", api_key=KEY, base_url=server.openai_base_url))

        server.enqueue(
            openai_stream(
                tool_calls=[
                    ToolCall("summarizer", {"text": "long"}, id="c1"),
                    ToolCall("adder", {"a": 2}, id="c2"),
                ],
                model="big-2025",
                completion_id="chatcmpl-1",
                usage={"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37},
            ),
            openai_stream(["short"], model="small-2025", completion_id="chatcmpl-inner"),
            openai_stream(["Done."], model="big-2025", completion_id="chatcmpl-2"),
        )
        assistant = openai_agent.fork(
            alias="assistant",
            model="big",
            api_key=KEY,
            base_url=server.openai_base_url,
            tools=[summarizer, adder],
            temperature=0.5,
            top_p=0.9,
            max_tokens=100,
            stop=["END"],
        )
        async with MiniAgents(tracing=traces.provider):
            replies = await assistant.inquire("hi")
        assert str(replies[-1]) == "Done."
        requests = list(server.requests)
    assert len(requests) == 3
    call = traces.one("assistant")
    outer_chats = traces.named("chat big")
    (inner_chat,) = traces.named("chat small")
    summarizer_span, adder_span = traces.one("summarizer"), traces.one("adder")
    inner_call = traces.one("openai_agent")
    assert len(outer_chats) == 2
    assert all(traces.parent(chat) is call for chat in outer_chats)
    # Tool calls run in child tasks of the LLM agent's call: their calls are its children...
    assert traces.parent(summarizer_span) is call and traces.parent(adder_span) is call
    # ...and a model request made inside a tool nests under the tool's call.
    assert traces.parent(inner_call) is summarizer_span
    assert traces.parent(inner_chat) is inner_call
    assert len({s.context.trace_id for s in traces.spans}) == 1
    # Every HTTP request carried the trace context of its own chat span.
    chats = {_ids(span): span for span in [*outer_chats, inner_chat]}
    assert sorted(_traceparent(r) for r in requests) == sorted(chats)
    first = chats[_traceparent(requests[0])]
    assert first.kind is SpanKind.CLIENT
    assert first.status.status_code is StatusCode.UNSET
    assert dict(first.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "big",
        "gen_ai.request.max_tokens": 100,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.stop_sequences": ("END",),
        "server.address": "127.0.0.1",
        "server.port": server.port,
        "gen_ai.response.model": "big-2025",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("tool_calls",),
        "gen_ai.usage.input_tokens": 30,
        "gen_ai.usage.output_tokens": 7,
    }
    assert chats[_traceparent(requests[1])] is inner_chat
    assert inner_chat.attributes["gen_ai.response.id"] == "chatcmpl-inner"
    _assert_no_key(traces)


async def test_anthropic_spans(traces: Traces) -> None:
    async with FakeLLMServer.serve() as server, MiniAgents(tracing=traces.provider):
        server.enqueue(anthropic_stream(["Hi"], model="claude-x-1", message_id="msg_1", input_tokens=12))
        await anthropic_agent.inquire("hi", model="claude-x", api_key=KEY, base_url=server.anthropic_base_url)
        request = server.requests[0]
    chat = traces.one("chat claude-x")
    assert _traceparent(request) == _ids(chat)
    assert traces.parent(chat) is traces.one("anthropic_agent")
    attributes = chat.attributes
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["gen_ai.response.model"] == "claude-x-1"
    assert attributes["gen_ai.response.id"] == "msg_1"
    assert attributes["gen_ai.response.finish_reasons"] == ("end_turn",)
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert isinstance(attributes["gen_ai.usage.output_tokens"], int)
    _assert_no_key(traces)


async def test_one_span_covers_the_retries_of_a_request(traces: Traces) -> None:
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_error(500, "try later"), openai_stream(["ok"]))
        async with MiniAgents(tracing=traces.provider):
            replies = openai_agent.inquire(
                "hi",
                model="m",
                api_key=KEY,
                base_url=server.openai_base_url,
                retry_policy={"initial_delay": 0},
            )
            assert [str(m) for m in await replies] == ["ok"]
        requests = list(server.requests)
    assert len(requests) == 2
    chat = traces.one("chat m")
    assert {_traceparent(r) for r in requests} == {_ids(chat)}
    assert chat.status.status_code is StatusCode.UNSET
    assert "error.type" not in chat.attributes


async def test_a_failed_request_sets_error_type_and_status_and_never_the_key(traces: Traces) -> None:
    async with FakeLLMServer.serve(expected_api_key="sk-the-right-one") as server:
        with pytest.raises(LLMError) as raised:
            async with MiniAgents(tracing=traces.provider):
                await openai_agent.inquire("hi", model="m", api_key=KEY, base_url=server.openai_base_url)
    chat = traces.one("chat m")
    assert chat.status.status_code is StatusCode.ERROR
    assert chat.attributes["error.type"] == type(raised.value).__name__ == "AuthenticationError"
    assert [e.name for e in chat.events] == ["exception"]
    call = traces.one("openai_agent")
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes["miniagents.call.outcome"] == "failed"
    _assert_no_key(traces)


async def test_a_failure_after_streamed_tokens_is_recorded_on_the_request_span(traces: Traces) -> None:
    async with FakeLLMServer.serve() as server:
        server.enqueue(
            openai_stream(["par", "tial"], error={"message": "overloaded", "type": "server_error"})
        )
        async with MiniAgents(tracing=traces.provider):
            replies = openai_agent.inquire("hi", model="m", api_key=KEY, base_url=server.openai_base_url)
            with pytest.raises(LLMError):
                await replies
    chat = traces.one("chat m")
    assert chat.status.status_code is StatusCode.ERROR
    assert "error.type" in chat.attributes
    assert "gen_ai.response.id" not in chat.attributes
    _assert_no_key(traces)


async def test_a_cancelled_request_is_recorded_as_cancelled(traces: Traces) -> None:
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["a", "b", "c"], hang_after=2))
        async with MiniAgents(tracing=traces.provider):
            call = openai_agent.initiate_call(model="m", api_key=KEY, base_url=server.openai_base_url)
            call.send("hi").finish()
            async for promise in call.reply_sequence().promises():
                async for _ in promise:
                    call.cancel()
                    break
                break
            with pytest.raises(AgentCallCancelledError):
                await call.reply_sequence()
    chat = traces.one("chat m")
    assert chat.status.status_code is StatusCode.UNSET
    assert [e.name for e in chat.events] == ["miniagents.request.cancelled"]
    assert traces.one("openai_agent").attributes["miniagents.call.outcome"] == "cancelled"


def _content_attributes(span: ReadableSpan) -> dict[str, object]:
    return {
        key: json.loads(str(value))
        for key, value in (span.attributes or {}).items()
        if key in ("gen_ai.system_instructions", "gen_ai.input.messages", "gen_ai.output.messages")
    }


async def _ask_with_tool_history(traces: Traces, tracing: object) -> ReadableSpan:
    turn = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "name": "adder", "arguments": '{"a": 1}'}],
    }
    result = {"role": "tool", "content": "sum=1", "tool_call_id": "c1"}
    async with FakeLLMServer.serve() as server, MiniAgents(tracing=tracing):
        server.enqueue(openai_stream(["It is ", "1."]))
        await openai_agent.inquire(
            ["what is 1+0?", turn, result],
            model="m",
            system="Be brief.",
            api_key=KEY,
            base_url=server.openai_base_url,
        )
    return traces.one("chat m")


async def test_content_is_not_captured_by_default(traces: Traces) -> None:
    chat = await _ask_with_tool_history(traces, traces.provider)
    assert _content_attributes(chat) == {}
    assert "what is" not in chat.to_json() and "It is" not in chat.to_json()


@pytest.mark.parametrize("opt_in", ["option", "environment"])
async def test_content_is_captured_when_the_user_opts_in(
    traces: Traces, opt_in: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if opt_in == "option":
        tracing: object = TracingOptions(tracer_provider=traces.provider, capture_message_content=True)
    else:
        monkeypatch.setenv(CAPTURE_CONTENT_ENV, "true")
        tracing = traces.provider
    chat = await _ask_with_tool_history(traces, tracing)
    assert _content_attributes(chat) == {
        "gen_ai.system_instructions": [{"type": "text", "content": "Be brief."}],
        "gen_ai.input.messages": [
            {"role": "user", "parts": [{"type": "text", "content": "what is 1+0?"}]},
            {
                "role": "assistant",
                "parts": [{"type": "tool_call", "id": "c1", "name": "adder", "arguments": {"a": 1}}],
            },
            {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "sum=1"}]},
        ],
        "gen_ai.output.messages": [
            {"role": "assistant", "parts": [{"type": "text", "content": "It is 1."}], "finish_reason": "stop"}
        ],
    }
    _assert_no_key(traces)


async def test_option_false_wins_over_the_environment(
    traces: Traces, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CAPTURE_CONTENT_ENV, "true")
    chat = await _ask_with_tool_history(
        traces, TracingOptions(tracer_provider=traces.provider, capture_message_content=False)
    )
    assert _content_attributes(chat) == {}


async def test_untraced_requests_carry_no_traceparent() -> None:
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["a"]))
        async with MiniAgents(tracing=False):
            await openai_agent.inquire("hi", model="m", api_key=KEY, base_url=server.openai_base_url)
        assert "traceparent" not in server.requests[0].headers


async def test_a_nested_untraced_context_makes_no_llm_spans_and_sends_no_traceparent(traces: Traces) -> None:
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

        async with MiniAgents(tracing=traces.provider):
            replies = await outer.inquire()
        assert [str(r) for r in replies] == ["inner", "outer"]
        requests = list(server.requests)
    assert [json.loads(r.body)["model"] for r in requests] == ["inner-model", "outer-model"]
    assert "traceparent" not in requests[0].headers  # the untraced context's request
    assert "traceparent" in requests[1].headers
    assert traces.named("chat inner-model") == []
    assert len(traces.named("chat outer-model")) == 1


async def test_a_slow_request_is_one_span_even_when_the_consumer_gives_up(traces: Traces) -> None:
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["a", "b"], hang_after=1))
        with anyio.move_on_after(5) as scope:
            async with MiniAgents(tracing=traces.provider):
                replies = openai_agent.inquire("hi", model="m", api_key=KEY, base_url=server.openai_base_url)
                await server.wait_for_requests(1)
                scope.cancel()
                await replies
    assert scope.cancelled_caught
    assert len(traces.named("chat m")) == 1
    assert all(span.end_time is not None for span in traces.spans)
