"""Record LLM exchanges from FakeLLMServer scripts, replay them offline: the same tokens, messages and errors;
requests and streams cancelled while recording, one cassette serving trio and asyncio runs, other httpx patches."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio
from cassette_helpers import DEAD_OPENAI_URL, DEAD_URL, SENTINEL, agent_for, run_graph, scripted_rounds

from miniagents import MiniAgents
from miniagents.llms import NotFoundError, TruncatedStreamError, openai_agent
from miniagents.testing import (
    Cassette,
    CassetteError,
    CassetteMismatchError,
    FakeLLMServer,
    Gate,
    Hang,
    Pause,
    ScriptedResponse,
    anthropic_stream,
    openai_error,
    openai_stream,
)
from miniagents.testing._cassette_format import load_cassette

pytestmark = pytest.mark.anyio
PROVIDERS = ["openai", "anthropic"]


def base_url(server: FakeLLMServer, provider: str) -> str:
    return server.openai_base_url if provider == "openai" else server.anthropic_base_url


def dead_url(provider: str) -> str:
    return DEAD_URL + "/v1" if provider == "openai" else DEAD_URL


async def record(provider: str, path: Path, **options: Any) -> Any:
    """Run the graph live against scripted responses with a recording cassette; return what it saw."""
    async with FakeLLMServer.serve() as server:
        server.enqueue(*scripted_rounds(provider, ["Sun", "ny ", "☀ ü"]))
        server.enqueue(*scripted_rounds(provider, ["Still ", "sunny."]))
        async with Cassette(path, mode="record", **options):
            return await run_graph(provider, base_url(server, provider))


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_replay_gives_identical_tokens_messages_tool_calls_and_usage(
    provider: str, tmp_path: Path
) -> None:
    path = tmp_path / "graph.jsonl"
    live = await record(provider, path)
    tokens, messages = live
    assert [m["role"] for m in messages] == ["assistant", "tool", "assistant"]
    assert messages[0]["tool_calls"][0]["name"] == "weather"
    assert "".join(tokens[2]) == "Sun" + "ny " + "☀ ü" and messages[2]["content"] == "Still sunny."
    assert all(m["usage"] for m in messages if m["role"] == "assistant")

    async with Cassette(path, mode="replay") as cassette:
        replayed = await run_graph(provider, dead_url(provider), api_key="")  # offline, and no key at all
    assert replayed == live
    stats = cassette.statistics()
    assert (stats.mode, stats.loaded, stats.replayed, stats.unused, stats.unmatched) == ("replay", 4, 4, 0, 0)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_thread_mode_replays_the_same(provider: str, tmp_path: Path) -> None:
    path = tmp_path / "graph.jsonl"
    live = await record(provider, path)
    with Cassette(path) as cassette:  # auto: the file exists, so it replays; the server runs in a thread
        assert cassette.active_mode == "replay"
        assert await run_graph(provider, dead_url(provider)) == live


async def test_rerecording_gives_the_same_file(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    await record("openai", first)
    await record("openai", second)
    assert first.read_bytes() == second.read_bytes()
    lines = first.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"format": "miniagents-llm-cassette", "version": 1}
    for line in lines:
        assert line == json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False)
        assert "latency" not in line and "delays" not in line
    entry = json.loads(lines[1])
    assert entry["request"]["path"] == "/v1/chat/completions"
    assert entry["request"]["body"]["messages"] == [{"content": "Weather in Zürich?", "role": "user"}]
    assert entry["response"]["headers"]["content-type"].startswith("text/event-stream")
    assert "".join(entry["response"]["chunks"]).startswith("data: {")


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_no_secret_ever_reaches_the_cassette(provider: str, tmp_path: Path) -> None:
    path = tmp_path / "secret.jsonl"
    async with FakeLLMServer.serve() as server:
        echo = f"you said {SENTINEL}, key Bearer {SENTINEL}"
        make = openai_stream if provider == "openai" else anthropic_stream
        server.enqueue(make(["Hi, ", echo], headers={"x-echo": SENTINEL, "request-id": SENTINEL}))
        async with Cassette(path, mode="record"), MiniAgents():
            agent = agent_for(provider, base_url(server, provider), api_key=SENTINEL)
            await agent.inquire(f"my key is {SENTINEL}", extra_body={"api_key": SENTINEL})
        sent = server.requests[0]
        assert SENTINEL in sent.body.decode()  # it really was sent, in the headers and the body
    text = path.read_text(encoding="utf-8")
    assert SENTINEL not in text
    lowered = text.lower()
    for header in ("authorization", "x-api-key", "x-echo"):
        assert header not in lowered
    # the message, extra_body's api_key, the two in the echoed text, the response header
    assert text.count("<redacted>") == 5

    async with Cassette(path, mode="replay"), MiniAgents():  # a different key: the request still matches
        agent = agent_for(provider, dead_url(provider), api_key="other-key-123")
        reply = await agent.inquire("my key is other-key-123", extra_body={"api_key": "whatever"})
    # openai's whole "Bearer <key>" header value is a secret; anthropic sends the bare key in x-api-key
    bearer = "" if provider == "openai" else "Bearer "
    assert reply[0].content == f"Hi, you said <redacted>, key {bearer}<redacted>"


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_unmatched_request_fails_the_agent_and_the_cassette(provider: str, tmp_path: Path) -> None:
    path = tmp_path / "graph.jsonl"
    await record(provider, path)
    cassette = Cassette(path, mode="replay")
    agent_errors: list[NotFoundError] = []

    async def run() -> None:
        async with cassette, MiniAgents():
            try:
                await agent_for(provider, dead_url(provider)).inquire("Weather in Bern?")
            except NotFoundError as error:
                agent_errors.append(error)

    with pytest.raises(CassetteMismatchError) as raised:
        await run()
    [agent_error] = agent_errors
    assert (agent_error.status, agent_error.error_type) == (404, "cassette_mismatch")
    message = str(agent_error)
    assert str(path) in message and "(entry at line 2)" in message
    diff_lines = message.splitlines()
    assert any(line.startswith("-") and '"Weather in Zürich?"' in line for line in diff_lines)
    assert any(line.startswith("+") and "Weather in Bern?" in line for line in diff_lines)
    assert len(cassette.problems) == 1 and cassette.problems[0] in str(raised.value)
    assert str(path) in str(raised.value)


async def test_a_request_repeated_more_often_than_recorded_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "once.jsonl"
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["one"]), openai_stream(["two"]))
        async with Cassette(path, mode="record"), MiniAgents():
            agent = openai_agent.fork(model="m", base_url=server.openai_base_url, api_key="k")
            assert [await agent.inquire("hi").as_single_text() for _ in range(2)] == ["one", "two"]
    seen: list[str] = []

    async def replay() -> None:
        async with Cassette(path, mode="replay"), MiniAgents():
            agent = openai_agent.fork(model="m", base_url=DEAD_URL + "/v1", api_key="k")
            seen.extend([await agent.inquire("hi").as_single_text() for _ in range(2)])
            try:
                await agent.inquire("hi")
            except NotFoundError as error:
                seen.append(error.message)

    with pytest.raises(CassetteMismatchError, match="already replayed"):
        await replay()
    assert seen[:2] == ["one", "two"]  # repeats are served in recorded order
    assert "its 2 recorded exchanges were already replayed" in seen[2]


async def test_record_missing_replays_what_exists_and_appends_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "grow.jsonl"
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["first"]))
        async with Cassette(path, mode="record"), MiniAgents():
            agent = openai_agent.fork(model="m", base_url=server.openai_base_url, api_key="k")
            await agent.inquire("a")
        server.enqueue(openai_stream(["second"]))
        async with Cassette(path, mode="record-missing") as cassette, MiniAgents():
            agent = openai_agent.fork(model="m", base_url=server.openai_base_url, api_key="k")
            assert await agent.inquire("a").as_single_text() == "first"  # from the cassette
            assert await agent.inquire("b").as_single_text() == "second"  # from the "provider"
        assert len(server.requests) == 2  # "a" went to the provider only while recording
        assert (cassette.statistics().replayed, cassette.statistics().recorded) == (1, 1)
    async with Cassette(path, mode="replay"), MiniAgents():
        agent = openai_agent.fork(model="m", base_url=DEAD_URL + "/v1", api_key="k")
        assert await agent.inquire("b").as_single_text() == "second"
        assert await agent.inquire("a").as_single_text() == "first"


async def test_errors_and_aborted_streams_replay_as_they_happened(tmp_path: Path) -> None:
    path = tmp_path / "errors.jsonl"

    async def run(url: str) -> list[str]:
        seen = []
        async with MiniAgents():
            agent = openai_agent.fork(model="m", base_url=url, api_key="k", max_retries=0)
            for question in ("bad", "cut"):
                try:
                    await agent.inquire(question)
                except (NotFoundError, TruncatedStreamError) as error:
                    seen.append(f"{type(error).__name__}: {error.message} {error.status} {error.request_id}")
        return seen

    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_error(404, "no such model", request_id="req_404"))
        server.enqueue(openai_stream(["half"], abort=True))
        async with Cassette(path, mode="record"):
            live = await run(server.openai_base_url)
    assert live[0] == "NotFoundError: no such model 404 req_404" and live[1].startswith(
        "TruncatedStreamError"
    )
    assert '"end": "abort"' in path.read_text(encoding="utf-8")
    async with Cassette(path, mode="replay"):
        assert await run(DEAD_URL + "/v1") == live


async def test_original_timing_is_recorded_and_replayed_as_pauses(tmp_path: Path) -> None:
    path = tmp_path / "timed.jsonl"
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["a", "b", "c"], delay=0.02))
        async with Cassette(path, mode="record", record_timing=True), MiniAgents():
            await openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key="k")
    response = json.loads(path.read_text(encoding="utf-8").splitlines()[1])["response"]
    assert len(response["delays"]) == len(response["chunks"]) and response["latency"] >= 0
    for timing, pauses in (("original", True), ("fast", False)):
        async with Cassette(path, mode="replay", timing=timing) as cassette, MiniAgents():
            reply = openai_agent.inquire("hi", model="m", base_url=DEAD_URL + "/v1", api_key="k")
            assert await reply.as_single_text() == "abc"
            assert cassette.server is not None
            scripted = cassette.server.requests[0].response
            assert scripted is not None
            assert any(isinstance(step, Pause) for step in scripted.body) is pauses


async def test_a_failed_block_saves_nothing_and_modes_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "failed.jsonl"
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["x"]))

        async def failing_test() -> None:
            async with Cassette(path, mode="record"), MiniAgents():
                await openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key="k")
                raise RuntimeError("test failed")

        with pytest.raises(RuntimeError, match="test failed"):
            await failing_test()
    assert not path.exists()
    with pytest.raises(CassetteError, match=f"{path.name} does not exist; record it first"):
        await Cassette(path, mode="replay").__aenter__()
    monkeypatch.setenv("MINIAGENTS_CASSETTE_MODE", "replay")
    assert Cassette(path).mode == "replay"
    monkeypatch.setenv("MINIAGENTS_CASSETTE_MODE", "sometimes")
    with pytest.raises(ValueError, match="MINIAGENTS_CASSETTE_MODE must be one of"):
        Cassette(path)
    with pytest.raises(ValueError, match="timing must be"):
        Cassette(path, mode="replay", timing="slow")  # type: ignore[arg-type]


async def test_ignored_fields_match_whatever_their_value(tmp_path: Path) -> None:
    path = tmp_path / "ignored.jsonl"
    options: dict[str, Any] = {"ignore_fields": ["metadata.user_id", "messages.*.name"]}
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["ok"]))
        async with Cassette(path, mode="record", **options), MiniAgents():
            await openai_agent.inquire(
                "hi",
                model="m",
                base_url=server.openai_base_url,
                api_key="k",
                extra_body={"metadata": {"user_id": 1}},
            )
    assert '"user_id": "<ignored>"' in path.read_text(encoding="utf-8")
    async with Cassette(path, mode="replay", **options), MiniAgents():
        reply = openai_agent.inquire(
            "hi", model="m", base_url=DEAD_URL + "/v1", api_key="k", extra_body={"metadata": {"user_id": 2}}
        )
        assert await reply.as_single_text() == "ok"


async def test_off_mode_and_other_routes_pass_through(tmp_path: Path) -> None:
    path = tmp_path / "off.jsonl"
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["live"]))
        async with Cassette(path, mode="off"), MiniAgents():
            reply = openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key="k")
            assert await reply.as_single_text() == "live"
        assert not path.exists()
        import httpx

        async with Cassette(path, mode="record"), httpx.AsyncClient() as client:
            response = await client.get(server.base_url + "/v1/models")  # not an LLM route: untouched
            assert response.status_code == 404
    assert not path.exists()


# ---------------------------------------------------------------------------------------------------------------
# Cancellation while recording, a cassette shared by event loops, other patches of httpx
def hanging(response: ScriptedResponse) -> ScriptedResponse:
    """*response*, but the server never sends its head (the client has to give up)."""
    return ScriptedResponse(
        status=response.status, headers=response.headers, body=response.body, before_headers=Hang()
    )


async def race(url: str) -> str:
    """Ask "fast" and "slow" at once; when "fast" has answered, cancel "slow" (a first-answer-wins graph)."""
    async with MiniAgents():
        calls = {}
        for question in ("fast", "slow"):
            call = openai_agent.initiate_call(model="m", base_url=url, api_key="k", max_retries=0)
            call.send(question).finish()
            calls[question] = call
        text = await calls["fast"].reply_sequence().as_single_text()
        calls["slow"].cancel()
        return text


@pytest.mark.anyio
async def test_a_request_cancelled_before_its_response_replays_as_such(tmp_path: Path) -> None:
    path = tmp_path / "race.jsonl"
    async with FakeLLMServer.serve() as server:
        server.handler = lambda request: (
            hanging(openai_stream(["never"])) if b"slow" in request.body else openai_stream(["fast answer"])
        )
        async with Cassette(path, mode="record"):
            assert await race(server.openai_base_url) == "fast answer"
    [slow] = [e for e in load_cassette(path) if e.request.body["messages"][0]["content"] == "slow"]
    assert (slow.status, slow.end, slow.chunks) == (None, "cancelled", ())
    async with Cassette(path, mode="replay") as cassette:  # "slow" is served no answer, as when recorded
        assert await race(DEAD_OPENAI_URL) == "fast answer"
    assert (cassette.statistics().replayed, cassette.problems) == (2, ())


@pytest.mark.anyio
async def test_a_stream_the_client_stopped_reading_replays_without_a_network_error(tmp_path: Path) -> None:
    path = tmp_path / "stopped.jsonl"

    async def first_token_then_cancel(url: str) -> str:
        async with MiniAgents():
            call = openai_agent.initiate_call(model="m", base_url=url, api_key="k", max_retries=0)
            call.send("hi").finish()
            async for promise in call.reply_sequence().promises():
                async for token in promise:
                    call.cancel()
                    return token
        raise AssertionError("no token")

    async with FakeLLMServer.serve() as server:
        stream = openai_stream(["first", "second"])
        # the server sends the first event(s), then waits forever: only the client's cancellation ends it
        server.enqueue(
            ScriptedResponse(
                status=200, headers=stream.headers, body=[stream.body[0], stream.body[1], Gate()]
            )
        )
        async with Cassette(path, mode="record"):
            assert await first_token_then_cancel(server.openai_base_url) == "first"
    [entry] = load_cassette(path)
    assert entry.end == "cancelled"  # not "abort": the provider did not break the connection
    async with Cassette(path, mode="replay") as cassette:
        assert await first_token_then_cancel(DEAD_OPENAI_URL) == "first"
    assert cassette.problems == ()


def test_a_thread_cassette_serves_a_trio_run_then_an_asyncio_run(tmp_path: Path) -> None:
    path = tmp_path / "loops.jsonl"

    async def ask(url: str, questions: str) -> list[str]:
        async with MiniAgents():
            replies = [
                openai_agent.inquire(q, model="m", base_url=url, api_key="k", max_retries=0)
                for q in questions
            ]
            return [await reply.as_single_text() for reply in replies]

    async def record() -> None:
        async with FakeLLMServer.serve() as server:
            server.handler = lambda request: openai_stream(
                [json.loads(request.body)["messages"][0]["content"]]
            )
            async with Cassette(path, mode="record"):
                assert await ask(server.openai_base_url, "abcd") == list("abcd")

    anyio.run(record)
    # e.g. a session-wide cassette over tests on both backends
    with Cassette(path, mode="replay") as cassette:
        assert trio.run(ask, DEAD_OPENAI_URL, "ab") == ["a", "b"]
        assert asyncio.run(ask(DEAD_OPENAI_URL, "cd")) == ["c", "d"]
    assert cassette.statistics().replayed == 4


@pytest.mark.anyio
async def test_an_httpx_patch_installed_after_import_stays_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instrumentation (e.g. OpenTelemetry's httpx instrumentor) that wraps the transport keeps working."""
    seen: list[str] = []
    wrapped = httpx.AsyncHTTPTransport.handle_async_request

    async def instrumented(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> Any:
        seen.append(request.url.path)
        return await wrapped(self, request)

    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", instrumented)
    async with FakeLLMServer.serve() as server:
        server.enqueue(openai_stream(["ok"]))
        async with Cassette(tmp_path / "c.jsonl", mode="record"), httpx.AsyncClient() as client:
            await client.get(server.base_url + "/v1/models")  # passes through the cassette
            async with MiniAgents():
                await openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key="k")
        assert httpx.AsyncHTTPTransport.handle_async_request is instrumented  # not the pre-import original
    assert seen == ["/v1/models", "/v1/chat/completions"]
