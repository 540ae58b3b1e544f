"""Regression tests for defects found in review: cancellation while recording, event loops, other httpx patches."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio

from miniagents import MiniAgents
from miniagents.llms import openai_agent
from miniagents.testing import Cassette, FakeLLMServer, Gate, Hang, ScriptedResponse, openai_stream
from miniagents.testing._cassette_format import load_cassette

DEAD = "http://127.0.0.1:9/v1"


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
        assert await race(DEAD) == "fast answer"
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
        assert await first_token_then_cancel(DEAD) == "first"
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
        assert trio.run(ask, DEAD, "ab") == ["a", "b"]
        assert asyncio.run(ask(DEAD, "cd")) == ["c", "d"]
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
