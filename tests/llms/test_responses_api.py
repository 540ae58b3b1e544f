"""openai_agent(api="responses"): the OpenAI Responses API over real sockets against FakeLLMServer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llm_helpers import DEADLINE, collect, failure_of

from miniagents import AgentCallCancelledError, InteractionContext, MiniAgents, TextMessage, miniagent
from miniagents.llms import (
    AuthenticationError,
    BadRequestError,
    ContextLengthError,
    LLMError,
    RateLimitError,
    ServerError,
    Tool,
    TruncatedStreamError,
    anthropic_agent,
    openai_agent,
)
from miniagents.llms._common import parse_options
from miniagents.llms._openai_responses import ResponsesSpec
from miniagents.llms._sse import SSEDecoder
from miniagents.testing import (
    Cassette,
    FakeLLMServer,
    Gate,
    ToolCall,
    openai_error,
    responses_stream,
)

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-responses-0123456789"


def opts(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {
        "model": "gpt-test",
        "api": "responses",
        "base_url": server.openai_base_url,
        "api_key": KEY,
        **kwargs,
    }


async def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


# -- streaming and request mapping --------------------------------------------------------------------------------
async def test_output_text_streams_as_tokens_before_the_response_completes(server: FakeLLMServer) -> None:
    gate = Gate()
    # Events: created, in_progress, output_item.added, content_part.added, delta "Hel", [gate], delta "lo", ...
    server.enqueue(responses_stream(["Hel", "lo"], gate=gate, gate_after=5))
    async with MiniAgents():
        replies = openai_agent.inquire("hi", **opts(server))
        promise = await anext(aiter(replies.promises()))
        tokens = aiter(promise)
        with anyio.fail_after(DEADLINE):
            assert await anext(tokens) == "Hel"
        assert not server.requests[0].finished  # the first token arrived while the server was still streaming
        gate.open()
        assert [t async for t in tokens] == ["lo"]
        reply = await promise
    assert str(reply) == "Hello"
    assert server.requests[0].path == "/v1/responses"


async def test_the_request_maps_options_and_conversation_to_the_responses_body(server: FakeLLMServer) -> None:
    server.enqueue(responses_stream("ok"))
    history = [
        TextMessage(content="Be terse.", role="developer"),
        TextMessage(content="Weather in Paris?"),
        TextMessage(
            content="Let me check.",
            role="assistant",
            tool_calls=[{"id": "call_1", "name": "weather", "arguments": '{"city": "Paris"}'}],
            reasoning_items=[
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "enc-1"},
                {"type": "reasoning", "id": "rs_2", "summary": []},  # not sendable without its stored copy
            ],
        ),
        TextMessage(content="sunny in Paris", role="tool", tool_call_id="call_1", tool_name="weather"),
        TextMessage(
            content="", role="assistant", tool_calls=[{"id": "call_2", "name": "weather", "arguments": "{}"}]
        ),
        TextMessage(content="rainy", role="tool", tool_call_id="call_2"),
        TextMessage(content="And tomorrow?"),
    ]
    async with MiniAgents():
        await openai_agent.inquire(
            history,
            **opts(
                server,
                system="You are a weather bot.",
                temperature=0.2,
                top_p=0.9,
                max_tokens=64,
                tools=[weather],
                tool_choice="weather",
                parallel_tool_calls=False,
                extra_body={"reasoning": {"effort": "low", "summary": "auto"}, "store": False},
            ),
        )
    request = server.requests[0]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json == {
        "model": "gpt-test",
        "input": [
            {"type": "message", "role": "developer", "content": "Be terse."},
            {"type": "message", "role": "user", "content": "Weather in Paris?"},
            {"type": "reasoning", "summary": [], "encrypted_content": "enc-1", "id": "rs_1"},
            {"type": "message", "role": "assistant", "content": "Let me check."},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny in Paris"},
            {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_2", "output": "rainy"},
            {"type": "message", "role": "user", "content": "And tomorrow?"},
        ],
        "stream": True,
        "instructions": "You are a weather bot.",
        "temperature": 0.2,
        "top_p": 0.9,
        "max_output_tokens": 64,
        "tools": [
            {
                "type": "function",
                "name": "weather",
                "description": "The weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
                "strict": False,
            }
        ],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False,
        "reasoning": {"effort": "low", "summary": "auto"},
        "store": False,
    }
    assert request.validation_error is None


@pytest.mark.parametrize(
    ("choice", "sent"),
    [("auto", "auto"), ("none", "none"), ("required", "required"), ("any", "required")],
)
async def test_tool_choice_words_map_to_the_responses_values(
    server: FakeLLMServer, choice: str, sent: str
) -> None:
    server.enqueue(responses_stream("ok"))
    async with MiniAgents():
        await openai_agent.inquire("q", **opts(server, tools=[weather], tool_choice=choice))
    assert server.requests[0].json["tool_choice"] == sent


# -- the tool loop ------------------------------------------------------------------------------------------------
async def test_a_function_call_runs_and_its_output_goes_back_as_function_call_output(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        responses_stream(tool_calls=[ToolCall("weather", {"city": "Paris"}, id="call_A", fragment_size=4)]),
        responses_stream(["It is ", "sunny."], response_id="resp_2"),
    )
    async with MiniAgents():
        replies = await openai_agent.inquire("Weather in Paris?", **opts(server, tools=[weather]))
    assert [m.get("role") for m in replies] == ["assistant", "tool", "assistant"]
    call_turn, result, answer = replies
    assert call_turn.get("tool_calls") == (
        {"id": "call_A", "name": "weather", "arguments": '{"city": "Paris"}'},
    )
    assert call_turn.get("finish_reason") == "tool_calls"
    assert (str(result), result.get("tool_call_id"), result.get("is_error")) == (
        "sunny in Paris",
        "call_A",
        False,
    )
    assert (
        str(answer) == "It is sunny."
        and answer.get("finish_reason") == "stop"
        and answer.get("response_id") == "resp_2"
    )
    second = server.requests[1].json["input"]
    assert second == [
        {"type": "message", "role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_A", "name": "weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_A", "output": "sunny in Paris"},
    ]
    assert all(r.validation_error is None for r in server.requests)


async def test_parallel_function_calls_run_concurrently_and_their_outputs_keep_the_call_order(
    server: FakeLLMServer,
) -> None:
    started = {"a": anyio.Event(), "b": anyio.Event()}

    async def wait_for_both(name: str) -> str:
        started[name].set()
        with anyio.fail_after(DEADLINE):  # each waits for the other: they can only finish if run concurrently
            await started["b" if name == "a" else "a"].wait()
        return f"done {name}"

    tool = Tool("both", "Waits for its twin.", {"type": "object"}, lambda args: wait_for_both(args["name"]))
    server.enqueue(
        responses_stream(
            tool_calls=[
                ToolCall("both", {"name": "a"}, id="call_a"),
                ToolCall("both", {"name": "b"}, id="call_b"),
            ]
        ),
        responses_stream("both done"),
    )
    async with MiniAgents():
        replies = await openai_agent.inquire("go", **opts(server, tools=[tool]))
    assert [c["id"] for c in replies[0].get("tool_calls")] == ["call_a", "call_b"]
    outputs = [i for i in server.requests[1].json["input"] if i["type"] == "function_call_output"]
    assert outputs == [
        {"type": "function_call_output", "call_id": "call_a", "output": "done a"},
        {"type": "function_call_output", "call_id": "call_b", "output": "done b"},
    ]
    assert str(replies[-1]) == "both done"


# -- reasoning, usage, ids, finish reasons ------------------------------------------------------------------------
async def test_the_reasoning_summary_is_kept_apart_from_the_text_and_encrypted_items_go_back(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        responses_stream(
            tool_calls=[ToolCall("weather", {"city": "Oslo"}, id="call_1")],
            reasoning=[["The user ", "wants weather."], "Call the tool."],
            encrypted_reasoning="gAAAA-opaque",
        ),
        responses_stream(["Cold."]),
    )
    async with MiniAgents():
        replies = openai_agent.inquire(
            "Weather in Oslo?",
            **opts(
                server,
                tools=[weather],
                extra_body={"include": ["reasoning.encrypted_content"], "store": False},
            ),
        )
        tokens = []
        async for promise in replies.promises():
            tokens.append([t async for t in promise])
        messages = await replies
    first = messages[0]
    assert first.get("reasoning") == "The user wants weather.\n\nCall the tool."
    assert first.get("reasoning_items") == (
        {
            "id": "rs_fake_0",
            "type": "reasoning",
            "summary": (
                {"type": "summary_text", "text": "The user wants weather."},
                {"type": "summary_text", "text": "Call the tool."},
            ),
            "encrypted_content": "gAAAA-opaque",
        },
    )
    assert tokens[0] == [] and tokens[-1] == ["Cold."]  # reasoning is never streamed as text
    sent_back = server.requests[1].json["input"][1]
    assert sent_back == {
        "type": "reasoning",
        "summary": [
            {"type": "summary_text", "text": "The user wants weather."},
            {"type": "summary_text", "text": "Call the tool."},
        ],
        "encrypted_content": "gAAAA-opaque",
        "id": "rs_fake_0",
    }
    assert server.requests[1].validation_error is None
    assert messages[-1].get("reasoning") is None


async def test_a_reasoning_item_without_encrypted_content_is_not_sent_back(server: FakeLLMServer) -> None:
    server.enqueue(
        responses_stream(tool_calls=[ToolCall("weather", {"city": "Rome"})], reasoning=["Thinking."]),
        responses_stream("Warm."),
    )
    async with MiniAgents():
        replies = await openai_agent.inquire(
            "q", **opts(server, tools=[weather], extra_body={"store": False})
        )
    assert replies[0].get("reasoning") == "Thinking."
    assert [i["type"] for i in server.requests[1].json["input"]] == [
        "message",
        "function_call",
        "function_call_output",
    ]
    assert (
        server.requests[1].validation_error is None
    )  # the fake rejects unstored reasoning ids, as the API does


async def test_usage_ids_model_and_finish_reason_are_the_reply_fields(server: FakeLLMServer) -> None:
    usage = {
        "input_tokens": 40,
        "input_tokens_details": {"cached_tokens": 32},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 49,
    }
    server.enqueue(
        responses_stream(
            ["Hi"], usage=usage, model="gpt-test-2026-01-01", response_id="resp_abc", request_id="req_xyz"
        )
    )
    async with MiniAgents():
        (reply,) = await openai_agent.inquire("q", **opts(server))
    assert reply.role == "assistant" and reply.provider == "openai"
    assert reply.model == "gpt-test-2026-01-01"
    assert (reply.response_id, reply.request_id, reply.finish_reason) == ("resp_abc", "req_xyz", "stop")
    assert reply.usage == usage
    assert reply.get("reasoning") is None and reply.get("tool_calls") is None


async def test_an_incomplete_response_cut_by_max_output_tokens_finishes_with_length(
    server: FakeLLMServer,
) -> None:
    server.enqueue(responses_stream(["Once ", "upon"], incomplete="max_output_tokens"))
    async with MiniAgents():
        (reply,) = await openai_agent.inquire("tell a story", **opts(server, max_tokens=16))
    assert server.requests[0].json["max_output_tokens"] == 16
    assert (str(reply), reply.finish_reason) == ("Once upon", "length")


async def test_function_calls_cut_by_max_output_tokens_are_not_run(server: FakeLLMServer) -> None:
    ran = []

    async def record(city: str) -> str:
        ran.append(city)
        return "x"

    server.enqueue(
        responses_stream(
            tool_calls=[ToolCall("record", '{"city": "Par', id="call_cut")], incomplete="max_output_tokens"
        )
    )
    async with MiniAgents():
        replies = await openai_agent.inquire("q", **opts(server, tools=[record], max_tokens=16))
    assert len(replies) == 1 and ran == []
    assert replies[0].get("finish_reason") == "length" and replies[0].get("tool_calls") is None
    assert replies[0].get("incomplete_tool_calls") == (
        {"id": "call_cut", "name": "record", "arguments": '{"city": "Par'},
    )
    assert len(server.requests) == 1


async def test_an_incomplete_response_for_another_reason_reports_that_reason(server: FakeLLMServer) -> None:
    server.enqueue(responses_stream(["Par"], incomplete="content_filter"))
    async with MiniAgents():
        (reply,) = await openai_agent.inquire("q", **opts(server))
    assert reply.finish_reason == "content_filter"


async def test_a_refusal_is_kept_in_the_refusal_field(server: FakeLLMServer) -> None:
    server.enqueue(responses_stream(refusal="I can't help with that."))
    async with MiniAgents():
        (reply,) = await openai_agent.inquire("q", **opts(server))
    assert (str(reply), reply.refusal, reply.finish_reason) == ("", "I can't help with that.", "stop")


async def test_a_rate_limiter_reserves_max_output_tokens_and_settles_to_the_responses_usage(
    server: FakeLLMServer,
) -> None:
    from miniagents import RateLimit, RateLimiter

    limiter = RateLimiter(default=RateLimit(tokens_per_minute=100_000))
    gate = Gate()
    usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}
    server.enqueue(responses_stream(["a", "b"], gate=gate, usage=usage))
    async with MiniAgents(rate_limiter=limiter):
        reply = openai_agent.inquire("hello there", **opts(server, max_tokens=500))
        await server.wait_for_requests(1)
        with anyio.fail_after(DEADLINE):
            while limiter.statistics()[("openai", "gpt-test")].in_flight != 1:
                await anyio.sleep(0.001)
        body = server.requests[0].body
        assert json.loads(body)["max_output_tokens"] == 500
        assert limiter.statistics()[("openai", "gpt-test")].tokens_in_window == len(body) // 4 + 500
        gate.open()
        await reply
    assert limiter.statistics()[("openai", "gpt-test")].tokens_in_window == 5


# -- errors -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failure", "cls"),
    [
        ({"code": "server_error", "message": "The server had an error."}, ServerError),
        ({"code": "rate_limit_exceeded", "message": "Slow down."}, RateLimitError),
        ({"code": "context_length_exceeded", "message": "Too long."}, ContextLengthError),
    ],
)
async def test_response_failed_raises_the_typed_error_with_the_request_id(
    server: FakeLLMServer, failure: dict[str, str], cls: type[LLMError]
) -> None:
    server.enqueue(responses_stream(failed=failure, request_id="req_failed_1"))
    async with MiniAgents():
        error = await failure_of(openai_agent.inquire("q", **opts(server)))
    assert type(error) is cls
    assert isinstance(error, LLMError)
    assert (error.request_id, error.code, error.status, error.provider) == (
        "req_failed_1",
        failure["code"],
        None,
        "openai",
    )
    assert error.message == failure["message"]
    assert error.body == failure  # the error, not the response object (which echoes the request)
    assert len(server.requests) == 1  # a stream that started is never retried


async def test_an_error_event_after_tokens_fails_the_message_after_its_tokens(server: FakeLLMServer) -> None:
    server.enqueue(
        responses_stream(["partial ", "text"], error={"code": "rate_limit_exceeded", "message": "Slow down."})
    )
    seen: list[str] = []
    async with MiniAgents():
        replies = openai_agent.inquire("q", **opts(server))
        promise = await anext(aiter(replies.promises()))
        with pytest.raises(RateLimitError) as caught:
            await collect(promise, seen)
        with pytest.raises(RateLimitError):
            await replies
    assert seen == ["partial ", "text"]
    assert caught.value.request_id == "req_fake_openai" and caught.value.message == "Slow down."
    assert "req_fake_openai" in str(caught.value)


async def test_an_error_event_nested_under_error_is_understood(server: FakeLLMServer) -> None:
    from miniagents.testing import SSE, ScriptedResponse

    nested = SSE(
        {
            "type": "error",
            "sequence_number": 0,
            "error": {"type": "invalid_request_error", "message": "Bad."},
        },
        event="error",
    )
    server.enqueue(
        ScriptedResponse(headers={"content-type": "text/event-stream", "x-request-id": "r9"}, body=[nested])
    )
    async with MiniAgents():
        error = await failure_of(openai_agent.inquire("q", **opts(server)))
    assert isinstance(error, BadRequestError)
    assert (error.message, error.error_type, error.request_id) == ("Bad.", "invalid_request_error", "r9")


async def test_an_http_error_of_the_responses_endpoint_is_typed(server: FakeLLMServer) -> None:
    server.enqueue(openai_error(401, "Incorrect API key provided.", request_id="req_401"))
    async with MiniAgents():
        error = await failure_of(openai_agent.inquire("q", **opts(server)))
    assert isinstance(error, AuthenticationError)
    assert (error.status, error.request_id) == (401, "req_401")
    assert KEY not in str(error) and KEY not in repr(error)


@pytest.mark.parametrize("how", ["truncate", "abort"])
async def test_a_stream_cut_before_response_completed_raises_truncated_stream_error(
    server: FakeLLMServer, how: str
) -> None:
    server.enqueue(responses_stream(["a", "b"], **{how: True}))
    async with MiniAgents():
        replies = openai_agent.inquire("q", **opts(server))
        promise = await anext(aiter(replies.promises()))
        with pytest.raises(TruncatedStreamError) as caught:
            async for _ in promise:
                pass
    assert caught.value.request_id == "req_fake_openai"
    if how == "truncate":
        assert "without response.completed" in caught.value.message


async def test_the_fake_server_rejects_what_the_responses_api_rejects(server: FakeLLMServer) -> None:
    async with MiniAgents():
        error = await failure_of(
            openai_agent.inquire(
                [TextMessage(content="orphan", role="tool", tool_call_id="call_missing")], **opts(server)
            )
        )
        assert isinstance(error, BadRequestError)
        assert "No tool call found for function call output with call_id call_missing" in error.message
        error = await failure_of(openai_agent.inquire("q", **opts(server, max_tokens=8)))
        assert isinstance(error, BadRequestError) and "max_output_tokens" in error.message
        error = await failure_of(openai_agent.inquire("q", **opts(server, extra_body={"messages": []})))
        assert isinstance(error, BadRequestError) and "Unsupported parameter: 'messages'" in error.message
    assert [r.validation_error is not None for r in server.requests] == [True, True, True]


# -- options ------------------------------------------------------------------------------------------------------
async def test_an_unknown_api_value_is_refused_naming_the_agent_and_the_values() -> None:
    async with MiniAgents():
        with pytest.raises(
            ValueError, match=r"agent 'openai_agent': api must be one of 'chat_completions', 'responses'"
        ):
            openai_agent.inquire("q", model="m", api="response")
        with pytest.raises(ValueError, match=r"agent 'mine': api must be one of"):
            openai_agent.fork(alias="mine", api="assistants")


async def test_stop_is_refused_with_the_responses_api() -> None:
    async with MiniAgents():
        with pytest.raises(
            ValueError, match=r"agent 'openai_agent': stop is not supported by the OpenAI Responses"
        ):
            openai_agent.inquire("q", model="m", api="responses", stop=["END"])
        forked = openai_agent.fork(api="responses", model="m")
        error = await failure_of(forked.inquire("q", stop="END"))
        assert isinstance(error, ValueError) and "stop is not supported" in str(error)


async def test_anthropic_agent_refuses_the_api_option() -> None:
    async with MiniAgents():
        with pytest.raises(ValueError, match=r"agent 'anthropic_agent': the api option is for openai_agent"):
            anthropic_agent.inquire("q", model="m", api="responses")


async def test_chat_completions_stays_the_default(server: FakeLLMServer) -> None:
    from miniagents.testing import openai_stream

    server.enqueue(openai_stream("chat"), responses_stream("responses"))
    async with MiniAgents():
        chat = await openai_agent.inquire("q", model="m", base_url=server.openai_base_url, api_key=KEY)
        explicit = await openai_agent.inquire("q", **opts(server))
    assert [r.path for r in server.requests] == ["/v1/chat/completions", "/v1/responses"]
    assert (str(chat[0]), str(explicit[0])) == ("chat", "responses")


# -- cancellation -------------------------------------------------------------------------------------------------
async def test_cancelling_the_call_mid_stream_closes_the_http_stream(server: FakeLLMServer) -> None:
    server.enqueue(responses_stream(["tok", "never"], hang_after=5))  # hangs right after the first delta
    async with MiniAgents():
        call = openai_agent.initiate_call(**opts(server)).send("q")
        replies = call.reply_sequence()
        promise = await anext(aiter(replies.promises()))
        assert await anext(aiter(promise)) == "tok"
        call.cancel()
        with pytest.raises(AgentCallCancelledError):
            await replies
        with anyio.fail_after(DEADLINE):
            await server.requests[0].wait_disconnected()
    assert not server.requests[0].response_complete


TOKENS = ["Grüß", " Gott", " — ", "日本語", " 🎉", "\n", "done"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(after=st.integers(min_value=1, max_value=len(TOKENS)))
async def test_cancelling_after_any_token_closes_the_stream_and_keeps_exactly_the_tokens_seen(
    server: FakeLLMServer, after: int
) -> None:
    # The server stops after `after` deltas (created, in_progress, item and part added come first) and waits.
    server.enqueue(responses_stream(TOKENS, hang_after=4 + after))
    seen: list[str] = []
    with anyio.CancelScope() as scope:
        async with MiniAgents():
            replies = openai_agent.inquire("q", **opts(server))
            async for promise in replies.promises():
                async for token in promise:
                    seen.append(token)
                    if len(seen) == after:
                        scope.cancel()
    assert scope.cancelled_caught
    assert seen == TOKENS[:after]
    with anyio.fail_after(DEADLINE):
        await server.requests[-1].wait_disconnected()
    assert not server.requests[-1].response_complete


# -- chunking properties ------------------------------------------------------------------------------------------
def _decode(chunks: list[bytes]) -> tuple[list[str], dict[str, Any], list[Any]]:
    decoder = ResponsesSpec().decoder(parse_options("test", {"model": "m"}), "req")
    sse = SSEDecoder()
    tokens = [t for chunk in chunks for event in sse.feed(chunk) for t in decoder.feed(event)]
    tokens += [t for event in sse.close() for t in decoder.feed(event)]
    assert decoder.finished
    fields, calls = decoder.result()
    return tokens, fields, calls


def _split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(raw)) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


@given(
    text=st.text(min_size=1, max_size=40),
    splits=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=8000), max_size=30),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    fragment_size=st.integers(min_value=1, max_value=9),
)
def test_any_split_into_deltas_and_any_chunking_of_the_bytes_give_the_same_message(
    text: str, splits: list[int], cuts: list[int], newline: str, fragment_size: int
) -> None:
    points = sorted({min(s, len(text)) for s in splits})
    deltas = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True) if b > a]
    call = ToolCall("lookup", {"q": text}, id="call_1", fragment_size=fragment_size)
    reference = responses_stream([text], tool_calls=[call], reasoning=[text], usage={"total_tokens": 3})
    scripted = responses_stream(
        deltas, tool_calls=[call], reasoning=[deltas], usage={"total_tokens": 3}, newline=newline
    )
    expected_tokens, expected_fields, expected_calls = _decode([reference.body_bytes()])
    tokens, fields, calls = _decode(_split(scripted.body_bytes(), cuts))
    assert "".join(tokens) == "".join(expected_tokens) == text
    assert tokens == deltas
    assert fields == expected_fields
    assert fields["reasoning"] == text and fields["finish_reason"] == "tool_calls"
    assert calls == expected_calls and json.loads(calls[0].arguments) == {"q": text}


# -- tracing and cassettes ----------------------------------------------------------------------------------------
async def test_a_responses_call_is_traced_with_its_usage_response_id_and_finish_reason(
    server: FakeLLMServer,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    usage = {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 8},
        "output_tokens": 5,
        "total_tokens": 25,
    }
    server.enqueue(responses_stream(["traced"], usage=usage, response_id="resp_traced", model="gpt-test-v2"))
    async with MiniAgents(tracing=provider):
        await openai_agent.inquire("q", **opts(server))
    (chat,) = [s for s in exporter.get_finished_spans() if s.name == "chat gpt-test"]
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.response.model"] == "gpt-test-v2"
    assert attributes["gen_ai.response.id"] == "resp_traced"
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (20, 5)
    assert "traceparent" in server.requests[0].headers
    assert KEY not in chat.to_json()
    provider.shutdown()


@miniagent
async def _weather_assistant(ctx: InteractionContext, base_url: str, api_key: str) -> None:
    ctx.reply(
        openai_agent.inquire(
            ctx.messages,
            model="gpt-test",
            api="responses",
            base_url=base_url,
            api_key=api_key,
            tools=[weather],
        )
    )


async def test_a_cassette_records_and_replays_responses_calls_offline(tmp_path: Path) -> None:
    path = tmp_path / "responses.jsonl"

    async def run(base_url: str) -> list[tuple[list[str], dict[str, Any]]]:
        async with MiniAgents():
            replies = _weather_assistant.inquire("Weather in Paris?", base_url=base_url, api_key=KEY)
            seen = []
            async for promise in replies.promises():
                tokens = [t async for t in promise]
                message = await promise
                seen.append((tokens, {**message.extra_fields, "text": str(message)}))
            return seen

    async with FakeLLMServer.serve() as server:
        server.enqueue(
            responses_stream(
                tool_calls=[ToolCall("weather", {"city": "Paris"}, id="call_1")], reasoning=["Hm."]
            ),
            responses_stream(["Sunny ", "in Paris."]),
        )
        async with Cassette(path, mode="record"):
            live = await run(server.openai_base_url)
    assert [fields["role"] for _, fields in live] == ["assistant", "tool", "assistant"]
    assert live[-1][0] == ["Sunny ", "in Paris."]
    assert KEY not in path.read_text(encoding="utf-8")
    async with Cassette(path, mode="replay") as cassette:
        replayed = await run("http://127.0.0.1:9/v1")  # nothing listens there: only the cassette can answer
    assert replayed == live
    assert (cassette.statistics().replayed, cassette.statistics().unmatched) == (2, 0)


# -- working with the other LLM options -----------------------------------------------------------------------------
async def test_reply_reasoning_streams_the_summary_as_its_own_message_before_the_answer(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        responses_stream(["Cold."], reasoning=[["The user ", "wants weather."], "Answer briefly."])
    )
    async with MiniAgents():
        replies = openai_agent.inquire("Weather?", **opts(server, reply_reasoning=True))
        streams = []
        async for promise in replies.promises():
            streams.append([t async for t in promise])
        messages = await replies
    assert [m.get("role") for m in messages] == ["reasoning", "assistant"]
    assert streams[0] == ["The user ", "wants weather.", "\n\n", "Answer briefly."]
    assert "".join(streams[0]) == messages[1].get("reasoning")
    assert streams[1] == ["Cold."]


async def test_reasoning_messages_in_the_history_are_not_sent_as_user_turns(server: FakeLLMServer) -> None:
    server.enqueue(responses_stream(["ok"]))
    history = [
        TextMessage("Weather?"),
        TextMessage("thinking about it", role="reasoning"),
        TextMessage("Cold.", role="assistant"),
        TextMessage("Thanks"),
    ]
    async with MiniAgents():
        await openai_agent.inquire(history, **opts(server))
    assert server.requests[0].json["input"] == [
        {"type": "message", "role": "user", "content": "Weather?"},
        {"type": "message", "role": "assistant", "content": "Cold."},
        {"type": "message", "role": "user", "content": "Thanks"},
    ]


async def test_image_and_document_parts_become_responses_input_content(server: FakeLLMServer) -> None:
    from miniagents.llms import DocumentPart, ImagePart, user_message

    png = b"\x89PNG\r\n\x1a\n" + bytes(8)
    server.enqueue(responses_stream(["A chart."]))
    question = user_message(
        "What is this?",
        ImagePart(url="https://example.com/chart.png", detail="high"),
        ImagePart(data=png),
        DocumentPart(data=b"%PDF-1.7\n", filename="report.pdf"),
    )
    async with MiniAgents():
        await openai_agent.inquire(question, **opts(server))
    (request,) = server.requests
    assert request.validation_error is None
    assert request.json["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://example.com/chart.png", "detail": "high"},
                {
                    "type": "input_image",
                    "image_url": "data:image/png;base64,iVBORw0KGgoAAAAAAAAAAA==",
                    "detail": "auto",
                },
                {
                    "type": "input_file",
                    "filename": "report.pdf",
                    "file_data": "data:application/pdf;base64,JVBERi0xLjcK",
                },
            ],
        }
    ]


async def test_a_document_by_url_is_refused_before_anything_is_sent(server: FakeLLMServer) -> None:
    from miniagents.llms import DocumentPart, LLMError, user_message

    async with MiniAgents():
        reader = openai_agent.fork(alias="reader")
        error = await failure_of(
            reader.inquire(
                user_message("Read", DocumentPart(url="https://example.com/a.pdf")), **opts(server)
            )
        )
    assert isinstance(error, LLMError)
    assert "reader" in str(error) and "parts[0]" in str(error)
    assert server.requests == []
