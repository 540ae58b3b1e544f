"""How the LLM features work together: structured output, reasoning, usage, parts, redaction, tracing and
the Responses API combined, checked against what the real provider protocols require.

Each test states one behaviour of a combination of options (or of an option on the API it was not first
written for); the fake server plays the provider, and where it does not enforce a protocol rule the request
body is checked against the rule directly.
"""

from __future__ import annotations

import json
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from miniagents import Message, MiniAgents, TextMessage
from miniagents.llms import (
    ImagePart,
    LLMError,
    LLMTimeoutError,
    OutputValidationError,
    ServerError,
    ToolRoundsExceededError,
    Usage,
    UsageLimit,
    UsageLimitExceededError,
    anthropic_agent,
    openai_agent,
    output_of,
    user_message,
)
from miniagents.testing import Cassette
from miniagents.testing.fake_llm_server import (
    FakeLLMServer,
    ToolCall,
    anthropic_stream,
    openai_error,
    openai_stream,
    responses_stream,
)
from miniagents.tracing import TracingOptions

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-interactions-0123456789"
DEADLINE = 30  # a bound for waiting on what must happen; never a timing assertion
PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)


@attrs.frozen
class City:
    """A city and its population."""

    name: str
    population: int


def chat(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "base_url": server.openai_base_url, "api_key": KEY, **kwargs}


def responses(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return chat(server, api="responses", **kwargs)


def claude(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "claude-test", "base_url": server.anthropic_base_url, "api_key": KEY, **kwargs}


async def streamed(replies: Any) -> list[tuple[Message, list[str]]]:
    """Every replied message with the tokens it streamed, in reply order."""
    out: list[tuple[Message, list[str]]] = []
    with anyio.fail_after(DEADLINE):
        async for promise in replies.promises():
            tokens = [token async for token in promise]
            out.append((await promise, tokens))
    return out


async def failure_of(awaitable: Any) -> BaseException:
    with anyio.fail_after(DEADLINE):
        try:
            await awaitable
        except BaseException as exc:
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            return exc
    raise AssertionError("it did not fail")


async def failure_of_or_none(awaitable: Any) -> BaseException | None:
    """The error of *awaitable*, or ``None`` when it succeeds."""
    with anyio.fail_after(DEADLINE):
        try:
            await awaitable
        except BaseException as exc:
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            return exc
    return None


def assert_no_key(error: BaseException) -> None:
    """The key is in none of the error's texts, attributes or pickle."""
    assert KEY not in str(error) and KEY not in repr(error)
    assert KEY not in repr(vars(error)) and KEY not in repr(error.args)
    assert KEY.encode() not in pickle.dumps(error)


async def lookup(city: str) -> str:
    """Look a city up."""
    return f"{city}: sunny"


@contextmanager
def traced() -> Iterator[tuple[TracingOptions, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield TracingOptions(tracer_provider=provider, capture_message_content=True), exporter
    finally:
        provider.shutdown()


def chat_spans(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    return [dict(s.attributes or {}) for s in exporter.get_finished_spans() if s.name.startswith("chat ")]


# -- structured output on the Responses API -----------------------------------------------------------------------
async def test_native_structured_output_on_the_responses_api_is_requested_with_text_format(
    server: FakeLLMServer,
) -> None:
    """The Responses API takes structured output as ``text.format`` (``{"type": "json_schema", "name",
    "schema", "strict"}``); ``response_format`` is the Chat Completions parameter, which it rejects."""
    server.enqueue(responses_stream(['{"name": "Paris", ', '"population": 2100000}']))
    async with MiniAgents():
        replies = openai_agent.inquire(
            "The largest city of France?", **responses(server, output_type=City, output_mode="native")
        )
        assert await output_of(replies, City) == City("Paris", 2100000)
    body = server.requests[0].json
    assert "response_format" not in body
    text_format = body.get("text", {}).get("format")
    assert isinstance(text_format, dict), f"no text.format in the Responses request: {sorted(body)}"
    assert text_format["type"] == "json_schema" and text_format["name"] == "City"
    assert text_format["strict"] is True
    assert text_format["schema"]["additionalProperties"] is False
    assert sorted(text_format["schema"]["required"]) == ["name", "population"]


async def test_tool_mode_structured_output_on_the_responses_api_retries_through_function_call_output(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        responses_stream(
            tool_calls=[ToolCall("final_result", {"name": "Paris", "population": "many"}, id="c1")]
        ),
        responses_stream(
            tool_calls=[ToolCall("final_result", {"name": "Paris", "population": "2100000"}, id="c2")]
        ),
    )
    async with MiniAgents():
        replies = openai_agent.inquire("Largest French city?", **responses(server, output_type=City))
        assert await output_of(replies, City) == City("Paris", 2100000)
    first, second = (r.json for r in server.requests)
    assert first["tool_choice"] == "required"
    assert [t["name"] for t in first["tools"]] == ["final_result"]
    assert first["tools"][0]["parameters"]["required"] == ["name", "population"]
    feedback = second["input"][-1]
    assert feedback["type"] == "function_call_output" and feedback["call_id"] == "c1"
    assert 'population: expected int, got "many"' in feedback["output"]


async def test_responses_structured_output_with_reply_reasoning_replies_the_summary_before_the_accepted_turn(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        responses_stream(
            reasoning=[["France's largest ", "city is Paris."]],
            tool_calls=[ToolCall("final_result", {"name": "Paris", "population": 2100000})],
        )
    )
    async with MiniAgents():
        replies = openai_agent.inquire(
            "Largest French city?", **responses(server, output_type=City, reply_reasoning=True)
        )
        out = await streamed(replies)
        assert await output_of(replies, City) == City("Paris", 2100000)
    roles = [m.role for m, _ in out]
    assert roles == ["reasoning", "assistant", "tool"]
    reasoning, accepted = out[0][0], out[1][0]
    assert str(reasoning) == "France's largest city is Paris." == accepted.reasoning
    assert accepted.output == {"name": "Paris", "population": 2100000}


async def test_native_structured_output_is_judged_on_the_answer_text_only_not_on_the_reasoning(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        openai_stream(['{"name": "Paris", "population": 2100000}'], reasoning=["{not json: ", "thinking"])
    )
    async with MiniAgents():
        replies = openai_agent.inquire(
            "q", **chat(server, output_type=City, output_mode="native", reply_reasoning=True)
        )
        out = await streamed(replies)
        assert await output_of(replies, City) == City("Paris", 2100000)
    assert [m.role for m, _ in out] == ["reasoning", "assistant"]
    assert len(server.requests) == 1  # accepted at once: the reasoning is not part of the answer


async def test_a_native_structured_answer_cut_off_by_max_tokens_is_reported_as_cut_off(
    server: FakeLLMServer,
) -> None:
    """As in tool mode ("the answer was cut off by the token limit"), not as a JSON syntax error."""
    server.enqueue(openai_stream(['{"name": "Pa'], finish_reason="length"))
    async with MiniAgents():
        error = await failure_of(
            openai_agent.inquire(
                "q", **chat(server, output_type=City, output_mode="native", output_retries=0, max_tokens=5)
            )
        )
    assert isinstance(error, OutputValidationError)
    assert "token limit" in str(error) and "max_tokens" in str(error)


async def test_a_refused_native_structured_answer_is_reported_as_a_refusal(server: FakeLLMServer) -> None:
    """The refusal text is what the model said instead of the JSON: the error shows it, not "empty"."""
    server.enqueue(responses_stream(refusal="I can't help with that."))
    async with MiniAgents():
        error = await failure_of(
            openai_agent.inquire(
                "q", **responses(server, output_type=City, output_mode="native", output_retries=0)
            )
        )
    assert isinstance(error, OutputValidationError)
    assert "refus" in str(error) and "I can't help with that." in str(error)


@pytest.mark.parametrize("api", ["chat_completions", "responses", "anthropic"])
async def test_a_structured_answer_replied_without_tool_messages_can_continue_the_conversation(
    server: FakeLLMServer, api: str
) -> None:
    """With ``reply_tool_messages=False`` the accepted ``final_result`` turn is still replied (it carries the
    output); given back as history it must stay a complete exchange, as the provider requires of a tool call."""
    call = ToolCall("final_result", {"name": "Paris", "population": 2100000})
    answer_text = "Berlin is the largest German city."
    if api == "anthropic":
        server.enqueue(anthropic_stream(tool_uses=[call]), anthropic_stream(answer_text))
        agent, options = anthropic_agent, claude(server)
    else:
        stream = openai_stream if api == "chat_completions" else responses_stream
        server.enqueue(stream(tool_calls=[call]), stream(answer_text))
        agent, options = openai_agent, chat(server, api=api)
    async with MiniAgents():
        first = await agent.inquire(
            "Largest French city?", **options, output_type=City, reply_tool_messages=False
        )
        assert await output_of(first, City) == City("Paris", 2100000)
        history = [TextMessage("Largest French city?"), *first, TextMessage("And in Germany?")]
        answer = await agent.inquire(history, **options).as_single_text()
    assert server.requests[1].validation_error is None
    assert answer == answer_text


# -- structured output with Anthropic extended thinking -----------------------------------------------------------
async def test_tool_mode_structured_output_with_anthropic_thinking_does_not_force_a_tool_choice(
    server: FakeLLMServer,
) -> None:
    """Anthropic rejects a forced ``tool_choice`` (``any`` / ``tool``) while thinking is enabled ("Thinking may
    not be enabled when tool_choice forces tool use"): the structured-output tool must then be offered with
    ``auto`` (or the combination refused before sending, naming the agent and both options)."""
    server.enqueue(
        anthropic_stream(
            thinking=["Paris, surely."],
            tool_uses=[ToolCall("final_result", {"name": "Paris", "population": 2})],
        )
    )
    async with MiniAgents():
        outcome = await failure_of_or_none(
            anthropic_agent.inquire("q", **claude(server, output_type=City, thinking=1024))
        )
    if outcome is not None:
        assert isinstance(outcome, (LLMError, ValueError, TypeError)), repr(outcome)
        assert not server.requests, "refused, but only after sending the request"
        assert "anthropic_agent" in str(outcome) and "thinking" in str(outcome)
    for request in server.requests:
        body = request.json
        if body.get("thinking", {}).get("type") == "enabled":
            choice = body.get("tool_choice", {"type": "auto"})
            assert choice["type"] in ("auto", "none"), f"thinking enabled with a forced tool_choice {choice}"


# -- usage on the Responses API and usage limits with the other options -------------------------------------------
def _responses_usage(inputs: int, cached: int, outputs: int, reasoning: int) -> dict[str, Any]:
    return {
        "input_tokens": inputs,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": outputs,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inputs + outputs,
    }


async def test_responses_usage_is_normalised_and_totalled_across_the_tool_loop(server: FakeLLMServer) -> None:
    server.enqueue(
        responses_stream(
            tool_calls=[ToolCall("lookup", {"city": "Paris"})], usage=_responses_usage(100, 40, 30, 20)
        ),
        responses_stream(["Sunny."], usage=_responses_usage(150, 100, 10, 0)),
    )
    async with MiniAgents():
        messages = await openai_agent.inquire("Weather?", **responses(server, tools=[lookup]))
    first, _, last = messages
    assert Usage.of(first) == Usage(
        input_tokens=100, output_tokens=30, cache_read_tokens=40, reasoning_tokens=20, requests=1
    )
    assert Usage.of(last, total=True) == Usage(
        input_tokens=250, output_tokens=40, cache_read_tokens=140, reasoning_tokens=20, requests=2
    )
    assert Usage.of(last, total=True).total_tokens == 290


async def test_a_usage_limit_stops_a_responses_tool_loop_naming_the_forks_alias(
    server: FakeLLMServer,
) -> None:
    ran: list[str] = []

    async def tracked(city: str) -> str:
        """Look a city up."""
        ran.append(city)
        return city

    server.enqueue(
        responses_stream(
            tool_calls=[ToolCall("tracked", {"city": "Oslo"})], usage=_responses_usage(90, 0, 40, 0)
        )
    )
    agent = openai_agent.fork(alias="budgeted_agent", **responses(server, tools=[tracked], usage_limit=100))
    async with MiniAgents():
        error = await failure_of(agent.inquire("Weather?"))
    assert isinstance(error, UsageLimitExceededError)
    assert not ran and len(server.requests) == 1
    assert error.agent == "budgeted_agent" and "budgeted_agent" in str(error)
    assert error.limit_name == "total_tokens" and error.usage is not None and error.usage.total_tokens == 130
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is UsageLimitExceededError
    assert (restored.agent, restored.limit, restored.usage, restored.limit_name) == (
        "budgeted_agent",
        UsageLimit(total_tokens=100),
        error.usage,
        "total_tokens",
    )
    assert str(restored) == str(error)


async def test_a_usage_limit_stops_structured_output_retries_before_output_retries_run_out(
    server: FakeLLMServer,
) -> None:
    server.handler = lambda request: openai_stream(
        tool_calls=[ToolCall("final_result", {"name": "Paris", "population": "many"})]
    )
    async with MiniAgents():
        error = await failure_of(
            openai_agent.inquire(
                "q", **chat(server, output_type=City, output_retries=5, usage_limit=UsageLimit(requests=2))
            )
        )
    assert isinstance(error, UsageLimitExceededError)
    assert len(server.requests) == 2
    assert error.usage is not None and error.usage.requests == 2


async def test_a_reached_usage_limit_does_not_run_the_other_tools_of_an_invalid_structured_answer(
    server: FakeLLMServer,
) -> None:
    """A turn that calls ``final_result`` with an invalid answer *and* another tool, once the usage limit is
    reached: the call stops there, and like any tool call past the limit the other tool is not run."""
    ran: list[str] = []

    async def tracked(city: str) -> str:
        """Look a city up."""
        ran.append(city)
        return city

    server.enqueue(
        openai_stream(
            tool_calls=[
                ToolCall("final_result", {"name": "Paris", "population": "many"}),
                ToolCall("tracked", {"city": "Paris"}),
            ],
            usage={"prompt_tokens": 90, "completion_tokens": 20, "total_tokens": 110},
        )
    )
    async with MiniAgents():
        error = await failure_of(
            openai_agent.inquire("q", **chat(server, tools=[tracked], output_type=City, usage_limit=100))
        )
    assert isinstance(error, UsageLimitExceededError)
    assert len(server.requests) == 1
    assert ran == [], "a tool ran after the usage limit was reached"


async def test_native_structured_output_on_the_responses_api_retries_with_a_user_turn(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        responses_stream(['{"name": "Paris"}']),
        responses_stream(['{"name": "Paris", "population": 2100000}']),
    )
    async with MiniAgents():
        replies = openai_agent.inquire("q", **responses(server, output_type=City, output_mode="native"))
        assert await output_of(replies, City) == City("Paris", 2100000)
    second = server.requests[1].json["input"]
    assert [(i["type"], i["role"]) for i in second] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert "population" in second[-1]["content"] and "corrected JSON object" in second[-1]["content"]


# -- reasoning in the tool loop with hidden tool turns ------------------------------------------------------------
async def test_thinking_in_a_tool_loop_with_hidden_tool_turns_replies_only_reasoning_and_the_answer(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        anthropic_stream(thinking=["Need ", "the tool."], tool_uses=[ToolCall("lookup", {"city": "Paris"})]),
        anthropic_stream(["Sunny."], thinking=["The tool said sunny."]),
    )
    async with MiniAgents():
        out = await streamed(
            anthropic_agent.inquire(
                "Weather?",
                **claude(
                    server, tools=[lookup], thinking=1024, reply_reasoning=True, reply_tool_messages=False
                ),
            )
        )
    assert [(m.role, tokens) for m, tokens in out] == [
        ("reasoning", ["Need ", "the tool."]),
        ("reasoning", ["The tool said sunny."]),
        ("assistant", ["Sunny."]),
    ]
    answer = out[-1][0]
    assert Usage.of(answer, total=True).requests == 2
    assistant_turn = server.requests[1].json["messages"][1]
    assert [b["type"] for b in assistant_turn["content"]] == ["thinking", "tool_use"]
    assert assistant_turn["content"][0]["thinking"] == "Need the tool."


# -- errors: redaction, pickling and the agent's alias ------------------------------------------------------------
async def test_a_key_echoed_by_a_responses_error_event_after_the_reasoning_is_redacted(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        responses_stream(reasoning=["Thinking."], error={"code": "server_error", "message": f"bad key {KEY}"})
    )
    async with MiniAgents():
        replies = openai_agent.inquire("q", **responses(server, reply_reasoning=True))
        seen: list[BaseException] = []
        with anyio.fail_after(DEADLINE):
            async for promise in replies.promises():
                try:
                    await promise
                except LLMError as failure:
                    seen.append(failure)
    (error,) = seen
    assert isinstance(error, ServerError) and "<redacted>" in str(error)
    assert_no_key(error)


async def test_a_key_echoed_by_a_failed_response_before_any_token_is_redacted(server: FakeLLMServer) -> None:
    server.enqueue(responses_stream(failed={"code": "server_error", "message": f"upstream rejected {KEY}"}))
    async with MiniAgents():
        error = await failure_of(openai_agent.inquire("q", **responses(server)))
    assert isinstance(error, ServerError) and "<redacted>" in str(error)
    assert_no_key(error)


async def test_an_output_validation_error_names_the_fork_and_survives_pickling(server: FakeLLMServer) -> None:
    server.handler = lambda request: responses_stream(
        tool_calls=[ToolCall("final_result", {"name": "Paris", "population": "many"})]
    )
    agent = openai_agent.fork(alias="city_agent", **responses(server, output_type=City, output_retries=1))
    async with MiniAgents():
        error = await failure_of(agent.inquire("q"))
    assert isinstance(error, OutputValidationError)
    assert error.agent == "city_agent" and "city_agent" in str(error)
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is OutputValidationError
    assert (restored.agent, restored.issues, restored.raw, restored.attempts) == (
        "city_agent",
        (("population", 'expected int, got "many"'),),
        '{"name": "Paris", "population": "many"}',
        2,
    )
    assert (restored.provider, restored.request_id, str(restored)) == (
        "openai",
        "req_fake_openai",
        str(error),
    )
    assert_no_key(error)


async def test_tool_rounds_exceeded_names_the_agent_alias(server: FakeLLMServer) -> None:
    """Like the other errors of the loop (usage limit, structured output), it says which agent stopped."""
    server.handler = lambda request: openai_stream(tool_calls=[ToolCall("lookup", {"city": "Paris"})])
    agent = openai_agent.fork(alias="looping_agent", **chat(server, tools=[lookup], max_tool_rounds=1))
    async with MiniAgents():
        error = await failure_of(agent.inquire("q"))
    assert isinstance(error, ToolRoundsExceededError)
    assert "looping_agent" in str(error)


async def test_the_whole_call_timeout_names_the_agent_alias(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream(["slow"], hang_after=2))
    agent = openai_agent.fork(alias="slow_agent", **chat(server, timeout=0.3, max_retries=0))
    async with MiniAgents():
        error = await failure_of(agent.inquire("q"))
    assert isinstance(error, LLMTimeoutError)
    assert "slow_agent" in str(error) and "timeout=0.3" in str(error)


# -- the Responses API behind an Azure-style base URL -------------------------------------------------------------
async def test_a_responses_request_keeps_the_base_urls_query_and_redacts_a_key_given_there(
    server: FakeLLMServer,
) -> None:
    server.enqueue(responses_stream(error={"code": "server_error", "message": f"no deployment for {KEY}"}))
    base = f"{server.openai_base_url}?api-version=2025-04-01-preview&api-key={KEY}"
    async with MiniAgents():
        error = await failure_of(
            openai_agent.inquire("q", **responses(server, base_url=base, api_key="sk-x"))
        )
    assert server.requests[0].path.split("?")[0] == "/v1/responses"
    assert "api-version=2025-04-01-preview" in server.requests[0].path
    assert isinstance(error, LLMError)
    assert_no_key(error)


# -- parts on the Responses API, through a cassette -----------------------------------------------------------------
async def test_parts_on_the_responses_api_record_and_replay_through_a_cassette(tmp_path: Any) -> None:
    path = tmp_path / "parts.jsonl"
    question = user_message("What is this?", ImagePart(data=PNG), ImagePart(url="https://example.com/a.png"))

    async def ask(base_url: str) -> str:
        async with MiniAgents():
            text = await openai_agent.inquire(
                question, model="gpt-test", api="responses", base_url=base_url, api_key=KEY
            ).as_single_text()
        return text

    async with FakeLLMServer.serve() as server:
        server.enqueue(responses_stream("Two images."))
        async with Cassette(path, mode="record"):
            assert await ask(server.openai_base_url) == "Two images."
        content = server.requests[0].json["input"][0]["content"]
    assert [part["type"] for part in content] == ["input_text", "input_image", "input_image"]
    assert content[1]["image_url"].startswith("data:image/png;base64,")
    assert KEY not in path.read_text(encoding="utf-8")
    async with Cassette(path, mode="replay") as cassette:
        assert await ask("http://127.0.0.1:9/v1") == "Two images."  # nothing listens there
    assert (cassette.statistics().replayed, cassette.statistics().unmatched) == (1, 0)


async def test_a_cassette_never_stores_a_key_given_in_the_base_urls_query(tmp_path: Any) -> None:
    """An Azure-style ``?api-key=`` is a secret of the request like an auth header: the error body that echoes it
    is stored redacted, as the error raised from it is."""
    path = tmp_path / "azure.jsonl"
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_error(400, f"api-key {KEY} is not valid for this deployment"))
        base = f"{server.openai_base_url}?api-version=2024-10-21&api-key={KEY}"
        async with Cassette(path, mode="record"), MiniAgents():
            error = await failure_of(openai_agent.inquire("q", **chat(server, base_url=base, api_key="sk-x")))
    assert isinstance(error, LLMError)
    assert_no_key(error)
    assert KEY not in path.read_text(encoding="utf-8")


# -- tracing of reasoning and structured turns ------------------------------------------------------------------
async def test_a_traced_request_records_only_the_messages_it_sent(server: FakeLLMServer) -> None:
    """Reasoning messages of a history are left out of the request, so they are not input messages of its span
    either (whose roles are the conventions' system / user / assistant / tool)."""
    history = [
        TextMessage("Weather?"),
        TextMessage("Let me think.", role="reasoning"),
        TextMessage("Sunny.", role="assistant"),
        TextMessage("Thanks. And tomorrow?"),
    ]
    server.enqueue(openai_stream("Rain."))
    with traced() as (tracing, exporter):
        async with MiniAgents(tracing=tracing):
            await openai_agent.inquire(history, **chat(server))
        (span,) = chat_spans(exporter)
    sent = server.requests[0].json["messages"]
    recorded = json.loads(span["gen_ai.input.messages"])
    assert [m["role"] for m in recorded] == [m["role"] for m in sent] == ["user", "assistant", "user"]


async def test_a_traced_reasoning_turn_records_its_reasoning_as_a_reasoning_part(
    server: FakeLLMServer,
) -> None:
    server.enqueue(anthropic_stream(["Sunny."], thinking=["It is ", "summer."]))
    with traced() as (tracing, exporter):
        async with MiniAgents(tracing=tracing):
            await anthropic_agent.inquire("Weather?", **claude(server, thinking=1024))
        (span,) = chat_spans(exporter)
    (output,) = json.loads(span["gen_ai.output.messages"])
    assert {"type": "reasoning", "content": "It is summer."} in output["parts"]
    assert {"type": "text", "content": "Sunny."} in output["parts"]


async def test_a_traced_native_structured_output_request_says_it_asked_for_json(
    server: FakeLLMServer,
) -> None:
    server.enqueue(openai_stream('{"name": "Paris", "population": 2100000}'))
    with traced() as (tracing, exporter):
        async with MiniAgents(tracing=tracing):
            await openai_agent.inquire("q", **chat(server, output_type=City, output_mode="native"))
        (span,) = chat_spans(exporter)
    assert span.get("gen_ai.output.type") == "json"


# -- the stream edges with the Responses API ----------------------------------------------------------------------
async def test_a_responses_turn_is_finished_at_response_completed_even_if_the_body_stays_open(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        responses_stream(["Done."], hang_after=10_000)
    )  # the body never ends after the terminal event
    async with MiniAgents():
        messages = await openai_agent.inquire("q", **responses(server, timeout=0.5))
    (message,) = messages
    assert str(message) == "Done." and message.finish_reason == "stop"


# -- the order of a tool loop's replies, whatever order its tools finish in ---------------------------------------
async def _checkpoints(i: int, pauses: int) -> str:
    """A tool that takes *pauses* scheduling points before it answers."""
    for _ in range(pauses):
        await anyio.sleep(0)
    return f"r{i}"


def _tool_turn(api: str, pauses: list[int]) -> Any:
    calls = [ToolCall("_checkpoints", {"i": i, "pauses": p}, id=f"call_{i}") for i, p in enumerate(pauses)]
    if api == "chat_completions":
        return openai_stream(tool_calls=calls, reasoning=["Tools."])
    if api == "responses":
        return responses_stream(tool_calls=calls, reasoning=["Tools."])
    return anthropic_stream(tool_uses=calls, thinking=["Tools."])


def _answer_turn(api: str) -> Any:
    if api == "chat_completions":
        return openai_stream(["All ", "done."], reasoning=["Answer."])
    if api == "responses":
        return responses_stream(["All ", "done."], reasoning=["Answer."])
    return anthropic_stream(["All ", "done."], thinking=["Answer."])


def _results_sent(api: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    if api == "chat_completions":
        return [(m["tool_call_id"], m["content"]) for m in body["messages"] if m["role"] == "tool"]
    if api == "responses":
        return [(i["call_id"], i["output"]) for i in body["input"] if i["type"] == "function_call_output"]
    blocks = body["messages"][-1]["content"]
    return [(b["tool_use_id"], b["content"]) for b in blocks if b["type"] == "tool_result"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    api=st.sampled_from(["chat_completions", "responses", "anthropic"]),
    pauses=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    reply_reasoning=st.booleans(),
    reply_tool_messages=st.booleans(),
)
async def test_a_tool_loops_replies_and_results_keep_the_call_order_however_the_tools_interleave(
    api: str, pauses: list[int], reply_reasoning: bool, reply_tool_messages: bool
) -> None:
    flags = {"reply_reasoning": reply_reasoning, "reply_tool_messages": reply_tool_messages}
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.enqueue(_tool_turn(api, pauses), _answer_turn(api))
        if api == "anthropic":
            replies = anthropic_agent.inquire(
                "go", **claude(server, tools=[_checkpoints], thinking=1024, **flags)
            )
        else:
            replies = openai_agent.inquire("go", **chat(server, api=api, tools=[_checkpoints], **flags))
        out = await streamed(replies)
        bodies = [r.json for r in server.requests]
    n = len(pauses)
    expected_roles = (["reasoning"] if reply_reasoning else []) + (
        ["assistant", *["tool"] * n] if reply_tool_messages else []
    )
    expected_roles += (["reasoning"] if reply_reasoning else []) + ["assistant"]
    assert [m.role for m, _ in out] == expected_roles
    results = [(m.tool_call_id, str(m)) for m, _ in out if m.role == "tool"]
    expected_results = [(f"call_{i}", f"r{i}") for i in range(n)]
    assert results == (expected_results if reply_tool_messages else [])
    assert _results_sent(api, bodies[1]) == expected_results
    answer, tokens = out[-1]
    assert tokens == ["All ", "done."] and answer.reasoning == "Answer."
    assert Usage.of(answer, total=True).requests == 2


# -- concurrent calls of one fork keep their own reasoning, answers and usage --------------------------------------
def _question_of(api: str, body: dict[str, Any]) -> tuple[str, bool]:
    """The call's question (its first user turn) and whether the request answers a tool call."""
    if api == "responses":
        first = body["input"][0]["content"]
        return first, any(i["type"] == "function_call_output" for i in body["input"])
    messages = body["messages"]
    first = messages[0]["content"]
    first = first if isinstance(first, str) else first[0]["text"]
    if api == "anthropic":
        last = messages[-1]["content"]
        return first, isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
    return first, any(m["role"] == "tool" for m in messages)


def _scripted_turn(api: str, question: str, answered: bool) -> Any:
    n = question.removeprefix("q")
    if not answered:
        call = ToolCall("_checkpoints", {"i": int(n), "pauses": int(n) % 3}, id=f"call_q{n}")
        if api == "anthropic":
            return anthropic_stream(tool_uses=[call], thinking=[f"plan {n}"], input_tokens=10 + int(n))
        if api == "responses":
            return responses_stream(tool_calls=[call], reasoning=[f"plan {n}"])
        return openai_stream(tool_calls=[call], reasoning=[f"plan {n}"])
    if api == "anthropic":
        return anthropic_stream([f"answer {n}"], thinking=[f"done {n}"], input_tokens=10 + int(n))
    if api == "responses":
        return responses_stream([f"answer {n}"], reasoning=[f"done {n}"])
    return openai_stream([f"answer {n}"], reasoning=[f"done {n}"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    api=st.sampled_from(["chat_completions", "responses", "anthropic"]),
    calls=st.integers(1, 6),
    reply_tool_messages=st.booleans(),
)
async def test_concurrent_calls_of_one_fork_keep_their_own_reasoning_answers_and_usage(
    api: str, calls: int, reply_tool_messages: bool
) -> None:
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: _scripted_turn(api, *_question_of(api, request.json))
        flags: dict[str, Any] = {"reply_reasoning": True, "reply_tool_messages": reply_tool_messages}
        if api == "anthropic":
            agent = anthropic_agent.fork(**claude(server, tools=[_checkpoints], thinking=1024, **flags))
        else:
            agent = openai_agent.fork(**chat(server, api=api, tools=[_checkpoints], **flags))
        outs: dict[int, list[tuple[Message, list[str]]]] = {}

        async def one(i: int) -> None:
            outs[i] = await streamed(agent.inquire(f"q{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(calls):
                tg.start_soon(one, i)
    assert len(server.requests) == 2 * calls
    for i, out in outs.items():
        texts = [(m.role, str(m)) for m, _ in out]
        middle = [("assistant", ""), ("tool", f"r{i}")] if reply_tool_messages else []
        assert texts == [
            ("reasoning", f"plan {i}"),
            *middle,
            ("reasoning", f"done {i}"),
            ("assistant", f"answer {i}"),
        ]
        answer = out[-1][0]
        assert answer.reasoning == f"done {i}"
        total = Usage.of(answer, total=True)
        assert total.requests == 2
        assert total.input_tokens == (2 * (10 + i) if api == "anthropic" else 22)  # this call's own turns
        if reply_tool_messages:
            assert Usage.of(out[1][0]) + Usage.of(answer) == total
