"""What the LLM agents do with an empty user turn, and where mistyped options are caught.

Empty input: user turns are sent as given.  OpenAI accepts an empty user ``content``, so ``inquire("")`` sends
one; Anthropic rejects empty and whitespace-only text, so a user turn with no text raises ``LLMError`` naming
the agent before anything is sent (a blank message merged into a user turn that has text is left out, as
before).  Empty assistant turns in the history keep working on both.

Options: an unknown option or a bad value raises at ``fork()`` / ``inquire()`` / ``initiate_call()``, naming
the agent alias and suggesting the closest option; the mechanism is ``MiniAgent(kwargs_validator=...)``, which
``fork()`` keeps.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llm_helpers import KEY, ant, oai

from miniagents import InteractionContext, MiniAgent, MiniAgents, TextMessage
from miniagents.llms import LLMError, anthropic_agent, openai_agent
from miniagents.llms._anthropic import anthropic_messages
from miniagents.llms._common import parse_options
from miniagents.llms.local import local_agent
from miniagents.testing.fake_llm_server import (
    FakeLLMServer,
    ToolCall,
    anthropic_stream,
    openai_stream,
)
from miniagents.testing.fake_llm_server._validation import _validate_anthropic

pytestmark = pytest.mark.anyio


# -- an empty user turn -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "  \n"])
async def test_openai_sends_an_empty_user_turn_as_given(server: FakeLLMServer, text: str) -> None:
    server.enqueue(openai_stream("Hello! How can I help?"))
    async with MiniAgents():
        reply = await openai_agent.inquire(text, **oai(server, system="Be kind.")).as_single_text()
    request = server.requests[0]
    assert request.validation_error is None
    assert request.json["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": text},
    ]
    assert reply == "Hello! How can I help?"


async def test_openai_keeps_empty_user_turns_among_others_in_place(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("ok"))
    async with MiniAgents():
        await openai_agent.inquire(["", "q", ""], **oai(server))
    assert server.requests[0].validation_error is None
    assert server.requests[0].json["messages"] == [
        {"role": "user", "content": ""},
        {"role": "user", "content": "q"},
        {"role": "user", "content": ""},
    ]


@pytest.mark.parametrize("text", ["", " ", "\n\t"])
async def test_anthropic_empty_user_turn_raises_naming_the_agent_and_sends_nothing(
    server: FakeLLMServer, text: str
) -> None:
    async with MiniAgents():
        with pytest.raises(
            LLMError, match=r"agent 'anthropic_agent': input message 0 is a user turn with no text"
        ):
            await anthropic_agent.inquire(text, **ant(server, system="Be kind."))
    assert server.requests == []


async def test_anthropic_empty_user_turn_error_names_the_fork_and_every_blank_message(
    server: FakeLLMServer,
) -> None:
    claude = anthropic_agent.fork(alias="claude", **ant(server))
    async with MiniAgents():
        with pytest.raises(LLMError) as info:
            await claude.inquire(["q", {"content": "a", "role": "assistant"}, "", " "])
    assert info.value.provider == "anthropic"
    assert info.value.status is None  # nothing was sent: no HTTP status
    assert "agent 'claude': input messages 2, 3 are a user turn with no text ('', ' ')" in str(info.value)
    assert server.requests == []


async def test_the_fake_server_rejects_empty_user_text_like_the_real_anthropic_api(
    server: FakeLLMServer,
) -> None:
    """Why the Anthropic agent raises: the request it would otherwise send is answered with a 400."""
    server.enqueue(anthropic_stream("never used"))
    async with httpx.AsyncClient() as client:
        for content in ("", [{"type": "text", "text": ""}], [{"type": "text", "text": " "}]):
            response = await client.post(
                f"{server.base_url}/v1/messages",
                json={
                    "model": "m",
                    "max_tokens": 10,
                    "stream": True,
                    "messages": [{"role": "user", "content": content}],
                },
                headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
            )
            assert response.status_code == 400, content
            assert response.json()["error"]["type"] == "invalid_request_error"
    assert server.pending == 1


async def test_anthropic_leaves_out_a_blank_message_merged_into_a_user_turn_with_text(
    server: FakeLLMServer,
) -> None:
    server.enqueue(anthropic_stream("ok"))
    async with MiniAgents():
        await anthropic_agent.inquire(["", "q", " "], **ant(server))
    assert server.requests[0].validation_error is None
    assert server.requests[0].json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]}
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_an_empty_assistant_turn_in_the_history_still_works(
    server: FakeLLMServer, provider: str
) -> None:
    history = ["q1", {"content": "", "role": "assistant"}, "q2"]
    async with MiniAgents():
        if provider == "openai":
            server.enqueue(openai_stream("ok"))
            assert await openai_agent.inquire(history, **oai(server)).as_single_text() == "ok"
        else:
            server.enqueue(anthropic_stream("ok"))
            assert await anthropic_agent.inquire(history, **ant(server)).as_single_text() == "ok"
    request = server.requests[0]
    assert request.validation_error is None
    if provider == "openai":
        assert request.json["messages"] == [
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "q2"},
        ]
    else:  # the empty assistant text is left out, so the two user turns merge
        assert request.json["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "q1"}, {"type": "text", "text": "q2"}]}
        ]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_tool_calls_only_turn_with_no_text_goes_back_to_the_model(
    server: FakeLLMServer, provider: str
) -> None:
    async def lookup(city: str) -> str:
        """Look a city up."""
        return f"{city}: sunny"

    call = ToolCall("lookup", {"city": "Paris"}, id="call_1")
    if provider == "openai":
        server.enqueue(openai_stream(tool_calls=[call]), openai_stream("It is sunny."))
        agent, options = openai_agent, oai(server, tools=[lookup])
    else:
        server.enqueue(anthropic_stream(tool_uses=[call]), anthropic_stream("It is sunny."))
        agent, options = anthropic_agent, ant(server, tools=[lookup])
    async with MiniAgents():
        replies = await agent.inquire("weather in Paris?", **options)
    assert [str(m) for m in replies] == ["", "Paris: sunny", "It is sunny."]
    second = server.requests[1]
    assert second.validation_error is None
    if provider == "openai":
        assert second.json["messages"][1]["content"] == ""
        assert second.json["messages"][1]["tool_calls"][0]["id"] == "call_1"
    else:
        assert second.json["messages"][1]["content"] == [
            {"type": "tool_use", "id": "call_1", "name": "lookup", "input": {"city": "Paris"}}
        ]


async def test_a_call_with_no_input_message_sends_no_user_turn(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("a poem"), anthropic_stream("a poem"))
    async with MiniAgents():
        await openai_agent.inquire(None, **oai(server, system="Write a poem."))
        await anthropic_agent.inquire(None, **ant(server, system="Write a poem."))
    assert [r.validation_error for r in server.requests] == [None, None]
    assert server.requests[0].json["messages"] == [{"role": "system", "content": "Write a poem."}]
    assert server.requests[1].json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "(conversation start)"}]}
    ]


_MESSAGE = st.one_of(
    st.sampled_from(["", " ", "\n", "q", " q "]).map(lambda text: {"content": text}),
    st.sampled_from(["", "\n\n", "a"]).map(lambda text: {"content": text, "role": "assistant"}),
    st.sampled_from(["", "rule"]).map(lambda text: {"content": text, "role": "system"}),
)


def _reference(history: list[dict[str, Any]]) -> tuple[bool, bool]:
    """Reference model: (is there a user turn with no text, does the conversation start with a user turn)."""
    runs: list[list[str]] = []
    roles: list[str] = []
    for message in history:
        role = message.get("role", "user")
        if role == "system" or (role == "assistant" and not message["content"].strip()):
            continue  # moved to `system` / left out: the neighbouring turns merge
        if role == "user" and roles[-1:] == ["user"]:
            runs[-1].append(message["content"])
        elif role == "user":
            runs.append([message["content"]])
        roles.append(role)
    return any(not any(text.strip() for text in run) for run in runs), roles[:1] == ["user"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(_MESSAGE, max_size=8))
def test_property_anthropic_mapping_raises_exactly_for_a_user_turn_without_text_else_the_api_accepts_it(
    history: list[dict[str, Any]],
) -> None:
    """For any history: the mapping raises exactly when a user turn has no text; otherwise the request passes
    the fake server's copy of the API's checks and keeps every user text, in order."""
    messages = [TextMessage(**m) for m in history]
    options = parse_options("test", {"model": "m"})
    has_blank_user_turn, starts_with_user = _reference(history)
    if has_blank_user_turn:
        with pytest.raises(LLMError, match="agent 'claude'"):
            anthropic_messages(options, messages, agent="claude")
        return
    _, turns = anthropic_messages(options, messages, agent="claude")
    body = {"model": "m", "max_tokens": 10, "stream": True, "messages": turns}
    assert _validate_anthropic(body) is None
    sent = [b["text"] for t in turns if t["role"] == "user" for b in t["content"]]
    expected = [m["content"] for m in history if "role" not in m and m["content"].strip()]
    assert sent == (expected if starts_with_user else ["(conversation start)", *expected])


# -- options: checked where they are given ------------------------------------------------------------------------
@pytest.mark.parametrize("agent", [openai_agent, anthropic_agent], ids=lambda a: a.alias)
def test_a_mistyped_option_is_rejected_by_fork_naming_the_agent_and_the_likely_option(
    agent: MiniAgent,
) -> None:
    with pytest.raises(
        TypeError, match=rf"agent '{agent.alias}' got unknown option 'sytem' \(did you mean 'system'\?\)"
    ):
        agent.fork(sytem="Be brief.")


def test_a_fork_names_its_own_alias_and_every_unknown_option() -> None:
    with pytest.raises(TypeError) as info:
        openai_agent.fork(alias="brief", modle="m", tempreture=0.5)
    assert str(info.value) == (
        "agent 'brief' got unknown options 'modle' (did you mean 'model'?), "
        "'tempreture' (did you mean 'temperature'?)"
    )


def test_an_unknown_option_without_a_close_match_lists_the_options() -> None:
    with pytest.raises(
        TypeError, match=r"got unknown option 'colour'; the options are: .*\bsystem\b.*\btop_p\b"
    ):
        openai_agent.fork(colour="red")


def test_a_fork_of_a_fork_is_checked_too() -> None:
    brief = openai_agent.fork(alias="brief", model="m", system="Be brief.")
    with pytest.raises(TypeError, match=r"agent 'brief' got unknown option 'temprature'"):
        brief.fork(temprature=1)
    with pytest.raises(TypeError, match=r"agent 'briefer' got unknown option 'temprature'"):
        brief.fork(alias="briefer", temprature=1)
    assert brief.fork(temperature=1).default_kwargs["system"] == "Be brief."


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"timeout": -1}, ValueError, r"agent 'openai_agent': timeout must be a positive number of seconds"),
        ({"max_retries": 1.5}, ValueError, r"max_retries must be an int >= 0"),
        ({"http_client": "client"}, TypeError, r"http_client must be an httpx\.AsyncClient"),
        ({"api_key": 123}, TypeError, r"api_key must be a str, got int"),
        ({"model": ""}, TypeError, r"agent 'openai_agent' needs model=<model name>"),
    ],
)
def test_a_bad_option_value_is_rejected_by_fork(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        openai_agent.fork(**options)


def test_fork_without_a_model_is_fine_the_model_is_needed_only_by_the_call() -> None:
    assert openai_agent.fork(system="Be brief.").default_kwargs == {"system": "Be brief."}


async def test_a_mistyped_option_of_a_call_raises_at_inquire_and_initiate_call_before_anything_is_sent(
    server: FakeLLMServer,
) -> None:
    async with MiniAgents():
        with pytest.raises(
            TypeError, match=r"agent 'anthropic_agent' got unknown option 'sytem' \(did you mean"
        ):
            anthropic_agent.inquire("q", sytem="Be brief.", **ant(server))  # not awaited: raised by inquire()
        with pytest.raises(
            TypeError, match=r"agent 'openai_agent' got unknown option 'max_token' \(did you mean"
        ):
            openai_agent.initiate_call(max_token=5, **oai(server))
        with pytest.raises(TypeError, match=r"needs model"):
            await openai_agent.fork(system="s").inquire("q")  # the merged options are checked when it runs
    assert server.requests == []


def test_local_agent_checks_its_options_at_fork_too() -> None:
    with pytest.raises(
        TypeError,
        match=r"agent 'local_agent' got unknown option 'chat_fromat' \(did you mean 'chat_format'\?\)",
    ):
        local_agent.fork(chat_fromat="gemma")
    with pytest.raises(TypeError, match=r"agent 'local' sets base_url, model itself; do not pass them"):
        local_agent.fork(alias="local", model="x", base_url="http://x")
    assert local_agent.fork(chat_format="gemma", system="s", max_tokens=8).alias == "local_agent"


# -- the core mechanism: MiniAgent(kwargs_validator=...) --------------------------------------------------------
async def test_kwargs_validator_sees_defaults_at_creation_and_fork_and_each_calls_own_kwargs() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    ran: list[dict[str, Any]] = []

    def only_small_ints(alias: str, kwargs: Any) -> None:
        seen.append((alias, dict(kwargs)))
        for name, value in kwargs.items():
            if not isinstance(value, int) or value > 9:
                raise ValueError(f"agent {alias!r}: {name} must be a small int")

    async def body(ctx: InteractionContext, **kwargs: Any) -> None:
        ran.append(dict(kwargs))

    agent = MiniAgent(body, alias="small", kwargs_validator=only_small_ints)
    assert seen == []  # no default kwargs: nothing to check
    forked = agent.fork(alias="small2", a=1)
    assert seen == [("small2", {"a": 1})]
    with pytest.raises(ValueError, match=r"agent 'small3': b must be a small int"):
        forked.fork(alias="small3", b=10)
    assert seen[-1] == ("small3", {"a": 1, "b": 10})

    async with MiniAgents():
        with pytest.raises(ValueError, match=r"agent 'small2': c must be a small int"):
            forked.inquire(c=99)
        await forked.inquire(c=2)
        await forked.inquire()
    assert seen[-2:] == [("small2", {"c": 99}), ("small2", {"c": 2})]  # the call's kwargs, not the merge
    assert ran == [{"a": 1, "c": 2}, {"a": 1}]  # the rejected call never ran


def test_without_a_validator_a_kwargs_function_accepts_anything_as_before() -> None:
    async def body(ctx: InteractionContext, **kwargs: Any) -> None:
        pass

    assert MiniAgent(body).fork(sytem="x").default_kwargs == {"sytem": "x"}
