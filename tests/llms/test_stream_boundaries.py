"""Where a model request begins and ends: URLs, the connection pool, the terminal event, bodies that are not SSE.

* The URL of a request keeps the base URL's query (Azure's ``?api-version=``).
* The shared client never makes a healthy server's requests wait for a connection; a user's own client whose
  pool is full gets an error that says so (not one that blames the server).
* A finished message is finished: a whole-call ``timeout`` that fires after the terminal event (while the
  rest of the body is drained) does not undo it, and the tool loop goes on.
* The whole-call timeout error keeps the request id once the response had started.
* A 2xx body without a content-type that is HTML/JSON, or that holds no event, is malformed, not truncated.
* SSE lines are parsed in linear time and capped in length.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_helpers import KEY, failure_of, oai

from miniagents import MiniAgents
from miniagents.llms import (
    LLMTimeoutError,
    MalformedResponseError,
    TruncatedStreamError,
    _loop,
    _sse,
    anthropic_agent,
    openai_agent,
)
from miniagents.llms._common import endpoint_url
from miniagents.llms._http import POOL_LIMITS
from miniagents.llms._sse import SSEDecoder, SSELineTooLongError
from miniagents.testing import (
    FakeLLMServer,
    Gate,
    Hang,
    ScriptedResponse,
    ToolCall,
    anthropic_stream,
    openai_stream,
    raw_response,
)

pytestmark = pytest.mark.anyio


# -- URLs ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base_url", "path", "expected"),
    [
        ("https://api.openai.com/v1", "chat/completions", "https://api.openai.com/v1/chat/completions"),
        (
            "https://r.openai.azure.com/openai/deployments/gpt?api-version=2024-10-21",
            "chat/completions",
            "https://r.openai.azure.com/openai/deployments/gpt/chat/completions?api-version=2024-10-21",
        ),
        ("https://host/v1/?a=1&b=2", "chat/completions", "https://host/v1/chat/completions?a=1&b=2"),
        ("https://api.anthropic.com", "v1/messages", "https://api.anthropic.com/v1/messages"),
    ],
)
def test_endpoint_urls_append_the_path_before_the_query(base_url: str, path: str, expected: str) -> None:
    assert endpoint_url(base_url, path) == expected


async def test_an_azure_style_base_url_keeps_its_api_version_query() -> None:
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.enqueue(openai_stream("ok"))
        server.enqueue(anthropic_stream("ok"))
        base = server.openai_base_url
        assert await openai_agent.inquire("hi", **oai(server, base_url=f"{base}/?api-version=2024-10-21"))
        await anthropic_agent.inquire(
            "hi", model="c", api_key=KEY, base_url=f"{server.anthropic_base_url}?beta=true"
        )
        openai_request, anthropic_request = server.requests
    assert openai_request.path == "/v1/chat/completions?api-version=2024-10-21"
    assert anthropic_request.path == "/v1/messages?beta=true"


# -- the connection pool ------------------------------------------------------------------------------------------
def test_the_shared_pool_has_no_connection_limit() -> None:
    assert POOL_LIMITS.max_connections is None


async def test_more_concurrent_streams_than_the_old_pool_limit_all_reach_the_server() -> None:
    """150 streams that each wait until all 150 requests arrived: a pool of 100 would stall the 101st."""
    count = 150
    gate = Gate()
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: _gated(gate)
        replies = [openai_agent.inquire(f"q{i}", **oai(server)) for i in range(count)]
        with anyio.fail_after(60):
            await server.wait_for_requests(count)
        gate.open()
        texts = [await r.as_single_text() for r in replies]
    assert texts == ["ok"] * count


def _gated(gate: Gate) -> ScriptedResponse:
    stream = openai_stream("ok")
    return ScriptedResponse(status=200, headers=stream.headers, body=(gate, *stream.body))


async def test_a_full_pool_of_a_users_client_is_reported_as_the_clients_limit() -> None:
    gate = Gate()
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=httpx.Timeout(30.0, pool=0.2))
    async with client, FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: _gated(gate)
        first = openai_agent.inquire("first", **oai(server, http_client=client))
        with anyio.fail_after(30):
            await server.wait_for_requests(1)
        error = await failure_of(
            openai_agent.inquire("second", **oai(server, http_client=client, max_retries=0))
        )
        gate.open()
        assert await first.as_single_text() == "ok"
    assert isinstance(error, LLMTimeoutError)
    assert "pool" in error.message and "never sent" in error.message
    assert len(server.requests) == 1


# -- the terminal event -------------------------------------------------------------------------------------------
async def test_a_timeout_while_draining_after_the_terminal_event_keeps_the_tool_loop_going(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server keeps the body open after [DONE]; the drain outlasts timeout=; the tool still runs."""
    monkeypatch.setattr(_loop, "_DRAIN_SECONDS", 120.0)
    ran: list[int] = []

    async def add(a: int, b: int) -> int:
        """Add two numbers."""
        ran.append(a + b)
        return a + b

    first = openai_stream(tool_calls=[ToolCall("add", {"a": 2, "b": 3}, id="call_1")])
    held_open = ScriptedResponse(status=200, headers=first.headers, body=(*first.body, Hang()))
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.enqueue(held_open, openai_stream("The sum is 5."))
        replies = openai_agent.inquire("2+3?", **oai(server, tools=[add], timeout=1.0))
        messages = await replies
    assert ran == [5]
    assert [m.get("role") for m in messages] == ["assistant", "tool", "assistant"]
    assert str(messages[-1]) == "The sum is 5."
    assert len(server.requests) == 2
    assert server.requests[0].disconnected  # the drain was cut off: the connection is closed, not reused


async def test_the_whole_call_timeout_error_keeps_the_request_id_once_streaming() -> None:
    stream = openai_stream(["partial"])
    stalls = ScriptedResponse(status=200, headers=stream.headers, body=(*stream.body[:2], Hang()))
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: stalls
        replies = openai_agent.inquire("hi", **oai(server, timeout=0.5))
        (promise,) = [p async for p in replies.promises()]
        tokens: list[str] = []

        async def read() -> None:
            async for token in promise:
                tokens.append(token)

        with pytest.raises(LLMTimeoutError) as caught:
            await read()
    assert tokens == ["partial"]
    assert caught.value.request_id == "req_fake_openai"
    assert "timeout=0.5" in caught.value.message


async def test_a_timeout_before_the_response_has_no_request_id() -> None:
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: ScriptedResponse(before_headers=Hang())
        error = await failure_of(openai_agent.inquire("hi", **oai(server, timeout=0.3, max_retries=0)))
    assert isinstance(error, LLMTimeoutError)
    assert error.request_id is None


# -- bodies that are not event streams ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("<!DOCTYPE html><html><body>Gateway login</body></html>", "HTML"),
        ("\n\n  <html>proxy error</html>", "HTML"),
        ('{"id": "chatcmpl-1", "choices": []}', "JSON"),
        ("just some text\nwith lines\n", "no event-stream event"),
    ],
)
async def test_a_200_without_content_type_that_is_not_sse_is_malformed(body: str, what: str) -> None:
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: raw_response(200, body, content_type=None)
        error = await failure_of(openai_agent.inquire("hi", **oai(server)))
    assert isinstance(error, MalformedResponseError), error
    assert what in error.message
    assert repr(body.strip()[:10])[1:-1] in error.message  # a snippet of what came back
    assert error.status == 200 and error.request_id is None


async def test_a_200_without_content_type_that_is_sse_is_parsed() -> None:
    stream = openai_stream(["fine ", "anyway"])
    headers = [(k, v) for k, v in stream.headers if k.lower() != "content-type"]
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: ScriptedResponse(
            status=200, headers=headers, body=stream.body, default_content_type=False
        )
        assert await openai_agent.inquire("hi", **oai(server)).as_single_text() == "fine anyway"


async def test_an_event_stream_with_no_events_is_still_truncated() -> None:
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: raw_response(
            200, ": just a comment\n\n", content_type="text/event-stream"
        )
        error = await failure_of(openai_agent.inquire("hi", **oai(server)))
    assert isinstance(error, TruncatedStreamError)


# -- SSE lines ----------------------------------------------------------------------------------------------------
def test_a_line_longer_than_the_cap_raises_however_it_is_chunked() -> None:
    decoder = SSEDecoder(max_line_length=1000)
    decoder.feed(b"data: " + b"x" * 900)
    with pytest.raises(SSELineTooLongError, match="1000"):
        decoder.feed(b"x" * 200)
    whole = SSEDecoder(max_line_length=1000)
    with pytest.raises(SSELineTooLongError):
        whole.feed(b"data: " + b"y" * 2000 + b"\n\n")


def test_a_line_at_the_cap_is_accepted() -> None:
    decoder = SSEDecoder(max_line_length=1006)
    (event,) = decoder.feed(b"data: " + b"z" * 1000 + b"\n\n")
    assert event.data == "z" * 1000


def test_a_multi_megabyte_line_in_small_chunks_decodes_whole() -> None:
    payload = "a" * (4 * 1024 * 1024)
    raw = f"data: {payload}\n\n".encode()
    decoder = SSEDecoder()
    events = []
    for start in range(0, len(raw), 1024):
        events.extend(decoder.feed(raw[start : start + 1024]))
    assert [e.data for e in events] == [payload]


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.text(st.sampled_from("ab:é \u2028"), max_size=300), min_size=1, max_size=6),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=40),
)
def test_long_lines_decode_the_same_however_the_bytes_are_split(
    lines: list[str], newline: str, cuts: list[int]
) -> None:
    raw = "".join(f"data: {line}{newline}{newline}" for line in lines).encode()
    reference = SSEDecoder().feed(raw)
    decoder = SSEDecoder()
    events = []
    previous = 0
    for cut in sorted({c % (len(raw) + 1) for c in cuts}):
        events.extend(decoder.feed(raw[previous:cut]))
        previous = cut
    events.extend(decoder.feed(raw[previous:]))
    events.extend(decoder.close())
    assert events == reference
    assert [e.data for e in events] == lines


async def test_an_overlong_line_from_a_server_is_a_malformed_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_sse, "MAX_LINE_LENGTH", 4096)
    async with FakeLLMServer.serve() as server, MiniAgents():
        server.handler = lambda request: raw_response(
            200, b"data: " + b"q" * 10_000 + b"\n\n", content_type="text/event-stream"
        )
        error = await failure_of(openai_agent.inquire("hi", **oai(server)))
    assert isinstance(error, MalformedResponseError)
    assert "4096" in error.message
