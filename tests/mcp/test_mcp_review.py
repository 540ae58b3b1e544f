"""MCP tools under failure, concurrency and cancellation: misbehaving servers, racing first uses, contexts.

Real servers only: ``mcp_server.py`` (the SDK's ``MCPServer``) over stdio and streamable HTTP, and the
misbehaving servers of ``review_server.py`` (garbage on stdout, an HTTP endpoint answering 401 or 404).
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
import mcp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.types import TextContent
from test_mcp_tools import HANG_GUARD, SERVER_FILE, STDIO, _free_port, by_name, http_server, wait_for_text

from miniagents import CallRecord, InteractionContext, MiniAgents, miniagent
from miniagents.llms import Tool
from miniagents.mcp import (
    HttpServer,
    MCPConnectionError,
    MCPError,
    MCPToolError,
    StdioServer,
    mcp_tools,
)
from miniagents.persistence._codec import encode_kwargs

__all__ = ["http_server"]  # the module-scoped fixture, shared with test_mcp_tools

pytestmark = pytest.mark.anyio

REVIEW_FILE = Path(__file__).with_name("review_server.py")
ROOT = str(Path(__file__).resolve().parents[2])  # this checkout, importable in the served subprocesses
AGENTS_FILE = Path(__file__).with_name("agents_server.py")
NOISY = StdioServer(sys.executable, [str(REVIEW_FILE), "noisy"], env={"PYTHONPATH": ROOT}, name="noisy")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _pid(tool: Tool) -> int:
    pid: int = json.loads(await tool.handler({}))["result"]
    return pid


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_port(process: subprocess.Popen[bytes], port: int) -> None:
    for _ in range(600):  # until it accepts connections (the process starting is not timed)
        if process.poll() is not None:
            raise RuntimeError(f"the test server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"], check=True)


def _start_status_server(code: int) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, str(REVIEW_FILE), "status", str(code), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_port(process, port)
    return process, port


@pytest.fixture(params=[401, 404])
def status_endpoint(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    process, port = _start_status_server(request.param)
    try:
        yield request.param, port
    finally:
        process.terminate()
        process.wait(timeout=30)


# -- error mapping -----------------------------------------------------------------------------------------------
async def test_an_http_error_status_is_a_connection_error_naming_the_status_without_secrets(
    status_endpoint: tuple[int, int],
) -> None:
    code, port = status_endpoint
    server = HttpServer(
        f"http://user:pw-secret@127.0.0.1:{port}/mcp?key=q-secret",
        headers={"Authorization": "Bearer h-secret"},
    )
    async with MiniAgents():
        with anyio.fail_after(HANG_GUARD), pytest.raises(MCPConnectionError) as caught:
            await mcp_tools(server)
    text = str(caught.value)
    assert text.startswith(f"MCP server 'http://127.0.0.1:{port}/mcp': could not connect (")
    assert "secret" not in text and "secret" not in repr(caught.value)
    assert caught.value.server == f"http://127.0.0.1:{port}/mcp"
    assert str(code) in text  # a 401 (bad credentials) must be told apart from a 404 (wrong URL)


async def test_a_failed_first_connection_fails_later_calls_at_once_and_the_context_exits_cleanly() -> None:
    broken = StdioServer(sys.executable, ["-c", "import sys; sys.exit(3)"], name="broken")
    async with MiniAgents() as context:
        with pytest.raises(MCPConnectionError, match="could not connect"):
            await mcp_tools(broken)
        with pytest.raises(MCPConnectionError, match=r"MCP server 'broken': could not connect") as again:
            await mcp_tools(broken)
        assert again.value.server == "broken"
        assert context.statistics().unobserved_errors == 0
    # an equal server in a new context is tried again
    async with MiniAgents():
        with pytest.raises(MCPConnectionError, match="could not connect"):
            await mcp_tools(broken)


async def test_invalid_arguments_against_the_schema_are_a_tool_error_naming_the_tool(
    server_any: Any,
) -> None:
    async with MiniAgents():
        add = by_name(await mcp_tools(server_any))["add"]
        with pytest.raises(MCPToolError) as caught:
            await add.handler({"a": "not a number", "b": 1})
        assert caught.value.tool == "add" and "valid integer" in str(caught.value)
        with pytest.raises(MCPError) as missing:
            await add.handler({"a": 1})
        assert missing.value.tool == "add" and "b" in str(missing.value)
        assert json.loads(await add.handler({"a": 1, "b": 2})) == {"result": 3}  # the session lives on


async def test_structured_content_against_the_output_schema_is_an_mcp_error_naming_server_and_tool() -> None:
    bad = StdioServer(
        sys.executable, [str(REVIEW_FILE), "schema"], env={"PYTHONPATH": ROOT}, name="bad-schema"
    )
    async with MiniAgents():
        count = by_name(await mcp_tools(bad))["count"]
        with anyio.fail_after(HANG_GUARD), pytest.raises(MCPError) as caught:
            await count.handler({})
    assert (caught.value.server, caught.value.tool) == ("bad-schema", "count")
    assert "bad-schema" in str(caught.value) and "count" in str(caught.value)


async def test_garbage_on_a_stdio_servers_stdout_does_not_break_its_session() -> None:
    async with MiniAgents():
        tools = by_name(await mcp_tools(NOISY))
        with anyio.fail_after(HANG_GUARD):
            assert json.loads(await tools["echo"].handler({"text": "one"})) == {"result": "one"}
            assert json.loads(await tools["noisy"].handler({"text": "two"})) == {"result": "two"}
            assert json.loads(await tools["echo"].handler({"text": "three"})) == {"result": "three"}


async def test_a_stdio_server_that_died_while_idle_is_a_connection_error_naming_server_and_tool() -> None:
    async with MiniAgents():
        tools = by_name(await mcp_tools(STDIO))
        server_pid = await _pid(tools["pid"])
        os.kill(server_pid, signal.SIGKILL)
        with anyio.fail_after(HANG_GUARD), pytest.raises(MCPConnectionError) as caught:
            await tools["add"].handler({"a": 1, "b": 2})
    assert (caught.value.server, caught.value.tool) == ("test-stdio", "add")


async def test_an_http_server_killed_during_a_call_is_a_connection_error_naming_server_and_tool(
    tmp_path: Path,
) -> None:
    port = _free_port()
    process = _spawn([sys.executable, str(SERVER_FILE), "http", str(port)])
    marker = tmp_path / "marker"
    try:
        _wait_for_port(process, port)
        server = HttpServer(f"http://127.0.0.1:{port}/mcp", name="doomed")
        async with MiniAgents():
            tools = by_name(await mcp_tools(server))

            async def kill_when_started() -> None:
                await wait_for_text(marker, "started")
                process.kill()

            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(kill_when_started)
                    with pytest.raises(MCPConnectionError) as caught:
                        await tools["hang"].handler({"marker": str(marker)})
        assert (caught.value.server, caught.value.tool) == ("doomed", "hang")
    finally:
        process.kill()
        process.wait(timeout=30)


async def test_calls_to_an_http_server_that_restarted_reach_the_new_process() -> None:
    port = _free_port()
    command = [sys.executable, str(SERVER_FILE), "http", str(port)]
    first = _spawn(command)
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait_for_port(first, port)
        server = HttpServer(f"http://127.0.0.1:{port}/mcp", name="restarted")
        async with MiniAgents():
            tools = by_name(await mcp_tools(server))
            first_pid = await _pid(tools["pid"])
            first.kill()
            first.wait(timeout=30)
            second = _spawn(command)
            _wait_for_port(second, port)
            with anyio.fail_after(HANG_GUARD):
                assert await _pid(tools["pid"]) == second.pid != first_pid
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait(timeout=30)


# -- sessions, contexts and concurrency ---------------------------------------------------------------------------
async def test_two_contexts_at_once_each_have_their_own_session_closed_with_them() -> None:
    pids: dict[str, int] = {}
    both_connected = anyio.Event()

    async def in_context(label: str) -> None:
        async with MiniAgents():
            pid = by_name(await mcp_tools(STDIO))["pid"]
            pids[label] = await _pid(pid)
            if len(pids) == 2:
                both_connected.set()
            await both_connected.wait()
            assert await _pid(pid) == pids[label]  # still its own session while the other one is open

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(in_context, "a")
            tg.start_soon(in_context, "b")
    assert pids["a"] != pids["b"]
    assert not _alive(pids["a"]) and not _alive(pids["b"])


async def test_tools_listed_in_an_outer_context_use_the_session_of_the_inner_context_they_run_in() -> None:
    async with MiniAgents():
        pid = by_name(await mcp_tools(STDIO))["pid"]
        outer = await _pid(pid)
        async with MiniAgents():
            inner = await _pid(pid)
        assert inner != outer and not _alive(inner)
        assert await _pid(pid) == outer  # the outer session is untouched by the inner context's exit


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cancelled=st.lists(st.booleans(), min_size=1, max_size=5))
async def test_concurrent_first_uses_start_one_session_even_when_some_of_them_are_cancelled(
    cancelled: list[bool],
) -> None:
    pids: dict[int, int] = {}
    async with MiniAgents():
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for index, cancel in enumerate(cancelled):

                    async def use(index: int = index, cancel: bool = cancel) -> None:
                        with anyio.CancelScope() as scope:
                            if cancel:
                                scope.cancel()  # cancelled while waiting for the session to be opened
                            tools = by_name(await mcp_tools(STDIO))
                            pids[index] = await _pid(tools["pid"])

                    tg.start_soon(use)
            survivors = set(pids.values())
            assert set(pids) == {i for i, cancel in enumerate(cancelled) if not cancel}
            assert len(survivors) <= 1  # one session: one subprocess for every caller
            final = await _pid(by_name(await mcp_tools(STDIO))["pid"])
            assert survivors <= {final}
    assert not _alive(final)


async def test_a_context_whose_only_caller_gave_up_waiting_for_the_connection_exits() -> None:
    mute = StdioServer(sys.executable, ["-c", "import time; time.sleep(10**6)"], name="mute")
    with anyio.fail_after(20):  # a hang guard: exiting needs no answer from the server
        async with MiniAgents():
            with anyio.CancelScope() as scope:
                scope.cancel()  # the caller gives up (a timeout of its own, a cancelled agent call)
                await mcp_tools(mute)
            assert scope.cancelled_caught
        # nothing waits for the session any more: the exit must abandon the connection attempt


async def test_a_context_cancelled_during_a_tool_call_ends_the_call_and_closes_the_stdio_server(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    outcome: list[str] = []
    with anyio.fail_after(HANG_GUARD):
        with anyio.CancelScope() as scope:
            async with MiniAgents():
                tools = by_name(await mcp_tools(STDIO))
                server_pid = await _pid(tools["pid"])
                async with anyio.create_task_group() as tg:

                    async def call() -> None:
                        try:
                            await tools["hang"].handler({"marker": str(marker)})
                        finally:
                            outcome.append("ended")

                    tg.start_soon(call)
                    await wait_for_text(marker, "started")
                    scope.cancel()
    assert scope.cancelled_caught and outcome == ["ended"]
    assert not _alive(server_pid)


async def test_a_context_cancelled_during_a_tool_call_cancels_the_call_at_the_http_server(
    http_server: HttpServer, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    with anyio.CancelScope() as scope:
        async with MiniAgents():
            tools = by_name(await mcp_tools(http_server))
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await tools["hang"].handler({"marker": str(marker)})

                tg.start_soon(call)
                await wait_for_text(marker, "started")
                scope.cancel()
    assert scope.cancelled_caught
    await wait_for_text(marker, "cancelled")  # no handler left running at the server


# -- secrets -------------------------------------------------------------------------------------------------------
async def test_server_specs_in_agent_kwargs_keep_their_secrets_out_of_call_records() -> None:
    records: list[CallRecord] = []
    http = HttpServer("http://127.0.0.1:1/mcp?token=q-secret", headers={"X-Api-Key": "h-secret"})
    stdio = StdioServer(sys.executable, ["srv.py"], env={"SERVICE_CONFIG": "e-secret"})

    @miniagent
    async def uses_servers(ctx: InteractionContext, http: HttpServer, stdio: StdioServer) -> None:
        ctx.reply(f"{http!r} {stdio!r}")

    async with MiniAgents(on_call_finished=records.append):
        text = await uses_servers.inquire(None, http=http, stdio=stdio).as_single_text()
    [record] = [r for r in records if r.agent_alias == "uses_servers"]
    for shown in (text, repr(record), repr(record.kwargs), encode_kwargs(record.kwargs)):
        assert "secret" not in shown


# -- serve_mcp -------------------------------------------------------------------------------------------------------
async def test_serve_mcp_runs_concurrent_calls_at_the_same_time(anyio_backend: str) -> None:
    served = StdioServer(
        sys.executable, [str(REVIEW_FILE), "serve", anyio_backend], env={"PYTHONPATH": ROOT}, name="served"
    )
    results: dict[str, str] = {}
    async with MiniAgents():
        meet = by_name(await mcp_tools(served))["meet"]

        async def call(label: str) -> None:
            results[label] = await meet.handler({"group": "g", "size": 3, "label": label})

        with anyio.fail_after(HANG_GUARD):  # a meeting of 3 ends only if all 3 run at once
            async with anyio.create_task_group() as tg:
                for label in ("a", "b", "c"):
                    tg.start_soon(call, label)
    assert results == {label: f"{label} met 2 others" for label in ("a", "b", "c")}


async def test_concurrent_served_calls_each_get_only_their_own_progress_notifications(
    anyio_backend: str,
) -> None:
    params = mcp.StdioServerParameters(
        command=sys.executable, args=[str(AGENTS_FILE), anyio_backend], env={"PYTHONPATH": ROOT}
    )
    received: dict[str, list[str | None]] = {"trio": [], "asyncio": [], "anyio": []}
    texts: dict[str, list[str]] = {}
    async with mcp.Client(params) as client:

        async def call(topic: str) -> None:
            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                received[topic].append(message)

            result = await client.call_tool("writer", {"topic": topic}, progress_callback=on_progress)
            texts[topic] = [block.text for block in result.content if isinstance(block, TextContent)]

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for topic in received:
                    tg.start_soon(call, topic)
    for topic, messages in received.items():
        assert texts[topic] == [f"a short note about {topic} "]
        assert messages == ["a ", "short ", "note ", "about ", f"{topic} "]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.tuples(st.integers(-99, 99), st.booleans()), min_size=1, max_size=5))
async def test_served_agent_calls_cancelled_by_the_client_end_in_the_server_and_the_others_complete(
    anyio_backend: str, tmp_path_factory: pytest.TempPathFactory, calls: list[tuple[int, bool]]
) -> None:
    served = StdioServer(
        sys.executable, [str(AGENTS_FILE), anyio_backend], env={"PYTHONPATH": ROOT}, name="agents"
    )
    folder = tmp_path_factory.mktemp("served")
    results: dict[int, str] = {}
    async with MiniAgents():
        tools = by_name(await mcp_tools(served))

        async def add(index: int, a: int) -> None:
            results[index] = await tools["adder"].handler({"a": a, "b": index})

        async def wait(index: int) -> None:
            await tools["wait_forever"].handler({"marker": str(folder / str(index))})

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as adds, anyio.create_task_group() as waits:
                for index, (a, cancelled) in enumerate(calls):
                    if cancelled:
                        waits.start_soon(wait, index)
                    else:
                        adds.start_soon(add, index, a)
                for index, (_, cancelled) in enumerate(calls):
                    if cancelled:
                        await wait_for_text(folder / str(index), "started")
                waits.cancel_scope.cancel()
            for index, (_, cancelled) in enumerate(calls):
                if cancelled:
                    await wait_for_text(folder / str(index), "cancelled")
    assert results == {i: f"{a} + {i} = {a + i}" for i, (a, cancelled) in enumerate(calls) if not cancelled}


@pytest.fixture(params=["stdio", "http"])
def server_any(request: pytest.FixtureRequest) -> Any:
    if request.param == "stdio":
        return StdioServer(sys.executable, [str(SERVER_FILE)], name="test-stdio")
    return request.getfixturevalue("http_server")
