"""End-to-end checks of the real local LLM servers started by ``miniagents.llms._local_server``.

They speak plain httpx to the servers (not the project's adapters) and assert protocol structure only: the
model is the *base* Gemma 3 270M, its text is not coherent. The first run builds the artefacts (minutes);
set ``MINIAGENTS_SKIP_REAL_LLM=1`` to skip this lane.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from miniagents.llms._local_server import LocalLLMServer, LocalLLMServerError

API_KEY = "test-key-not-secret"  # as started by conftest.llama_server
GENERATE = 24  # tokens per request: enough for several chunks, quick at ~35 tokens/s


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str | None, str]]:
    """Yield ``(event, data)`` for each server-sent event (minimal parser: event and data fields)."""
    event: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


async def stream_openai_chunks(
    server: LocalLLMServer, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], bool]:
    """POST a streamed chat completion; return its JSON chunks and whether ``[DONE]`` ended it."""
    chunks: list[dict[str, Any]] = []
    done = False
    async with (
        httpx.AsyncClient(timeout=60.0, trust_env=False) as client,
        client.stream(
            "POST", f"{server.base_url}/chat/completions", json={**body, "stream": True}, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for _, data in sse_events(response):
            assert not done, "data after [DONE]"
            if data == "[DONE]":
                done = True
            else:
                chunks.append(json.loads(data))
    return chunks, done


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------- llama-cpp-python


async def test_llama_cpp_python_lists_its_model(llama_cpp_python: LocalLLMServer) -> None:
    assert llama_cpp_python.base_url.startswith("http://127.0.0.1:")
    assert llama_cpp_python.base_url.endswith("/v1")
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"{llama_cpp_python.base_url}/models")
    assert response.status_code == 200
    assert llama_cpp_python.model in [m["id"] for m in response.json()["data"]]


async def test_llama_cpp_python_streams_chat_completion_chunks(llama_cpp_python: LocalLLMServer) -> None:
    chunks, done = await stream_openai_chunks(
        llama_cpp_python,
        {
            "model": llama_cpp_python.model,
            "messages": user_turn("Write one sentence about agents."),
            "max_tokens": GENERATE,
            "temperature": 0,
        },
    )
    assert done, "the stream must end with data: [DONE]"
    assert len(chunks) >= 2
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert any(isinstance(d.get("content"), str) and d["content"] for d in deltas), "no content streamed"
    finish_reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish_reasons[-1] in ("stop", "length")
    assert all(reason is None for reason in finish_reasons[:-1])


async def test_llama_cpp_python_streams_tool_call_json(llama_cpp_python_tools: LocalLLMServer) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    chunks, done = await stream_openai_chunks(
        llama_cpp_python_tools,
        {
            "model": llama_cpp_python_tools.model,
            "messages": user_turn("What is the weather in Paris?"),
            "tools": [tool],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 64,
            "temperature": 0,
        },
    )
    assert done
    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or []:
                index = call["index"]
                function = call.get("function") or {}
                if function.get("name"):
                    names[index] = function["name"]
                arguments[index] = arguments.get(index, "") + (function.get("arguments") or "")
    assert names == {0: "get_weather"}
    assert isinstance(json.loads(arguments[0]), dict)  # the fragments assemble to one JSON object
    assert chunks[-1]["choices"][0]["finish_reason"] in ("tool_calls", "stop", "length")


# ------------------------------------------------------------------------------------ llama-server


async def test_llama_server_streams_anthropic_messages_events(llama_server: LocalLLMServer) -> None:
    events: list[tuple[str | None, dict[str, Any]]] = []
    async with (
        httpx.AsyncClient(timeout=60.0, trust_env=False) as client,
        client.stream(
            "POST",
            f"{llama_server.url}/v1/messages",
            headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
            json={
                "model": llama_server.model,
                "max_tokens": GENERATE,
                "system": "You are terse.",
                "messages": user_turn("Write one sentence about agents."),
                "stream": True,
            },
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event, data in sse_events(response):
            events.append((event, json.loads(data)))

    for name, payload in events:
        assert name == payload["type"], "the SSE event name must match the data's type"
    types = [t for t, _ in events if t != "ping"]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    assert types[-2] == "message_delta"
    assert "content_block_start" in types
    assert "content_block_delta" in types
    first_delta = types.index("content_block_delta")
    assert types.index("content_block_start") < first_delta < types.index("content_block_stop")
    start = events[0][1]["message"]
    assert start["role"] == "assistant"
    assert start["type"] == "message"
    text_deltas = [d["delta"] for t, d in events if t == "content_block_delta"]
    assert all(d["type"] == "text_delta" and isinstance(d["text"], str) for d in text_deltas)
    message_delta = next(d for t, d in events if t == "message_delta")
    assert message_delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence")
    assert message_delta["usage"]["output_tokens"] >= 1


async def test_llama_server_requires_its_api_key(llama_server: LocalLLMServer) -> None:
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        response = await client.post(
            f"{llama_server.url}/v1/messages",
            headers={"x-api-key": "wrong-key"},
            json={"model": llama_server.model, "max_tokens": 4, "messages": user_turn("hi")},
        )
    assert response.status_code == 401


async def test_llama_server_streams_openai_chunks_with_usage(llama_server: LocalLLMServer) -> None:
    chunks, done = await stream_openai_chunks(
        llama_server,
        {
            "model": llama_server.model,
            "messages": user_turn("Write one sentence about agents."),
            "max_tokens": GENERATE,
            "temperature": 0,
            "stream_options": {"include_usage": True},
        },
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert done
    finish_reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish_reasons[-1] in ("stop", "length")
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage, "llama-server sends a usage chunk when asked"
    assert usage[-1]["completion_tokens"] >= 1


# --------------------------------------------------------------------------------------- lifecycle


async def test_server_stops_on_exit_and_reports_a_failed_start(anyio_backend: str) -> None:
    async with LocalLLMServer("llama-server") as server:
        port = server.port
        assert server.startup_seconds is not None
        # outlive trio's idle worker threads (10 s): a server tied to the thread that spawned it
        # (a parent-death signal) was killed here
        await anyio.sleep(11)
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"{server.url}/health")).status_code == 200
    with pytest.raises(LocalLLMServerError):
        server.base_url  # noqa: B018 - not running any more
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the server still listens after exit"

    with pytest.raises(LocalLLMServerError, match="exited before it was ready") as info:
        async with LocalLLMServer("llama-server", extra_args=["--no-such-option"]):
            pytest.fail("a server with a bad option must not start")
    assert "no-such-option" in str(info.value)  # the tail of the server's output is in the error
