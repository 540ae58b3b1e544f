"""MCP tools: real MCP servers (the SDK's own server API) over stdio and streamable HTTP, on both backends.

The server of ``mcp_server.py`` runs as a stdio subprocess of each test's ``MiniAgents`` context, and as a
streamable-HTTP server in a subprocess of its own on 127.0.0.1 (one for the module: its backend is its own).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import MiniAgents, NoActiveContextError
from miniagents.llms import Tool, openai_agent
from miniagents.mcp import (
    HttpServer,
    MCPConnectionError,
    MCPError,
    MCPRequestError,
    MCPServerSpec,
    MCPTimeoutError,
    MCPToolError,
    StdioServer,
    mcp_tools,
)
from miniagents.mcp._client import _connection
from miniagents.testing.fake_llm_server import FakeLLMServer, ToolCall, openai_stream

pytestmark = pytest.mark.anyio

SERVER_FILE = Path(__file__).with_name("mcp_server.py")
STDIO = StdioServer(sys.executable, [str(SERVER_FILE)], name="test-stdio")
KEY = "sk-test-key"
#: A guard against hangs only (the tests wait for events, never for time).
HANG_GUARD = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def http_server() -> Iterator[HttpServer]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVER_FILE), "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):  # until it accepts connections (the process starting is not timed)
            if process.poll() is not None:
                raise RuntimeError(f"the MCP test server exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"], check=True)
        yield HttpServer(f"http://127.0.0.1:{port}/mcp", name="test-http")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(params=["stdio", "http"])
def server(request: pytest.FixtureRequest) -> MCPServerSpec:
    if request.param == "stdio":
        return STDIO
    result: HttpServer = request.getfixturevalue("http_server")
    return result


def by_name(tools: tuple[Tool, ...]) -> dict[str, Tool]:
    return {t.name: t for t in tools}


async def wait_for_text(path: Path, text: str) -> None:
    with anyio.fail_after(HANG_GUARD):
        apath = anyio.Path(path)
        while not (await apath.exists() and await apath.read_text() == text):
            await anyio.sleep(0.01)


# -- listing and calling ---------------------------------------------------------------------------------------
async def test_the_tools_of_a_server_keep_their_names_descriptions_and_schemas(server: MCPServerSpec) -> None:
    async with MiniAgents():
        tools = by_name(await mcp_tools(server))
    assert set(tools) == {"add", "shout", "refuse", "pid", "rendezvous", "hang"}
    add = tools["add"]
    assert add.description == "Add two integers."
    assert add.parameters["required"] == ["a", "b"]
    assert add.parameters["properties"]["a"] == {
        "title": "A",
        "description": "The first number.",
        "type": "integer",
    }


async def test_a_call_returns_the_structured_content_as_json_and_plain_text_as_it_is(
    server: MCPServerSpec,
) -> None:
    async with MiniAgents():
        tools = by_name(await mcp_tools(server, names=["add", "shout"], prefix="calc_"))
        assert sorted(tools) == ["calc_add", "calc_shout"]
        assert json.loads(await tools["calc_add"].handler({"a": 2, "b": 40})) == {"result": 42}
        assert json.loads(await tools["calc_shout"].handler({"text": "hi"})) == {"result": "HI"}


async def test_unknown_names_are_refused_naming_the_server_tools(server: MCPServerSpec) -> None:
    async with MiniAgents():
        with pytest.raises(ValueError, match=r"has no tool 'nope' \(its tools: add, hang, pid"):
            await mcp_tools(server, names=["add", "nope"])


async def test_three_calls_run_at_the_server_at_the_same_time(server: MCPServerSpec) -> None:
    results: dict[str, str] = {}
    async with MiniAgents():
        rendezvous = by_name(await mcp_tools(server))["rendezvous"]

        async def call(label: str) -> None:
            results[label] = await rendezvous.handler(
                {"group": f"g-{id(results)}", "size": 3, "label": label}
            )

        with anyio.fail_after(HANG_GUARD):  # a rendezvous of 3 returns only if all 3 run at once
            async with anyio.create_task_group() as tg:
                for label in ("a", "b", "c"):
                    tg.start_soon(call, label)
    assert {k: json.loads(v)["result"] for k, v in results.items()} == {
        "a": "a met 2 others",
        "b": "b met 2 others",
        "c": "c met 2 others",
    }


async def test_one_context_shares_one_session_per_server_and_a_new_context_opens_a_new_one() -> None:
    async with MiniAgents():
        first = by_name(await mcp_tools(STDIO))["pid"]
        equal = StdioServer(sys.executable, [str(SERVER_FILE)], name="test-stdio")
        again = by_name(await mcp_tools(equal))["pid"]
        first_pid = await first.handler({})
        assert await again.handler({}) == first_pid
    async with MiniAgents():  # tools listed in an earlier context connect again in the current one
        assert await first.handler({}) != first_pid


# -- failures --------------------------------------------------------------------------------------------------
async def test_a_failing_tool_raises_mcp_tool_error_with_its_text(server: MCPServerSpec) -> None:
    async with MiniAgents():
        refuse = by_name(await mcp_tools(server))["refuse"]
        with pytest.raises(MCPToolError) as caught:
            await refuse.handler({"reason": "too late"})
    error = caught.value
    assert (error.server, error.tool) == (server.label, "refuse")
    assert (
        str(error)
        == f"MCP tool 'refuse' of server {server.label!r} failed: Error executing tool refuse: refused: too late"
    )


async def test_a_call_of_a_tool_the_server_does_not_have_is_an_error_naming_it(server: MCPServerSpec) -> None:
    async with MiniAgents():
        with pytest.raises(MCPError) as caught:
            await _connection(server).call_tool("ghost", {})
    assert isinstance(caught.value, (MCPToolError, MCPRequestError))
    assert caught.value.tool == "ghost" and "ghost" in str(caught.value)


async def test_a_server_that_cannot_start_is_a_connection_error_naming_it() -> None:
    broken = StdioServer(sys.executable, ["-c", "import sys; sys.exit(3)"], name="broken")
    async with MiniAgents():
        with pytest.raises(MCPConnectionError, match=r"MCP server 'broken': could not connect") as caught:
            await mcp_tools(broken)
    assert caught.value.server == "broken" and caught.value.tool is None


async def test_an_http_server_that_is_not_there_is_a_connection_error_naming_its_url() -> None:
    port = _free_port()
    nowhere = HttpServer(f"http://127.0.0.1:{port}/mcp?key=secret", headers={"Authorization": "Bearer s3"})
    async with MiniAgents():
        with pytest.raises(MCPConnectionError) as caught:
            await mcp_tools(nowhere)
    assert str(caught.value).startswith(f"MCP server 'http://127.0.0.1:{port}/mcp': could not connect (")
    assert "secret" not in str(caught.value) and "s3" not in str(caught.value)


async def test_headers_of_an_http_server_are_sent_with_its_requests(http_server: HttpServer) -> None:
    with_headers = HttpServer(http_server.url, headers={"X-Test": "1"}, name="with-headers")
    async with MiniAgents():
        add = by_name(await mcp_tools(with_headers))["add"]
        assert json.loads(await add.handler({"a": 1, "b": 1})) == {"result": 2}


async def test_no_answer_within_read_timeout_is_a_timeout_error_naming_server_and_tool(
    tmp_path: Path,
) -> None:
    impatient = StdioServer(sys.executable, [str(SERVER_FILE)], name="impatient", read_timeout=0.5)
    async with MiniAgents():
        hang = by_name(await mcp_tools(impatient))["hang"]
        with pytest.raises(MCPTimeoutError) as caught:
            await hang.handler({"marker": str(tmp_path / "marker")})
        await wait_for_text(
            tmp_path / "marker", "cancelled"
        )  # the abandoned request is cancelled at the server
    assert (caught.value.server, caught.value.tool) == ("impatient", "hang")
    assert isinstance(caught.value, TimeoutError)


async def test_a_server_killed_during_a_call_is_a_connection_error_naming_server_and_tool(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    async with MiniAgents():
        tools = by_name(await mcp_tools(STDIO))
        server_pid = json.loads(await tools["pid"].handler({}))["result"]

        async def kill_when_started() -> None:
            await wait_for_text(marker, "started")
            os.kill(server_pid, signal.SIGKILL)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_when_started)
                with pytest.raises(MCPConnectionError) as caught:
                    await tools["hang"].handler({"marker": str(marker)})
        assert (caught.value.server, caught.value.tool) == ("test-stdio", "hang")
        assert "the connection closed during the call of tool 'hang'" in str(caught.value)
        with pytest.raises(MCPConnectionError, match="test-stdio"):  # later calls fail at once, named too
            await tools["add"].handler({"a": 1, "b": 2})


async def test_a_call_cancelled_by_the_caller_is_cancelled_at_the_server(
    server: MCPServerSpec, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    async with MiniAgents():
        tools = by_name(await mcp_tools(server))
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await tools["hang"].handler({"marker": str(marker)})

                tg.start_soon(call)
                await wait_for_text(marker, "started")
                tg.cancel_scope.cancel()
            await wait_for_text(marker, "cancelled")  # the server's handler was cancelled
        assert json.loads(await tools["add"].handler({"a": 1, "b": 1})) == {
            "result": 2
        }  # the session lives on


async def test_mcp_tools_needs_a_context() -> None:
    with pytest.raises(NoActiveContextError):
        await mcp_tools(STDIO)


async def test_the_session_is_closed_when_the_context_exits(tmp_path: Path) -> None:
    async with MiniAgents():
        tools = by_name(await mcp_tools(STDIO))
        server_pid = json.loads(await tools["pid"].handler({}))["result"]
    with pytest.raises(ProcessLookupError):  # the subprocess was stopped (and reaped) at exit
        os.kill(server_pid, 0)


async def test_a_cancelled_context_closes_its_session() -> None:
    with anyio.CancelScope() as scope:
        async with MiniAgents():
            tools = by_name(await mcp_tools(STDIO))
            server_pid = json.loads(await tools["pid"].handler({}))["result"]
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


def test_descriptions_are_values_that_hide_secrets() -> None:
    server = HttpServer("https://user:pw@mcp.example.com/mcp?token=t", headers={"Authorization": "Bearer s3"})
    assert server == HttpServer(
        "https://user:pw@mcp.example.com/mcp?token=t", headers={"Authorization": "Bearer s3"}
    )
    assert hash(server) == hash(HttpServer(server.url, headers={"Authorization": "Bearer s3"}))
    text = repr(server) + server.label
    assert "pw" not in text and "token" not in text and "s3" not in text
    assert server.label == "https://mcp.example.com/mcp"
    stdio = StdioServer("python", ["-m", "srv"], env={"API_KEY": "k3y"})
    assert "k3y" not in repr(stdio) and stdio.label == "python -m srv"
    with pytest.raises(ValueError, match="http:// or https://"):
        HttpServer("ftp://x")
    with pytest.raises(TypeError, match=r"shlex\.split"):
        StdioServer("python", "-m srv")  # type: ignore[arg-type]
    assert isinstance(MCPToolError("x", server="s"), MCPError)


# -- an LLM agent using an MCP tool ------------------------------------------------------------------------------
async def test_an_llm_agent_calls_an_mcp_tool_and_gets_its_result(server: MCPServerSpec) -> None:
    async with FakeLLMServer.serve() as fake, MiniAgents():
        fake.enqueue(
            openai_stream(
                tool_calls=[
                    ToolCall("add", {"a": 2, "b": 3}, id="c1"),
                    ToolCall("refuse", {"reason": "no"}, id="c2"),
                ]
            ),
            openai_stream("2 + 3 = 5."),
        )
        replies = await openai_agent.inquire(
            "2+3?", model="m", api_key=KEY, base_url=fake.openai_base_url, tools=await mcp_tools(server)
        )
        sent = [r.json for r in fake.requests]
    assert [t["function"]["name"] for t in sent[0]["tools"]] == [
        "add",
        "shout",
        "refuse",
        "pid",
        "rendezvous",
        "hang",
    ]
    assert sent[0]["tools"][0]["function"]["parameters"]["properties"]["b"] == {
        "title": "B",
        "type": "integer",
    }
    results = [(m["tool_call_id"], m["content"]) for m in sent[1]["messages"] if m["role"] == "tool"]
    assert results == [
        ("c1", '{"result": 5}'),
        (
            "c2",
            f"MCPToolError: MCP tool 'refuse' of server {server.label!r} failed: Error executing tool refuse: refused: no",
        ),
    ]
    assert str(replies[-1]) == "2 + 3 = 5."


# -- a property: concurrent calls, some cancelled ---------------------------------------------------------------
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    calls=st.lists(st.tuples(st.integers(-1000, 1000), st.integers(-1000, 1000), st.booleans()), max_size=6)
)
async def test_concurrent_calls_get_their_own_results_and_cancelled_ones_end_at_the_server(
    http_server: HttpServer, tmp_path_factory: pytest.TempPathFactory, calls: list[tuple[int, int, bool]]
) -> None:
    folder = tmp_path_factory.mktemp("markers")
    results: dict[int, Any] = {}
    async with MiniAgents():
        tools = by_name(await mcp_tools(http_server))

        async def add(index: int, a: int, b: int) -> None:
            results[index] = json.loads(await tools["add"].handler({"a": a, "b": b}))["result"]

        async def hang(index: int) -> None:
            await tools["hang"].handler({"marker": str(folder / str(index))})

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as adds, anyio.create_task_group() as hangs:
                for index, (a, b, cancelled) in enumerate(calls):
                    (hangs if cancelled else adds).start_soon(
                        *((hang, index) if cancelled else (add, index, a, b))
                    )
                for index, (_, _, cancelled) in enumerate(calls):
                    if cancelled:
                        await wait_for_text(folder / str(index), "started")
                hangs.cancel_scope.cancel()
            for index, (_, _, cancelled) in enumerate(calls):
                if cancelled:
                    await wait_for_text(folder / str(index), "cancelled")
    assert results == {i: a + b for i, (a, b, cancelled) in enumerate(calls) if not cancelled}


# -- tracing ---------------------------------------------------------------------------------------------------
async def test_tracing_shows_an_mcp_tool_call_as_its_execute_tool_span(http_server: HttpServer) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with FakeLLMServer.serve() as fake, MiniAgents(tracing=provider):
        fake.enqueue(
            openai_stream(
                tool_calls=[
                    ToolCall("add", {"a": 1, "b": 2}, id="c1"),
                    ToolCall("refuse", {"reason": "no"}, id="c2"),
                ]
            ),
            openai_stream("Done."),
        )
        assistant = openai_agent.fork(
            alias="assistant", model="m", api_key=KEY, base_url=fake.openai_base_url
        )
        await assistant.inquire("go", tools=await mcp_tools(http_server))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    ok, failed = spans["execute_tool add"], spans["execute_tool refuse"]
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["error.type"].endswith("MCPToolError")
    # the MCP requests themselves (httpx2) add no spans: only the call, its LLM requests and the tools
    assert not [name for name in spans if "mcp" in name.lower() or name.startswith(("POST", "GET"))]
