"""An exception raised in ``async with FakeLLMServer.serve() as server:`` leaves the block as itself.

It is not wrapped in the server's task group's ``ExceptionGroup`` (as ``MiniAgents`` re-raises a body error
itself), so ``pytest.raises(ValueError)`` around the block works; the server still shuts down: its listener is
closed and the connections it was serving are cut.
"""

from __future__ import annotations

import sys

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import MiniAgents
from miniagents.llms import openai_agent
from miniagents.testing.fake_llm_server import FakeLLMServer, Hang, ScriptedResponse

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789"
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
HANGING = ScriptedResponse(headers={"content-type": "text/event-stream"}, body=[Hang()])


async def _hanging_request(base_url: str, outcomes: list[str], started: anyio.Event) -> None:
    """POST a request whose response never ends; record how it ended."""
    async with httpx.AsyncClient(timeout=30) as client:
        try:
            async with client.stream(
                "POST",
                f"{base_url}/v1/chat/completions",
                json=BODY,
                headers={"authorization": f"Bearer {KEY}"},
            ) as response:
                started.set()
                async for _ in response.aiter_bytes():
                    pass
            outcomes.append("complete")
        except httpx.TransportError:
            outcomes.append("cut")


async def _refuses_connections(port: int) -> bool:
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def _serve_and_raise(
    error: BaseException,
    *,
    tg: anyio.abc.TaskGroup,
    in_flight: int,
    outcomes: list[str],
    ports: list[int],
    checkpoints: int = 0,
) -> None:
    """Serve *in_flight* responses that never end, then raise *error* in the block."""
    async with FakeLLMServer.serve() as server:
        ports.append(server.port)
        for _ in range(in_flight):
            server.enqueue(HANGING)
            started = anyio.Event()
            tg.start_soon(_hanging_request, server.base_url, outcomes, started)
            await started.wait()  # the response started and will never end by itself
        for _ in range(checkpoints):
            await anyio.lowlevel.checkpoint()
        raise error


async def test_a_value_error_in_the_block_is_raised_as_itself() -> None:
    with pytest.raises(ValueError, match="boom") as info:
        async with FakeLLMServer.serve():
            raise ValueError("boom")
    assert type(info.value) is ValueError


async def test_the_server_shuts_down_when_the_block_raises() -> None:
    outcomes: list[str] = []
    ports: list[int] = []
    async with anyio.create_task_group() as tg:  # the client outlives the server's block
        with pytest.raises(ValueError, match="boom"):
            await _serve_and_raise(ValueError("boom"), tg=tg, in_flight=1, outcomes=outcomes, ports=ports)
    assert outcomes == ["cut"]
    assert await _refuses_connections(ports[0])


async def _agents_in_the_server_block_raise(error: BaseException) -> None:
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.enqueue(HANGING)
        openai_agent.inquire("hi", model="m", base_url=server.openai_base_url, api_key=KEY)
        await server.wait_for_requests(1)  # a call is streaming when the block fails
        raise error


async def test_an_error_in_a_miniagents_block_inside_the_server_block_is_raised_as_itself() -> None:
    with pytest.raises(KeyError, match="missing"):
        await _agents_in_the_server_block_raise(KeyError("missing"))


async def test_a_cancellation_of_the_block_still_ends_quietly_at_its_scope() -> None:
    with anyio.CancelScope() as scope:
        async with FakeLLMServer.serve():
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught


async def test_an_exception_group_raised_in_the_block_is_not_wrapped_again() -> None:
    group = ExceptionGroup("two", [ValueError("a"), KeyError("b")])
    with pytest.raises(ExceptionGroup) as info:
        async with FakeLLMServer.serve():
            raise group
    assert info.value is group


class _Custom(Exception):
    pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    error_type=st.sampled_from([ValueError, KeyError, RuntimeError, _Custom]),
    in_flight=st.integers(min_value=0, max_value=3),
    checkpoints=st.integers(min_value=0, max_value=3),
)
async def test_property_the_body_error_is_raised_as_itself_and_every_connection_is_cut(
    error_type: type[Exception], in_flight: int, checkpoints: int
) -> None:
    """Whatever the error, however many responses are streaming and wherever the body stops: the very same
    exception object leaves the block, every streaming response is cut and the port is closed."""
    error = error_type("raised in the body")
    outcomes: list[str] = []
    ports: list[int] = []
    async with anyio.create_task_group() as tg:
        with pytest.raises(error_type) as info:
            await _serve_and_raise(
                error, tg=tg, in_flight=in_flight, outcomes=outcomes, ports=ports, checkpoints=checkpoints
            )
    assert info.value is error
    assert outcomes == ["cut"] * in_flight
    assert await _refuses_connections(ports[0])
