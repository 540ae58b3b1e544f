"""End-to-end tests of openai_agent / anthropic_agent against the fake server over real sockets."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import httpx
import pytest
from llm_helpers import DEADLINE, collect, failure_of

from miniagents import AgentCallCancelledError, MiniAgents
from miniagents.llms import (
    AuthenticationError,
    LLMConnectionError,
    LLMError,
    LLMTimeoutError,
    MalformedResponseError,
    NotFoundError,
    OverloadedError,
    RateLimitError,
    ServerError,
    TruncatedStreamError,
    anthropic_agent,
    openai_agent,
)
from miniagents.testing.fake_llm_server import (
    SSE,
    FakeLLMServer,
    Gate,
    Hang,
    anthropic_error,
    anthropic_stream,
    openai_error,
    openai_stream,
    raw_response,
)

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-0123456789"
FAST_RETRY = {"initial_delay": 0.01, "max_delay": 0.02}


def oai(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "base_url": server.openai_base_url, "api_key": KEY, **kwargs}


def ant(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "claude-test", "base_url": server.anthropic_base_url, "api_key": KEY, **kwargs}


def secret_reachable(exc: BaseException, secret: str) -> list[str]:
    """Where *secret* can be read from *exc*: its text, args, and the chained exceptions and their requests."""
    found: list[str] = []
    seen: set[int] = set()
    todo: list[tuple[str, BaseException]] = [("error", exc)]
    while todo:
        where, current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if secret in str(current) or secret in repr(current) or secret in repr(current.args):
            found.append(f"{where}: {type(current).__name__} text/args")
        request = getattr(current, "_request", None)
        if isinstance(request, httpx.Request) and any(secret in v for v in request.headers.values()):
            found.append(f"{where}: {type(current).__name__}.request.headers")
        for attr in ("__cause__", "__context__"):
            chained = getattr(current, attr)
            if chained is not None:
                todo.append((f"{where}.{attr}", chained))
        for sub in getattr(current, "exceptions", ()) or ():
            todo.append((f"{where}.exceptions[]", sub))
    return found


PROVIDERS = [
    pytest.param((openai_agent, oai, openai_stream, openai_error), id="openai"),
    pytest.param((anthropic_agent, ant, anthropic_stream, anthropic_error), id="anthropic"),
]


# -- streaming text ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streams_tokens_and_resolves_message(server: FakeLLMServer, provider: Any) -> None:
    agent, opts, stream, _ = provider
    server.enqueue(stream(["Hel", "lo, ", "wörld ✓"]))
    async with MiniAgents():
        replies = agent.inquire("hi", **opts(server))
        promises = [p async for p in replies.promises()]
        assert len(promises) == 1
        tokens = [t async for t in promises[0]]
        message = await promises[0]
    assert tokens == ["Hel", "lo, ", "wörld ✓"]
    assert message.content == "Hello, wörld ✓"
    assert message.role == "assistant"
    assert message.provider == ("openai" if agent is openai_agent else "anthropic")
    if agent is openai_agent:
        assert message.model == "fake-gpt"
        assert message.finish_reason == "stop"
        assert message.usage == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
        assert message.request_id == "req_fake_openai"
        assert message.response_id == "chatcmpl-fake"
    else:
        assert message.model == "fake-claude"
        assert message.finish_reason == "end_turn"
        assert message.usage["input_tokens"] == 11 and message.usage["output_tokens"] == 3
        assert message.request_id == "req_fake_anthropic"
        assert message.response_id == "msg_fake"


async def test_tokens_are_visible_before_the_stream_ends(server: FakeLLMServer) -> None:
    gate = Gate()
    server.enqueue(openai_stream(["first", "second"], gate=gate, gate_after=2))
    async with MiniAgents():
        replies = openai_agent.inquire("hi", **oai(server))
        async for promise in replies.promises():
            tokens = aiter(promise)
            assert await anext(tokens) == "first"  # the server is still holding back the rest
            assert not server.requests[0].finished
            gate.open()
            assert [t async for t in tokens] == ["second"]


async def test_openai_request_body_and_headers(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("ok"))
    async with MiniAgents():
        await openai_agent.inquire(
            [
                "q1",
                {"content": "earlier answer", "role": "assistant"},
                {"content": "rule", "role": "system"},
                "q2",
            ],
            **oai(
                server,
                system="Be brief.",
                temperature=0,
                max_tokens=20,
                stop="END",
                extra_body={"seed": 1},
                extra_headers={"x-trace": "t1"},
            ),
        )
    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["x-trace"] == "t1"
    assert request.json == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "earlier answer"},
            {"role": "system", "content": "rule"},
            {"role": "user", "content": "q2"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_completion_tokens": 20,
        "stop": ["END"],
        "seed": 1,
    }


async def test_anthropic_request_mapping(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("ok"))
    async with MiniAgents():
        await anthropic_agent.inquire(
            [
                {"content": "I start", "role": "assistant"},
                "u1",
                "u2",
                {"content": "extra rule", "role": "system"},
                {"content": "a1", "role": "assistant"},
                {"content": "a2", "role": "assistant"},
                "u3",
            ],
            **ant(server, system="Be brief.", temperature=0.5, stop=["X"]),
        )
    body = server.requests[0].json
    assert server.requests[0].validation_error is None
    assert server.requests[0].headers["x-api-key"] == KEY
    assert server.requests[0].headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == "Be brief.\n\nextra rule"
    assert body["max_tokens"] == 4096
    assert body["temperature"] == 0.5
    assert body["stop_sequences"] == ["X"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert body["messages"][1]["content"] == [{"type": "text", "text": "I start"}]
    assert body["messages"][2]["content"] == [{"type": "text", "text": "u1"}, {"type": "text", "text": "u2"}]
    assert body["messages"][3]["content"] == [{"type": "text", "text": "a1"}, {"type": "text", "text": "a2"}]


async def test_anthropic_mapping_drops_whitespace_only_text(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream("ok"))
    async with MiniAgents():
        # An earlier LLM reply that was only newlines (models do that), a blank user message, a blank rule.
        await anthropic_agent.inquire(
            ["q1", {"content": "\n\n", "role": "assistant"}, " ", {"content": "\t", "role": "system"}, "q2"],
            **ant(server, system=" "),
        )
    request = server.requests[0]
    assert request.validation_error is None
    assert "system" not in request.json
    # Whitespace-only texts dropped, then the same-role merge: one user turn remains.
    assert request.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "q1"}, {"type": "text", "text": "q2"}]}
    ]


async def test_anthropic_prefill_loses_its_trailing_whitespace(server: FakeLLMServer) -> None:
    # A final assistant turn is a prefill; the real API rejects one ending in whitespace.
    server.enqueue(anthropic_stream(" world"))
    async with MiniAgents():
        replies = await anthropic_agent.inquire(
            ["Say hello world", {"content": "hello \n", "role": "assistant"}], **ant(server)
        )
    assert server.requests[0].json["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "hello"}],
    }
    assert [str(m) for m in replies] == [" world"]


async def test_fake_server_rejects_whitespace_only_text_like_the_real_api(server: FakeLLMServer) -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "stream": True,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "q1"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "\n\n"}]},
            {"role": "user", "content": [{"type": "text", "text": "q2"}]},
        ],
    }
    server.enqueue(anthropic_stream("ok"))
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{server.base_url}/v1/messages",
            json=body,
            headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
        )
    assert response.status_code == 400
    assert "non-whitespace" in response.json()["error"]["message"]


async def test_llm_replies_become_assistant_turns_in_the_next_call(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("first answer"), openai_stream("second answer"))
    async with MiniAgents():
        first = openai_agent.inquire("q1", **oai(server))
        await openai_agent.inquire(["q1", first, "q2"], **oai(server))
    assert server.requests[1].json["messages"] == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "q2"},
    ]


async def test_fork_and_environment_configuration(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key-2")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.anthropic_base_url + "/")
    server.enqueue(openai_stream("a"), anthropic_stream("b"))
    brief = openai_agent.fork(alias="brief", model="gpt-x", system="Short.")
    async with MiniAgents():
        assert await brief.inquire("q").as_single_text() == "a"
        assert await anthropic_agent.inquire("q", model="c").as_single_text() == "b"
    assert server.requests[0].headers["authorization"] == "Bearer env-key"
    assert server.requests[0].json["model"] == "gpt-x"
    assert server.requests[0].json["messages"][0] == {"role": "system", "content": "Short."}
    assert server.requests[1].headers["x-api-key"] == "env-key-2"


async def test_option_validation() -> None:
    async with MiniAgents():
        with pytest.raises(TypeError, match="needs model"):
            await openai_agent.inquire("q")
        with pytest.raises(TypeError, match="unknown option"):
            await openai_agent.inquire("q", model="m", temprature=1)


async def test_pings_unknown_events_comments_crlf_and_tiny_chunks(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream(["a", "é", "漢"], unknown_events=True, newline="\r\n", chunk_size=1))
    server.enqueue(openai_stream(["a", "é", "漢"], comments=True, newline="\r", chunk_size=3))
    async with MiniAgents():
        assert await anthropic_agent.inquire("q", **ant(server)).as_single_text() == "aé漢"
        assert await openai_agent.inquire("q", **oai(server)).as_single_text() == "aé漢"


async def test_server_without_usage_chunk(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("x", usage=None))
    async with MiniAgents():
        (message,) = await openai_agent.inquire("q", **oai(server))
    assert message.get("usage") is None and message.finish_reason == "stop"


# -- truncation and mid-stream errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("how", ["truncate", "abort"])
async def test_truncated_stream_is_an_error_after_visible_tokens(
    server: FakeLLMServer, provider: Any, how: str
) -> None:
    agent, opts, stream, _ = provider
    server.enqueue(stream(["par", "tial"], **{how: True}))
    async with MiniAgents():
        replies = agent.inquire("q", **opts(server))
        async for promise in replies.promises():
            tokens: list[str] = []
            with pytest.raises(TruncatedStreamError):
                await collect(promise, tokens)
            assert tokens == ["par", "tial"]
        with pytest.raises(TruncatedStreamError):
            await replies
    assert len(server.requests) == 1  # a started stream is never retried


async def test_openai_done_without_finish_reason_is_truncated(server: FakeLLMServer) -> None:
    response = openai_stream("x", truncate=True)
    server.enqueue(
        type(response)(status=200, headers=response.headers, body=(*response.body, b"data: [DONE]\n\n"))
    )
    async with MiniAgents():
        with pytest.raises(TruncatedStreamError, match="finish_reason"):
            await openai_agent.inquire("q", **oai(server))


async def test_empty_200_body_is_truncated(server: FakeLLMServer) -> None:
    # llama-cpp-python answers a context overflow with HTTP 200 and an empty body.
    server.enqueue(raw_response(200, b"", content_type="text/event-stream"))
    async with MiniAgents():
        with pytest.raises(TruncatedStreamError):
            await openai_agent.inquire("q", **oai(server))


async def test_mid_stream_errors(server: FakeLLMServer) -> None:
    server.enqueue(
        anthropic_stream(["so", "far"], error={"type": "overloaded_error", "message": "Overloaded"})
    )
    server.enqueue(
        openai_stream(["so"], error={"message": "The server had an error", "type": "server_error"})
    )
    async with MiniAgents():
        replies = anthropic_agent.inquire("q", **ant(server))
        with pytest.raises(OverloadedError) as caught:
            await replies
        assert caught.value.status is None and caught.value.request_id == "req_fake_anthropic"
        promise = await anext(aiter(replies.promises()))
        with pytest.raises(OverloadedError):
            async for _ in promise:
                pass
        assert promise.statistics().pieces == 2  # the tokens stay visible
        with pytest.raises(ServerError, match="The server had an error"):
            await openai_agent.inquire("q", **oai(server))
    assert len(server.requests) == 2  # not retried


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("how", ["read_timeout", "abort"])
async def test_mid_stream_transport_errors_keep_no_httpx_exception_in_the_chain(
    server: FakeLLMServer, provider: Any, how: str
) -> None:
    agent, opts, stream, _ = provider
    if how == "read_timeout":
        server.enqueue(stream(["a", "b", "c"], hang_after=2 if agent is openai_agent else 4))
        extra: dict[str, Any] = {"read_timeout": 0.3}
    else:
        server.enqueue(stream(["a", "b"], abort=True))
        extra = {}
    async with MiniAgents():
        error = await failure_of(agent.inquire("q", **opts(server, **extra)))
    assert isinstance(error, (LLMTimeoutError, TruncatedStreamError))
    # Not just suppressed (`from None`): the httpx exception, whose request holds the key, is not kept at all.
    assert not isinstance(error.__context__, httpx.HTTPError)
    assert not secret_reachable(error, KEY), secret_reachable(error, KEY)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_malformed_event_payload_fails_the_message_with_a_typed_error(
    server: FakeLLMServer, provider: Any
) -> None:
    agent, opts, stream, _ = provider
    if agent is openai_agent:
        bad = SSE({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": "oops"}]})
    else:
        bad = SSE({"type": "content_block_delta", "index": 0, "delta": "oops"}, event="content_block_delta")
    good = stream(["a", "b"])
    body = list(good.body)
    body.insert(2 if agent is openai_agent else 4, bad)  # right after the first token
    server.enqueue(type(good)(status=200, headers=good.headers, body=body))
    errors: list[BaseException] = []
    try:
        async with MiniAgents():
            replies = agent.inquire("q", **opts(server))
            promise = await anext(aiter(replies.promises()))
            tokens: list[str] = []
            with pytest.raises(MalformedResponseError, match="malformed stream event"):
                await collect(promise, tokens)
            assert tokens == ["a"]  # streamed tokens stay visible, then the message fails
            errors.append(await failure_of(replies))
    except BaseException as exc:
        errors.append(exc)
    assert len(errors) == 1 and isinstance(errors[0], MalformedResponseError), errors


async def test_non_event_stream_2xx_is_a_malformed_response_with_a_snippet(server: FakeLLMServer) -> None:
    # e.g. a compatible server (or a proxy) that ignores stream: true and answers one JSON completion
    server.enqueue(
        raw_response(200, b'{"object": "chat.completion", "choices": []}', content_type="application/json")
    )
    async with MiniAgents():
        with pytest.raises(MalformedResponseError, match="text/event-stream") as caught:
            await openai_agent.inquire("q", **oai(server))
    assert caught.value.status == 200
    assert "chat.completion" in str(caught.value)
    assert len(server.requests) == 1  # a 2xx is never retried


@pytest.mark.parametrize("where", ["stream", "error_body"])
async def test_undecodable_content_encoding_is_a_typed_error_without_the_key(
    server: FakeLLMServer, where: str
) -> None:
    if where == "stream":
        good = openai_stream("x")
        server.enqueue(
            type(good)(status=200, headers={**dict(good.headers), "content-encoding": "gzip"}, body=good.body)
        )
        expected: type[LLMError] = MalformedResponseError
    else:  # e.g. a proxy's 502 page labelled gzip (httpx itself sent accept-encoding: gzip)
        server.enqueue(raw_response(502, b"Bad Gateway", headers={"content-encoding": "gzip"}))
        expected = ServerError  # the status still says what happened
    async with MiniAgents():
        error = await failure_of(openai_agent.inquire("q", **oai(server, max_retries=0)))
    assert isinstance(error, expected), repr(error)
    assert not secret_reachable(error, KEY), secret_reachable(error, KEY)


# -- HTTP errors and retries ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "cls", "requests"),
    [
        (openai_error(401, "Incorrect API key provided"), AuthenticationError, 1),
        (openai_error(404, "The model `x` does not exist"), NotFoundError, 1),
        (openai_error(429, "Rate limit reached", retry_after_ms=1), RateLimitError, 3),
        (openai_error(429, "quota", code="insufficient_quota", type="insufficient_quota"), RateLimitError, 1),
        (openai_error(500, "oops", should_retry=False), ServerError, 1),
        (raw_response(500, "Internal Server Error"), ServerError, 3),
        (
            raw_response(401, '{"detail": "Invalid API Key"}', content_type="application/json"),
            AuthenticationError,
            1,
        ),
        (anthropic_error(529, "Overloaded"), OverloadedError, 3),
    ],
)
async def test_http_errors_are_typed_and_retried_as_documented(
    server: FakeLLMServer, response: Any, cls: type[LLMError], requests: int
) -> None:
    server.handler = lambda request: response
    async with MiniAgents():
        with pytest.raises(cls) as caught:
            await openai_agent.inquire("q", **oai(server, retry_policy=FAST_RETRY))
    assert len(server.requests) == requests
    error = caught.value
    assert error.status == response.status
    assert KEY not in str(error) and KEY not in repr(error) and error.__cause__ is None


async def test_retries_then_succeeds_and_honours_retry_after(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_error(529, retry_after_ms=300), anthropic_error(500), anthropic_stream("fine"))
    async with MiniAgents():
        started = anyio.current_time()
        text = await anthropic_agent.inquire("q", **ant(server, retry_policy={"initial_delay": 0.01}))
        elapsed = anyio.current_time() - started
    assert [m.content for m in text] == ["fine"]
    assert len(server.requests) == 3
    assert elapsed >= 0.3  # the server's retry-after-ms was waited for (a lower bound cannot flake)


async def test_max_retries_zero(server: FakeLLMServer) -> None:
    server.handler = lambda request: openai_error(503)
    async with MiniAgents():
        with pytest.raises(ServerError):
            await openai_agent.inquire("q", **oai(server, max_retries=0))
    assert len(server.requests) == 1


async def test_validation_failure_reaches_the_caller_as_bad_request(server: FakeLLMServer) -> None:
    async with MiniAgents():
        with pytest.raises(AuthenticationError):
            await openai_agent.inquire("q", **oai(server, api_key=""))


async def test_connection_refused_is_retried_then_raised() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with MiniAgents():
        with pytest.raises(LLMConnectionError) as caught:
            await openai_agent.inquire(
                "q", model="m", api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1", retry_policy=FAST_RETRY
            )
    assert KEY not in repr(caught.value) and KEY not in str(caught.value)


async def test_base_url_with_an_impossible_port_is_a_typed_error() -> None:
    async with MiniAgents():
        with pytest.raises(LLMError, match="port 99999") as caught:
            await openai_agent.inquire("q", model="m", api_key=KEY, base_url="http://127.0.0.1:99999/v1")
    assert KEY not in str(caught.value) and caught.value.__context__ is None


# -- timeouts and cancellation ----------------------------------------------------------------------------------
# The disconnects are awaited inside the MiniAgents context (or while a caller-owned client is still open): the
# pooled client is closed when the context exits, which would disconnect the server anyway.
async def test_read_timeout_mid_stream_keeps_tokens_and_disconnects(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream(["a", "b", "c"], hang_after=2))
    async with MiniAgents():
        replies = openai_agent.inquire("q", **oai(server, read_timeout=0.3))
        promise = await anext(aiter(replies.promises()))
        tokens: list[str] = []
        with pytest.raises(LLMTimeoutError):
            await collect(promise, tokens)
        assert tokens == ["a"]
        with anyio.fail_after(DEADLINE):
            await server.requests[0].wait_disconnected()
    assert len(server.requests) == 1


async def test_timeout_before_headers_is_retried(server: FakeLLMServer) -> None:
    slow = openai_stream("late")
    server.enqueue(type(slow)(status=200, headers=slow.headers, body=slow.body, before_headers=Hang()))
    server.enqueue(openai_stream("fast"))
    async with MiniAgents():
        text = await openai_agent.inquire("q", **oai(server, read_timeout=0.3, retry_policy=FAST_RETRY))
        assert [m.content for m in text] == ["fast"]
        with anyio.fail_after(DEADLINE):
            await server.requests[0].wait_disconnected()


async def test_whole_call_timeout(server: FakeLLMServer) -> None:
    server.enqueue(anthropic_stream(["a", "b"], hang_after=3))
    async with MiniAgents():
        with pytest.raises(LLMTimeoutError, match=r"timeout=0\.3"):
            await anthropic_agent.inquire("q", **ant(server, timeout=0.3))
        with anyio.fail_after(DEADLINE):
            await server.requests[0].wait_disconnected()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_cancelling_the_consumer_scope_closes_the_http_stream(
    server: FakeLLMServer, provider: Any
) -> None:
    agent, opts, stream, _ = provider
    # Hang right after the first text event (OpenAI: role chunk, token; Anthropic: start, ping, block, delta).
    server.enqueue(stream(["tok", "never"], hang_after=2 if agent is openai_agent else 4))
    seen = []
    # A caller-owned client outlives the cancelled context: only the cancellation can close the stream.
    async with httpx.AsyncClient() as client:
        with anyio.CancelScope() as scope:
            async with MiniAgents():
                replies = agent.inquire("q", **opts(server, http_client=client))
                async for promise in replies.promises():
                    async for token in promise:
                        seen.append(token)
                        scope.cancel()
        assert seen == ["tok"]
        assert not client.is_closed
        with anyio.fail_after(DEADLINE):
            await server.requests[0].wait_disconnected()
    assert not server.requests[0].response_complete


async def test_cancelling_the_call_closes_the_http_stream(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream(["tok", "never"], hang_after=2))
    async with MiniAgents():
        call = openai_agent.initiate_call(**oai(server)).send("q")
        replies = call.reply_sequence()
        promise = await anext(aiter(replies.promises()))
        assert await anext(aiter(promise)) == "tok"
        call.cancel()
        with pytest.raises(AgentCallCancelledError):
            await replies
        with anyio.fail_after(DEADLINE):
            await server.requests[0].wait_disconnected()


async def test_one_pooled_client_per_context(server: FakeLLMServer) -> None:
    server.enqueue(openai_stream("a"), openai_stream("b"))
    async with MiniAgents() as mas:
        await openai_agent.inquire("q", **oai(server))
        from miniagents.llms._http import HTTP_CLIENT_RESOURCE_KEY, shared_http_client

        client = shared_http_client()
        assert mas.shared_resource(HTTP_CLIENT_RESOURCE_KEY, lambda: None) is client
        await openai_agent.inquire("q", **oai(server))
    assert client.is_closed


async def test_illegal_key_is_not_retried_and_never_leaks(server: FakeLLMServer) -> None:
    bad_key = KEY + "\n"  # e.g. read from a file with its newline: httpx quotes illegal header values
    async with MiniAgents():
        with pytest.raises(LLMConnectionError) as caught:
            await openai_agent.inquire("q", **oai(server, api_key=bad_key))
    assert KEY not in str(caught.value) and KEY not in repr(caught.value)
    assert len(server.requests) == 0


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("where", ["api_key", "extra_headers"])
async def test_non_ascii_key_or_header_is_a_typed_error_that_never_carries_the_value(
    server: FakeLLMServer, provider: Any, where: str
) -> None:
    agent, opts, _, _ = provider
    bad = "sk-t\u00ebst-SECRET-0123456789"  # e.g. pasted with a typographic character or a non-breaking space
    extra = {"api_key": bad} if where == "api_key" else {"extra_headers": {"x-org": bad}}
    errors: list[BaseException] = []
    try:
        async with MiniAgents():
            errors.append(await failure_of(agent.inquire("q", **opts(server, **extra))))
    except BaseException as exc:
        errors.append(exc)
    assert errors and isinstance(errors[0], LLMError), repr(errors[0])
    assert "non-ASCII" in str(errors[0])
    for error in errors:
        assert not secret_reachable(error, bad), secret_reachable(error, bad)
    assert len(server.requests) == 0


async def test_the_message_resolves_without_waiting_for_the_rest_of_the_body(server: FakeLLMServer) -> None:
    # [DONE] arrives, then the server keeps the body open: the reply must not wait for it to end.
    server.enqueue(openai_stream(["all ", "there"], hang_after=10_000))
    async with MiniAgents():
        replies = openai_agent.inquire("hi", **oai(server))
        with anyio.fail_after(5):
            async for promise in replies.promises():
                message = await promise
                assert message.content == "all there"
                assert not server.requests[0].disconnected  # not cut off by the drain first
