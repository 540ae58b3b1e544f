"""``serve_mcp``: agents and async functions served as MCP tools over stdio, called by a real MCP client.

The server (``agents_server.py``) runs as a stdio subprocess on the same backend as the test; the client side
is ``mcp_tools``, so each test is also a round trip of the two halves of ``miniagents.mcp``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import mcp
import pytest
from mcp import StdioServerParameters
from mcp.types import TextContent

from miniagents import MiniAgents
from miniagents.llms import Tool
from miniagents.mcp import HttpServer, MCPToolError, StdioServer, mcp_server, mcp_tools

pytestmark = pytest.mark.anyio

SERVER_FILE = Path(__file__).with_name("agents_server.py")
HANG_GUARD = 60


ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def agents(anyio_backend: str) -> StdioServer:
    # The SDK passes a subprocess only a safe part of the environment: this checkout must be importable there.
    return StdioServer(
        sys.executable, [str(SERVER_FILE), anyio_backend], env={"PYTHONPATH": ROOT}, name="agents"
    )


@pytest.fixture
def agents_over_http(anyio_backend: str) -> Iterator[HttpServer]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(SERVER_FILE), anyio_backend, "http", str(port)],
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):  # until it accepts connections
            if process.poll() is not None:
                raise RuntimeError(f"the agents' HTTP server exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"], check=True)
        yield HttpServer(f"http://127.0.0.1:{port}/mcp", name="agents-http")
    finally:
        process.terminate()
        process.wait(timeout=30)


async def _tools(server: StdioServer) -> dict[str, Tool]:
    return {tool.name: tool for tool in await mcp_tools(server)}


async def test_agents_are_listed_with_their_descriptions_and_parameters(agents: StdioServer) -> None:
    async with MiniAgents():
        tools = await _tools(agents)
    assert sorted(tools) == ["adder", "broken", "loud", "wait_forever", "writer"]
    assert tools["adder"].description == "Add two numbers."
    assert tools["adder"].parameters == {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 0}},
        "required": ["a"],
    }
    assert tools["loud"].description == "Repeats each input message in upper case."
    assert tools["loud"].parameters["required"] == ["input"]


async def test_a_call_is_an_agent_call_whose_replies_are_the_result(agents: StdioServer) -> None:
    async with MiniAgents():
        tools = await _tools(agents)
        assert await tools["adder"].handler({"a": 2, "b": 5}) == "2 + 5 = 7"
        assert await tools["adder"].handler({"a": "3"}) == "3 + 0 = 3"  # validated as a tool call's arguments
        assert await tools["loud"].handler({"input": "hi"}) == "HI"


async def test_failures_are_error_results_naming_the_error(agents: StdioServer) -> None:
    async with MiniAgents():
        tools = await _tools(agents)
        with pytest.raises(MCPToolError, match="RuntimeError: the agent broke"):
            await tools["broken"].handler({})
        with pytest.raises(MCPToolError, match=r"ToolArgumentsError: tool 'adder' got invalid arguments: a"):
            await tools["adder"].handler({"a": "x"})


async def test_a_call_cancelled_by_the_client_is_cancelled_in_the_server(
    agents: StdioServer, tmp_path: Path
) -> None:
    marker = anyio.Path(tmp_path / "marker")

    async def wait_for(text: str) -> None:
        while not (await marker.exists() and await marker.read_text() == text):
            await anyio.sleep(0.01)

    async with MiniAgents():
        tools = await _tools(agents)
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await tools["wait_forever"].handler({"marker": str(marker)})

                tg.start_soon(call)
                await wait_for("started")
                tg.cancel_scope.cancel()
            await wait_for("cancelled")
        assert await tools["adder"].handler({"a": 1}) == "1 + 0 = 1"


async def test_an_agent_streams_its_tokens_as_progress_notifications(agents: StdioServer) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    params = StdioServerParameters(command=agents.command, args=list(agents.args), env=dict(agents.env or {}))
    async with mcp.Client(params) as client:
        result = await client.call_tool("writer", {"topic": "trio"}, progress_callback=on_progress)
        plain = await client.call_tool("writer", {"topic": "asyncio"})  # no progress asked for: none sent
    assert [block.text for block in result.content if isinstance(block, TextContent)] == [
        "a short note about trio "
    ]
    assert progress == [
        (1.0, None, "a "),
        (2.0, None, "short "),
        (3.0, None, "note "),
        (4.0, None, "about "),
        (5.0, None, "trio "),
    ]
    assert not plain.is_error and len(progress) == 5


async def test_agents_served_over_streamable_http_run_in_the_servers_context(
    agents_over_http: HttpServer,
) -> None:
    async with MiniAgents():
        tools = await _tools(agents_over_http)
        assert sorted(tools) == ["adder", "broken", "loud", "wait_forever", "writer"]
        results: list[str] = []

        async def add(a: int) -> None:
            results.append(await tools["adder"].handler({"a": a, "b": 1}))

        async with anyio.create_task_group() as tg:
            for a in range(3):
                tg.start_soon(add, a)
        assert sorted(results) == ["0 + 1 = 1", "1 + 1 = 2", "2 + 1 = 3"]
        with pytest.raises(MCPToolError, match="RuntimeError: the agent broke"):
            await tools["broken"].handler({})


def test_mcp_server_refuses_what_tools_refuse() -> None:
    async def twin() -> str:
        return ""

    with pytest.raises(ValueError, match="duplicate tool names: twin"):
        mcp_server([twin, Tool(name="twin", description="", parameters={}, handler=lambda _: twin())])
