"""Reasoning streams: thinking / reasoning_content as their own streamed messages, and thinking in tool loops."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llm_helpers import DEADLINE

from miniagents import Message, MiniAgents, TextMessage
from miniagents.llms import BadRequestError, LLMError, OverloadedError, anthropic_agent, openai_agent
from miniagents.testing.fake_llm_server import FakeLLMServer, ToolCall, anthropic_stream, openai_stream

pytestmark = pytest.mark.anyio

KEY = "sk-test-key"


def oai(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "base_url": server.openai_base_url, "api_key": KEY, **kwargs}


def ant(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "claude-test", "base_url": server.anthropic_base_url, "api_key": KEY, **kwargs}


async def streamed(replies: Any) -> list[tuple[Message, list[str]]]:
    """Every replied message with the tokens it streamed, in reply order."""
    out: list[tuple[Message, list[str]]] = []
    with anyio.fail_after(DEADLINE):
        async for promise in replies.promises():
            tokens = [token async for token in promise]
            out.append((await promise, tokens))
    return out


async def collect_tokens(promise: Any, into: list[str]) -> None:
    async for token in promise:
        into.append(token)


async def lookup(city: str) -> str:
    """Look a city up."""
    return f"{city}: sunny"


# -- the reasoning stream comes before the answer ---------------------------------------------------------------
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "both"])
async def test_openai_compatible_reasoning_streams_as_its_own_message_before_the_answer(
    server: FakeLLMServer, field: Any
) -> None:
    server.enqueue(openai_stream(["The ", "answer"], reasoning=["Let me ", "think."], reasoning_field=field))
    async with MiniAgents():
        replies = await streamed(openai_agent.inquire("q", **oai(server, reply_reasoning=True)))
    (reasoning, reasoning_tokens), (answer, answer_tokens) = replies
    # "both" (vLLM sends the same text in reasoning_content and reasoning): read once.
    assert reasoning_tokens == ["Let me ", "think."]
    assert reasoning.role == "reasoning" and str(reasoning) == "Let me think."
    assert reasoning.provider == "openai" and reasoning.request_id == "req_fake_openai"
    assert answer_tokens == ["The ", "answer"]
    assert answer.role == "assistant" and answer.reasoning == "Let me think."


async def test_anthropic_thinking_streams_as_its_own_message_and_is_requested_with_a_budget(
    server: FakeLLMServer,
) -> None:
    server.enqueue(anthropic_stream(["Four."], thinking=["2 + 2 ", "is 4."], signature="sig-A"))
    async with MiniAgents():
        replies = await streamed(
            anthropic_agent.inquire("2+2?", **ant(server, thinking=2048, reply_reasoning=True))
        )
    body = server.requests[0].json
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 2048 + 4096  # the default leaves room for the answer above the budget
    (reasoning, reasoning_tokens), (answer, answer_tokens) = replies
    assert reasoning_tokens == ["2 + 2 ", "is 4."] and reasoning.role == "reasoning"
    assert answer_tokens == ["Four."]
    assert answer.reasoning == "2 + 2 is 4."
    assert answer.thinking_blocks == ({"type": "thinking", "thinking": "2 + 2 is 4.", "signature": "sig-A"},)


async def test_anthropic_thinking_option_takes_the_api_object_and_an_explicit_max_tokens(
    server: FakeLLMServer,
) -> None:
    server.enqueue(anthropic_stream("ok", thinking=["hm"]))
    thinking = {"type": "enabled", "budget_tokens": 1500}
    async with MiniAgents():
        await anthropic_agent.inquire("q", **ant(server, thinking=thinking, max_tokens=3000))
    assert server.requests[0].json["thinking"] == thinking
    assert server.requests[0].json["max_tokens"] == 3000


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_reasoning_is_not_replied_by_default_but_kept_in_the_reasoning_field(
    server: FakeLLMServer, provider: str
) -> None:
    if provider == "openai":
        server.enqueue(openai_stream(["Hi"], reasoning=["mull", "ing"]))
        replies = lambda: openai_agent.inquire("q", **oai(server))  # noqa: E731
    else:
        server.enqueue(anthropic_stream(["Hi"], thinking=["mull", "ing"]))
        replies = lambda: anthropic_agent.inquire("q", **ant(server, thinking=1024))  # noqa: E731
    async with MiniAgents():
        out = await streamed(replies())
    ((answer, tokens),) = out
    assert tokens == ["Hi"] and answer.role == "assistant"
    assert answer.reasoning == "mulling"


async def test_reasoning_after_the_answer_began_opens_another_reasoning_message(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        anthropic_stream(blocks=[("thinking", ["first"]), ("text", ["A", "B"]), ("thinking", ["second"])])
    )
    async with MiniAgents():
        out = await streamed(anthropic_agent.inquire("q", **ant(server, thinking=1024, reply_reasoning=True)))
    assert [(m.role, tokens) for m, tokens in out] == [
        ("reasoning", ["first"]),
        ("assistant", ["A", "B"]),
        ("reasoning", ["\n\n", "second"]),  # a later thinking block is set apart by a blank line
    ]
    answer = out[1][0]
    assert answer.reasoning == "first\n\nsecond"
    assert [b["thinking"] for b in answer.thinking_blocks] == ["first", "second"]


async def test_a_failure_while_reasoning_streams_ends_the_reasoning_message_with_the_error(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        anthropic_stream(
            thinking=["partial ", "thought"], error={"type": "overloaded_error", "message": "busy"}
        )
    )
    async with MiniAgents():
        replies = anthropic_agent.inquire("q", **ant(server, thinking=1024, reply_reasoning=True))
        tokens: list[str] = []
        with anyio.fail_after(DEADLINE):
            promises = [p async for p in replies.promises()]
            assert len(promises) == 1
            with pytest.raises(OverloadedError):
                await collect_tokens(promises[0], tokens)
    assert tokens == ["partial ", "thought"]  # the tokens stay visible, then the error (reported once)


# -- thinking in a tool loop ------------------------------------------------------------------------------------
async def test_thinking_blocks_go_back_verbatim_before_tool_use_in_the_next_request(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        anthropic_stream(
            thinking=["I should ", "look it up."],
            signature="EqQBCgIYAh-signature",
            redacted_thinking=["ENCRYPTED-redacted-data"],
            tool_uses=[ToolCall("lookup", {"city": "Paris"}, id="toolu_1")],
        ),
        anthropic_stream(["Sunny in Paris."], thinking=["The tool said sunny."]),
    )
    async with MiniAgents():
        out = await streamed(
            anthropic_agent.inquire(
                "Weather in Paris?", **ant(server, thinking=1024, tools=[lookup], reply_reasoning=True)
            )
        )
    assert [m.role for m, _ in out] == ["reasoning", "assistant", "tool", "reasoning", "assistant"]
    first = out[1][0]
    assert first.thinking_blocks == (
        {"type": "thinking", "thinking": "I should look it up.", "signature": "EqQBCgIYAh-signature"},
        {"type": "redacted_thinking", "data": "ENCRYPTED-redacted-data"},
    )
    # The fake server rejects (like the API) a continued tool loop whose assistant turn lacks its thinking.
    assert all(r.validation_error is None for r in server.requests)
    second = server.requests[1].json["messages"]
    assert [turn["role"] for turn in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == [
        {"type": "thinking", "thinking": "I should look it up.", "signature": "EqQBCgIYAh-signature"},
        {"type": "redacted_thinking", "data": "ENCRYPTED-redacted-data"},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"city": "Paris"}},
    ]
    assert second[2]["content"][0]["type"] == "tool_result"
    assert str(out[4][0]) == "Sunny in Paris."


async def test_a_turn_with_only_redacted_thinking_keeps_it_and_streams_no_reasoning(
    server: FakeLLMServer,
) -> None:
    server.enqueue(
        anthropic_stream(
            redacted_thinking=["OPAQUE-1"], tool_uses=[ToolCall("lookup", {"city": "Oslo"}, id="toolu_9")]
        ),
        anthropic_stream(["Done."]),
    )
    async with MiniAgents():
        out = await streamed(
            anthropic_agent.inquire("q", **ant(server, thinking=1024, tools=[lookup], reply_reasoning=True))
        )
    assert [m.role for m, _ in out] == ["assistant", "tool", "assistant"]
    assert out[0][0].thinking_blocks == ({"type": "redacted_thinking", "data": "OPAQUE-1"},)
    assert out[0][0].get("reasoning") is None
    assert server.requests[1].json["messages"][1]["content"][0] == {
        "type": "redacted_thinking",
        "data": "OPAQUE-1",
    }


async def test_the_fake_server_rejects_a_thinking_tool_loop_that_drops_the_thinking_block(
    server: FakeLLMServer,
) -> None:
    history = [
        TextMessage("Weather in Paris?"),
        TextMessage(
            "",
            role="assistant",
            tool_calls=[{"id": "toolu_1", "name": "lookup", "arguments": '{"city": "Paris"}'}],
        ),
        TextMessage("sunny", role="tool", tool_call_id="toolu_1"),
    ]
    async with MiniAgents():
        replies = anthropic_agent.inquire(history, **ant(server, thinking=1024, max_retries=0))
        with anyio.fail_after(DEADLINE), pytest.raises(BadRequestError, match="thinking"):
            await replies
    assert server.requests[0].validation_error is not None


@pytest.mark.parametrize(
    ("thinking", "max_tokens", "problem"),
    [
        (512, None, "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"),
        (2048, 2048, "`max_tokens` must be greater than `thinking.budget_tokens`"),
    ],
)
async def test_the_fake_server_checks_the_thinking_budget_like_the_api(
    server: FakeLLMServer, thinking: int, max_tokens: int | None, problem: str
) -> None:
    async with MiniAgents():
        replies = anthropic_agent.inquire(
            "q", **ant(server, thinking=thinking, max_tokens=max_tokens, max_retries=0)
        )
        with anyio.fail_after(DEADLINE), pytest.raises(BadRequestError):
            await replies
    assert server.requests[0].validation_error == problem


# -- reasoning in a history given back --------------------------------------------------------------------------
async def test_reasoning_messages_in_a_history_are_not_user_turns(server: FakeLLMServer) -> None:
    server.enqueue(
        openai_stream(["Paris."], reasoning=["France's capital..."]),
        openai_stream(["Berlin."]),
        anthropic_stream(["Paris."], thinking=["France's capital..."], signature="sig-P"),
        anthropic_stream(["Berlin."]),
    )
    async with MiniAgents():
        first = await openai_agent.inquire("Capital of France?", **oai(server, reply_reasoning=True))
        assert [m.role for m in first] == ["reasoning", "assistant"]
        await openai_agent.inquire([TextMessage("Capital of France?"), *first, "And Germany?"], **oai(server))
        first = await anthropic_agent.inquire(
            "Capital of France?", **ant(server, thinking=1024, reply_reasoning=True)
        )
        await anthropic_agent.inquire(
            [TextMessage("Capital of France?"), *first, "And Germany?"], **ant(server, thinking=1024)
        )
    # OpenAI Chat Completions takes no reasoning back: neither the reasoning message nor the field is sent.
    assert server.requests[1].json["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Germany?"},
    ]
    assert server.requests[3].json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "France's capital...", "signature": "sig-P"},
                {"type": "text", "text": "Paris."},
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "And Germany?"}]},
    ]


# -- option checks ----------------------------------------------------------------------------------------------
async def test_thinking_is_refused_by_the_openai_agent_before_anything_is_sent(server: FakeLLMServer) -> None:
    async with MiniAgents():
        with (
            anyio.fail_after(DEADLINE),
            pytest.raises(LLMError, match=r"'openai_agent'.*thinking= is an Anthropic"),
        ):
            await openai_agent.inquire("q", **oai(server, thinking=2048))
    assert server.requests == []


async def test_reasoning_options_of_the_wrong_type_raise_at_inquire() -> None:
    async with MiniAgents():
        with pytest.raises(TypeError, match=r"'anthropic_agent': thinking must be a budget"):
            anthropic_agent.inquire("q", model="m", thinking=True)
        with pytest.raises(ValueError, match="thinking must be a budget of tokens >= 1"):
            anthropic_agent.inquire("q", model="m", thinking=0)
        with pytest.raises(TypeError, match="reply_reasoning must be a bool"):
            openai_agent.inquire("q", model="m", reply_reasoning="yes")


# -- any interleaving and chunking gives the same texts and token order -----------------------------------------
_PIECES = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\r"), min_size=1, max_size=6),
    min_size=1,
    max_size=4,
)
_SEGMENTS = st.lists(st.tuples(st.sampled_from(["reasoning", "text"]), _PIECES), min_size=1, max_size=6)


def _expected(provider: str, segments: list[tuple[str, list[str]]]) -> tuple[list[list[str]], list[str], int]:
    """The reasoning messages' tokens (each run of reasoning its own message), the answer's tokens, and how
    many reasoning messages come before the answer."""
    runs: list[list[str]] = []
    answer: list[str] = []
    before = 0
    previous = None
    thinking_blocks = 0
    for kind, pieces in segments:
        if kind == "text":
            answer.extend(pieces)
        else:
            tokens = list(pieces)
            if provider == "anthropic":
                if thinking_blocks:
                    tokens.insert(0, "\n\n")
                thinking_blocks += 1
            if previous == "reasoning":
                runs[-1].extend(tokens)
            else:
                runs.append(tokens)
                before += not answer
        previous = kind
    return runs, answer, before


async def _run_interleaving(
    provider: str, segments: list[tuple[str, list[str]]], chunk_size: int | None
) -> list[tuple[Message, list[str]]]:
    async with FakeLLMServer.serve() as server, MiniAgents():
        if provider == "openai":
            deltas = [("reasoning" if k == "reasoning" else "content", p) for k, ps in segments for p in ps]
            server.enqueue(openai_stream(deltas=deltas, chunk_size=chunk_size))  # type: ignore[arg-type]
            replies = openai_agent.inquire("q", **oai(server, reply_reasoning=True))
        else:
            blocks = [("thinking" if k == "reasoning" else "text", ps) for k, ps in segments]
            server.enqueue(anthropic_stream(blocks=blocks, chunk_size=chunk_size))  # type: ignore[arg-type]
            replies = anthropic_agent.inquire("q", **ant(server, thinking=1024, reply_reasoning=True))
        return await streamed(replies)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(segments=_SEGMENTS, chunk_size=st.one_of(st.none(), st.integers(1, 40)))
async def test_any_interleaving_and_chunking_gives_the_same_reasoning_and_answer(
    provider: str, segments: list[tuple[str, list[str]]], chunk_size: int | None
) -> None:
    out = await _run_interleaving(provider, segments, chunk_size)
    runs, answer_tokens, before = _expected(provider, segments)
    roles = [m.role for m, _ in out]
    assert roles == ["reasoning"] * before + ["assistant"] + ["reasoning"] * (len(runs) - before)
    answer, tokens = out[before]
    assert tokens == answer_tokens and str(answer) == "".join(answer_tokens)
    reasoning = [(m, t) for m, t in out if m.role == "reasoning"]
    assert [t for _, t in reasoning] == runs
    assert all(str(m) == "".join(t) for m, t in reasoning)
    # No reasoning at all: no field (a message without reasoning looks as it always did).
    assert answer.get("reasoning", "") == "".join(token for run in runs for token in run)
    if provider == "anthropic":
        texts = ["".join(ps) for k, ps in segments if k == "reasoning"]
        assert [b["thinking"] for b in answer.get("thinking_blocks", ())] == texts
