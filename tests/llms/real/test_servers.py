"""End-to-end checks of the real local LLM server started by ``miniagents.llms._local_server``.

They speak plain httpx to the server (not the project's adapters) and assert protocol structure only: the
model is the *base* Gemma 3 270M, its text is not coherent.  One server (llama.cpp's, from the prebuilt
``xllamacpp`` wheel) serves OpenAI chat completions and Anthropic messages, with and without tool calls.
Set ``MINIAGENTS_SKIP_REAL_LLM=1`` to skip this lane.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from miniagents.llms._local_server import LocalLLMServer, LocalLLMServerError

API_KEY = "test-key-not-secret"  # as started by conftest.local_llm
BEARER = {"Authorization": f"Bearer {API_KEY}"}
ANTHROPIC = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
GENERATE = 24  # tokens per request: enough for several chunks, quick at ~40-80 tokens/s
WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


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


async def sse_json_events(
    server: LocalLLMServer, body: dict[str, Any]
) -> list[tuple[str | None, dict[str, Any]]]:
    """POST a streamed ``/v1/messages`` request; return its ``(event, data)`` pairs."""
    events: list[tuple[str | None, dict[str, Any]]] = []
    async with (
        httpx.AsyncClient(timeout=60.0, trust_env=False) as client,
        client.stream(
            "POST", f"{server.url}/v1/messages", headers=ANTHROPIC, json={**body, "stream": True}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event, data in sse_events(response):
            events.append((event, json.loads(data)))
    for name, payload in events:
        assert name == payload["type"], "the SSE event name must match the data's type"
    return events


# ------------------------------------------------------------------------- OpenAI chat completions


async def test_server_lists_its_model(local_llm: LocalLLMServer) -> None:
    assert local_llm.base_url.startswith("http://127.0.0.1:")
    assert local_llm.base_url.endswith("/v1")
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"{local_llm.base_url}/models", headers=BEARER)
    assert response.status_code == 200
    assert local_llm.model in [m["id"] for m in response.json()["data"]]


async def test_server_streams_chat_completion_chunks_with_usage(local_llm: LocalLLMServer) -> None:
    chunks, done = await stream_openai_chunks(
        local_llm,
        {
            "model": local_llm.model,
            "messages": user_turn("Write one sentence about agents."),
            "max_tokens": GENERATE,
            "temperature": 0,
            "stream_options": {"include_usage": True},
        },
        headers=BEARER,
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
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage, "the server sends a usage chunk when asked"
    assert usage[-1]["completion_tokens"] >= 1


async def test_server_streams_a_required_tool_call_as_json_fragments(local_llm: LocalLLMServer) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather for a city.",
            "parameters": WEATHER_PARAMETERS,
        },
    }
    chunks, done = await stream_openai_chunks(
        local_llm,
        {
            "model": local_llm.model,
            "messages": user_turn("What is the weather in Paris?"),
            "tools": [tool],
            "tool_choice": "required",  # llama.cpp's server knows no named choice (it falls back to "auto")
            "parallel_tool_calls": False,
            "max_tokens": 64,
            "temperature": 0,
        },
        headers=BEARER,
    )
    assert done
    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    ids: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or []:
                index = call["index"]
                function = call.get("function") or {}
                if function.get("name"):
                    names[index] = function["name"]
                if call.get("id"):
                    ids[index] = call["id"]
                arguments[index] = arguments.get(index, "") + (function.get("arguments") or "")
    assert names == {0: "get_weather"}
    assert ids[0]
    assert isinstance(json.loads(arguments[0]), dict)  # the fragments assemble to one JSON object
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_server_renders_a_tool_round_trip_in_its_template(local_llm: LocalLLMServer) -> None:
    messages = [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny in Paris"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS}}]
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(
            f"{local_llm.url}/apply-template", headers=BEARER, json={"messages": messages, "tools": tools}
        )
    assert response.status_code == 200
    prompt = response.json()["prompt"]
    assert prompt.startswith("<start_of_turn>user\nYou can call these tools:\n")
    assert '"name": "get_weather"' in prompt
    assert "Use the tools.\n\nWhat is the weather in Paris?<end_of_turn>" in prompt
    assert '<start_of_turn>model\n<function=get_weather>{"city": "Paris"}</function><end_of_turn>' in prompt
    assert "<start_of_turn>user\n<tool_response>sunny in Paris</tool_response><end_of_turn>" in prompt
    assert prompt.endswith("<start_of_turn>model\n")


# ------------------------------------------------------------------------------- Anthropic messages


async def test_server_streams_anthropic_messages_events(local_llm: LocalLLMServer) -> None:
    events = await sse_json_events(
        local_llm,
        {
            "model": local_llm.model,
            "max_tokens": GENERATE,
            "system": "You are terse.",
            "messages": user_turn("Write one sentence about agents."),
        },
    )
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


async def test_server_streams_an_anthropic_tool_use_block(local_llm: LocalLLMServer) -> None:
    events = await sse_json_events(
        local_llm,
        {
            "model": local_llm.model,
            "max_tokens": 64,
            "messages": user_turn("What is the weather in Paris?"),
            "tools": [
                {"name": "get_weather", "description": "Get the weather.", "input_schema": WEATHER_PARAMETERS}
            ],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        },
    )
    blocks = [d["content_block"] for t, d in events if t == "content_block_start"]
    assert [b["type"] for b in blocks] == ["tool_use"]
    assert blocks[0]["name"] == "get_weather" and blocks[0]["id"]
    partial = "".join(
        d["delta"]["partial_json"] for t, d in events if t == "content_block_delta"
    )  # every delta of the block is an input_json_delta
    assert isinstance(json.loads(partial), dict)
    message_delta = next(d for t, d in events if t == "message_delta")
    assert message_delta["delta"]["stop_reason"] == "tool_use"


async def test_server_requires_its_api_key_on_both_protocols(local_llm: LocalLLMServer) -> None:
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        messages = await client.post(
            f"{local_llm.url}/v1/messages",
            headers={"x-api-key": "wrong-key"},
            json={"model": local_llm.model, "max_tokens": 4, "messages": user_turn("hi")},
        )
        chat = await client.post(
            f"{local_llm.base_url}/chat/completions",
            headers={"Authorization": "Bearer wrong-key"},
            json={"model": local_llm.model, "max_tokens": 4, "messages": user_turn("hi")},
        )
        health = await client.get(f"{local_llm.url}/health")  # public: the readiness probe needs no key
    assert messages.status_code == 401
    assert chat.status_code == 401
    assert health.status_code == 200


# --------------------------------------------------------------------------------------- lifecycle


async def test_server_stops_on_exit_and_reports_a_failed_start(anyio_backend: str) -> None:
    async with LocalLLMServer() as server:
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

    secret = "sk-secret-for-a-failed-start-123"
    with pytest.raises(LocalLLMServerError, match="exited before it was ready") as info:
        async with LocalLLMServer(api_key=secret, extra_args=["--no-such-option"]):
            pytest.fail("a server with a bad option must not start")
    assert "no-such-option" in str(info.value)  # the tail of the server's output is in the error
    assert secret not in str(info.value)  # the key went to the child in a file, not on its command line

    with pytest.raises(LocalLLMServerError, match="has no 'no_such_param'"):
        async with LocalLLMServer(extra_args=["--param", "no_such_param=1"]):
            pytest.fail("a server with an unknown parameter must not start")


def test_the_server_process_exits_when_its_parent_is_killed_outright() -> None:
    # A parent killed with SIGKILL never runs __aexit__: the child must notice by itself and not linger.
    program = (
        "import anyio\n"
        "from miniagents.llms._local_server import LocalLLMServer\n"
        "async def main():\n"
        "    async with LocalLLMServer() as server:\n"
        "        print(server.pid, server.port, flush=True)\n"
        "        await anyio.sleep_forever()\n"
        "anyio.run(main)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert parent.stdout is not None
        pid, port = (int(field) for field in parent.stdout.readline().split())
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 60  # a bound for the wait, not a timing assertion
    while _is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _is_running(pid), f"the server process {pid} outlived its killed parent"
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited (its parent is gone)
    except FileNotFoundError:
        return False
