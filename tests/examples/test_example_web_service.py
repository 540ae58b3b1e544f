"""examples/web_service.py, live on 127.0.0.1: concurrent streamed answers, a client leaving, the store.

The service runs as a real process (uvicorn on asyncio, hypercorn's trio worker on trio: the same backend as the
test) whose LLM agents talk to a `FakeLLMServer` in this test's event loop, so the test sees every LLM request
and whether its client closed it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from miniagents.persistence import StoreReader
from miniagents.testing import FakeLLMServer, RecordedRequest, ScriptedResponse, openai_stream

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web_service.py"
LEAVING = "LEAVING question"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def question_of(request: RecordedRequest) -> str:
    return str(request.json["messages"][-1]["content"])


def script(request: RecordedRequest) -> ScriptedResponse:
    """Each expert answers in four tokens; both experts of the leaving client hang after their first token."""
    question = question_of(request)
    if question == LEAVING:
        return openai_stream(["never ", "finished"], hang_after=2)  # role chunk, first token, then silence
    expert = "optimist" if "optimist" in request.json["messages"][0]["content"] else "skeptic"
    return openai_stream([f"{expert} ", "on ", f"{question}", "."], delay=0.005)


async def read_events(response: httpx.Response, *, stop_after_token: bool = False) -> list[tuple[str, Any]]:
    """Parse a text/event-stream body into (event, data) pairs."""
    events: list[tuple[str, Any]] = []
    event, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if data:
                events.append((event, json.loads("\n".join(data))))
                if stop_after_token and event == "token":
                    return events
            event, data = "message", []
        elif line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])
    return events


async def wait_until_serving(client: httpx.AsyncClient, process: anyio.abc.Process) -> None:
    with anyio.fail_after(60):  # a hang guard, not a timing assertion
        while True:
            assert process.returncode is None, "the service exited before it was ready"
            try:
                if (await client.get("/health")).text == "ok":
                    return
            except httpx.TransportError:
                await anyio.sleep(0.1)


async def test_twenty_concurrent_streams_one_client_leaving(anyio_backend: str, tmp_path: Path) -> None:
    db = tmp_path / "answers.db"
    port = free_port()
    results: dict[str, list[tuple[str, Any]]] = {}
    async with FakeLLMServer.serve(expected_api_key="sk-test") as llm:
        llm.handler = script
        env = {**os.environ, "OPENAI_BASE_URL": llm.openai_base_url, "OPENAI_API_KEY": "sk-test"}
        env.pop("ANTHROPIC_API_KEY", None)
        command = [sys.executable, str(EXAMPLE), "--port", str(port), "--db", str(db)]
        command += ["--backend", anyio_backend, "--provider", "openai", "--model", "fake-gpt"]
        process = await anyio.open_process(command, env=env, stdout=None, stderr=None)
        try:
            limits = httpx.Limits(max_connections=None)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
            ) as client:
                await wait_until_serving(client, process)

                async def ask(question: str) -> None:
                    leave = question == LEAVING
                    async with client.stream("GET", "/ask", params={"q": question}) as response:
                        assert response.status_code == 200
                        assert response.headers["content-type"].startswith("text/event-stream")
                        results[question] = await read_events(response, stop_after_token=leave)

                async with anyio.create_task_group() as tg:
                    for n in range(19):
                        tg.start_soon(ask, f"question {n}")
                    tg.start_soon(ask, LEAVING)

                # The leaving client's LLM streams were closed by the service (the fake server saw it).
                with anyio.fail_after(10):  # hang guard
                    leaving = [r for r in llm.requests if question_of(r) == LEAVING]
                    assert len(leaving) == 2
                    for request in leaving:
                        await request.wait_disconnected()
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGINT)  # graceful: the lifespan exits the MiniAgents context
            with anyio.fail_after(30):
                returncode = await process.wait()
    assert returncode == 0

    # Every other client got both answers, token by token, then `done`.
    streamed: dict[str, str] = {}
    for n in range(19):
        question = f"question {n}"
        events = results[question]
        assert events[-1] == ("done", {"messages": 2})
        messages = [data for name, data in events if name == "message"]
        assert [m["message"]["content"] for m in messages] == [
            f"optimist on {question}.",
            f"skeptic on {question}.",
        ]
        for m in messages:
            tokens = [d["token"] for name, d in events if name == "token" and d["index"] == m["index"]]
            assert "".join(tokens) == m["message"]["content"]
            streamed[m["hash_key"]] = m["message"]["content"]
    assert results[LEAVING][-1][0] == "token"
    complete = [r for r in llm.requests if question_of(r) != LEAVING]
    assert len(complete) == 38 and all(r.response_complete for r in complete)

    # Every completed message is in the store; the leaving client's calls are recorded as cancelled.
    with StoreReader(db) as reader:
        assert streamed.keys() <= reader.hash_keys()
        calls = reader.calls()
        assert len(calls) == 60  # 20 panels, each with two experts
        outcomes = {(c.agent_alias, c.outcome) for c in calls if c.kwargs.get("question") == LEAVING}
        assert outcomes == {("panel", "cancelled")}
        leaving_experts = [
            c
            for c in calls
            if c.parent_call_id in {p.call_id for p in calls if p.kwargs.get("question") == LEAVING}
        ]
        assert sorted((c.agent_alias, c.outcome) for c in leaving_experts) == [
            ("optimist", "cancelled"),
            ("skeptic", "cancelled"),
        ]
        assert sum(c.outcome == "completed" for c in calls) == 57
