"""Specification of ``miniagents.asgi``: a reply sequence as a Server-Sent Events ASGI response.

Tested in-process as plain ASGI, with no web server: the app is called with an ``http`` scope, a ``receive`` that
delivers the request and then blocks until the test lets the client leave (``http.disconnect``), and a ``send``
that records what the app writes (and fails with ``OSError`` once the test closed the connection).

What the docstrings promise:

* the response starts with status 200, ``content-type: text/event-stream; charset=utf-8`` and
  ``cache-control: no-cache``; per message ``token`` events (``{"index", "token"}``, as the message streams; a
  message that was not streamed gives its content as one token, none if empty) then one ``message`` event
  (``{"index", "hash_key", "message": to_dict()}``); finally ``done`` (``{"messages": n}``) or ``error``
  (``{"type", "message"}``: by default a fixed message, the error being logged; ``on_error=error_details``
  sends ``str(error)``), and the last body message has ``more_body: False``;
* a failure of the replies is an ``error`` event (it counts as observed: the ``MiniAgents`` block does not raise
  it), never a broken response;
* the call lives as long as the response: a client that leaves (``http.disconnect`` or a write to a closed
  connection) or a cancellation of the request cancels it, and the app returns once the call has ended;
* ``: ping`` comments after ``ping_interval`` seconds of silence;
* ``MiniAgentsMiddleware`` runs requests attached to the app's context and passes lifespan events through.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import (
    AgentCall,
    AgentCallCancelledError,
    InteractionContext,
    Message,
    MessagePromise,
    MessageSequencePromise,
    MiniAgents,
    NoActiveContextError,
    TextMessage,
    miniagent,
)
from miniagents.asgi import (
    EventStreamResponse,
    MiniAgentsMiddleware,
    ServerSentEvent,
    error_details,
    error_payload,
    reply_events,
)

pytestmark = pytest.mark.anyio

#: A guard against a hang (a test that would wait forever fails instead); never a timing assertion.
HANG_GUARD = 20

ASGIMessage = MutableMapping[str, Any]


# -- an SSE parser, per the WHATWG "event stream interpretation" ------------------------------------------------
@dataclass(frozen=True)
class SSE:
    """One dispatched event: its type (``"message"`` when none was given), data and last event id."""

    event: str
    data: str
    id: str | None


class SSEParser:
    """Incremental ``text/event-stream`` parser: feed body chunks, get the events each chunk completed.

    Lines end with CRLF, LF or CR; ``:`` lines are comments (kept in ``comments``); ``data`` lines are joined by
    ``"\\n"``; a blank line dispatches the event (none if it has no data); an unfinished event at the end is
    dropped.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._pending = ""
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self.comments: list[str] = []
        self.events: list[SSE] = []

    def feed(self, chunk: bytes) -> list[SSE]:
        text = self._decoder.decode(chunk)
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the LF of a CRLF split between two chunks
        self._pending += text
        if self._pending:
            self._after_cr = self._pending.endswith("\r")
        parts = re.split(r"\r\n|\r|\n", self._pending)
        self._pending = parts.pop()  # the unfinished line
        dispatched: list[SSE] = []
        for line in parts:
            event = self._line(line)
            if event is not None:
                dispatched.append(event)
        self.events.extend(dispatched)
        return dispatched

    def _line(self, line: str) -> SSE | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SSE(self._event or "message", "\n".join(self._data), self._last_id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._last_id = value
        return None


def parse_sse(body: bytes) -> SSEParser:
    parser = SSEParser()
    parser.feed(body)
    return parser


def hook_json(event: SSE) -> Any:
    """An event's JSON data as read inside ``send`` hooks: leniently (raw control characters allowed), so that a
    hook never fails inside the app; what the client gets is checked strictly afterwards."""
    return json.loads(event.data, strict=False)


def json_safe(value: Any) -> Any:
    """*value* as a client sees it after JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(value))


# -- an in-process ASGI client --------------------------------------------------------------------------------
def http_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/ask",
        "raw_path": b"/ask",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"accept", b"text/event-stream")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


class Client:
    """One HTTP client of an ASGI app, in-process.

    ``receive`` returns the (empty) request once, then blocks until :meth:`leave`, then returns
    ``http.disconnect``.  ``send`` records every message and feeds body chunks to an SSE parser, calling
    ``on_event`` for each event a chunk completes and ``on_comment`` for each comment; after :meth:`close` every
    ``send`` raises ``OSError`` (a write to a closed connection) and records nothing.
    """

    def __init__(
        self,
        *,
        on_event: Callable[[Client, SSE], None] | None = None,
        on_comment: Callable[[Client, str], None] | None = None,
        checkpoint_in_send: bool = False,
    ) -> None:
        self.sent: list[ASGIMessage] = []
        self.parser = SSEParser()
        self.on_event = on_event
        self.on_comment = on_comment
        self.checkpoint_in_send = checkpoint_in_send
        self.closed = False
        self.failed_writes = 0
        self.receive_calls = 0
        self._left = anyio.Event()

    def leave(self) -> None:
        self._left.set()

    def close(self) -> None:
        self.closed = True

    async def receive(self) -> ASGIMessage:
        self.receive_calls += 1
        if self.receive_calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: ASGIMessage) -> None:
        if self.closed:
            self.failed_writes += 1
            raise OSError("write to a closed connection")
        self.sent.append(dict(message))
        if message["type"] == "http.response.body":
            comments_before = len(self.parser.comments)
            for event in self.parser.feed(message["body"]):
                if self.on_event is not None:
                    self.on_event(self, event)
            for comment in self.parser.comments[comments_before:]:
                if self.on_comment is not None:
                    self.on_comment(self, comment)
        if self.checkpoint_in_send:
            await anyio.lowlevel.checkpoint()  # a real server's write may let other tasks run

    @property
    def start(self) -> ASGIMessage:
        assert self.sent, "nothing was sent"
        assert self.sent[0]["type"] == "http.response.start"
        return self.sent[0]

    @property
    def bodies(self) -> list[ASGIMessage]:
        assert all(m["type"] == "http.response.body" for m in self.sent[1:]), self.sent
        return self.sent[1:]

    def events(self) -> list[tuple[str, Any]]:
        """The (event, JSON data) pairs of the whole body, comments left out."""
        return [
            (e.event, json.loads(e.data)) for e in parse_sse(b"".join(m["body"] for m in self.bodies)).events
        ]

    def headers(self) -> dict[bytes, bytes]:
        return dict(self.start["headers"])


async def serve(
    app: Callable[..., Awaitable[None]], client: Client, scope: dict[str, Any] | None = None
) -> None:
    with anyio.fail_after(HANG_GUARD):
        await app(scope if scope is not None else http_scope(), client.receive, client.send)


def expected_message(index: int, message: Message, tokens: list[str]) -> list[tuple[str, Any]]:
    """The events of message *index*: its tokens, then the message event."""
    return [
        *(("token", {"index": index, "token": token}) for token in tokens),
        ("message", {"index": index, "hash_key": message.hash_key, "message": json_safe(message.to_dict())}),
    ]


class Outcomes:
    """A call observer recording each finished call's agent alias and outcome."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, str]] = []

    def call_started(self, call: AgentCall) -> None:
        return None

    def call_running(self, call: AgentCall, state: Any) -> None:
        pass

    def call_finished(self, call: AgentCall, state: Any, outcome: str, error: BaseException | None) -> None:
        self.finished.append((call.agent.alias, outcome))


# -- agents ---------------------------------------------------------------------------------------------------
@miniagent
async def greeter(ctx: InteractionContext) -> None:
    ctx.reply("Hello")
    ctx.reply(TextMessage("world", role="assistant", scores=(1, 2)))
    ctx.reply("")


@miniagent
async def fails_after_two(ctx: InteractionContext) -> None:
    ctx.reply("one")
    ctx.reply("two")
    raise ValueError("bad input")


# -- the wire format ------------------------------------------------------------------------------------------
async def test_response_starts_200_with_event_stream_headers_and_ends_with_a_last_body_message() -> None:
    client = Client()
    async with MiniAgents():
        await serve(EventStreamResponse(greeter.inquire()), client)
    assert client.start["status"] == 200
    headers = client.headers()
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    bodies = client.bodies
    assert bodies, "no body was sent"
    assert [m.get("more_body", False) for m in bodies] == [True] * (len(bodies) - 1) + [False]


async def test_status_code_and_extra_headers_are_sent_with_the_default_ones() -> None:
    client = Client()
    async with MiniAgents():
        response = EventStreamResponse(greeter.inquire(), status_code=201, headers=[("X-Request-Id", "42")])
        await serve(response, client)
    assert client.start["status"] == 201
    headers = client.headers()
    assert headers[b"x-request-id"] == b"42"
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"


async def test_each_message_gives_its_tokens_then_a_message_event_and_the_stream_ends_with_done() -> None:
    client = Client()
    async with MiniAgents():
        replies = greeter.inquire()
        await serve(EventStreamResponse(replies), client)
        hello, world, empty = await replies
    assert client.events() == [
        *expected_message(0, hello, ["Hello"]),
        *expected_message(1, world, ["world"]),
        *expected_message(2, empty, []),  # an empty message has no token
        ("done", {"messages": 3}),
    ]
    assert world.to_dict()["role"] == "assistant"  # the message event carries the whole message


async def test_no_replies_give_only_done() -> None:
    @miniagent
    async def silent(ctx: InteractionContext) -> None:
        pass

    client = Client()
    async with MiniAgents():
        await serve(EventStreamResponse(silent.inquire()), client)
    assert client.events() == [("done", {"messages": 0})]
    assert client.bodies[-1]["more_body"] is False


async def test_tokens_false_sends_only_message_events() -> None:
    client = Client()
    async with MiniAgents():
        replies = greeter.inquire()
        await serve(EventStreamResponse(replies, tokens=False), client)
        messages = await replies
    assert client.events() == [
        *(event for i, m in enumerate(messages) for event in expected_message(i, m, [])),
        ("done", {"messages": 3}),
    ]


@pytest.mark.parametrize("producer", ["MessagePromise.open", "TextMessage.stream"])
async def test_a_streamed_message_sends_each_token_before_the_agent_produces_the_next(producer: str) -> None:
    """The agent waits after each piece until the client has seen its token: were tokens sent only at the end
    (or batched), the agent would wait forever and the hang guard would fail the test."""
    pieces = ["The ", "answer ", "is ", "42."]
    seen = [anyio.Event() for _ in pieces]
    log: list[str] = []

    async def produce() -> AsyncIterator[str]:
        for k, piece in enumerate(pieces):
            log.append(f"produced {k}")
            yield piece
            await seen[k].wait()

    @miniagent
    async def streamer(ctx: InteractionContext) -> None:
        if producer == "TextMessage.stream":
            ctx.reply(TextMessage.stream(produce()))
            return
        promise, writer = MessagePromise.open()
        ctx.reply(promise)
        with writer:
            for k, piece in enumerate(pieces):
                log.append(f"produced {k}")
                writer.send(piece)
                await seen[k].wait()

    def on_event(client: Client, event: SSE) -> None:
        if event.event == "token":
            k = pieces.index(hook_json(event)["token"])
            log.append(f"sent {k}")
            seen[k].set()

    client = Client(on_event=on_event)
    async with MiniAgents():
        replies = streamer.inquire()
        await serve(EventStreamResponse(replies), client)
        (message,) = await replies
    assert log == [entry for k in range(len(pieces)) for entry in (f"produced {k}", f"sent {k}")]
    assert message.content == "".join(pieces)
    assert client.events() == [*expected_message(0, message, pieces), ("done", {"messages": 1})]


async def test_a_token_with_a_unicode_line_separator_reaches_the_client_intact() -> None:
    """LLM text may hold U+2028 / U+2029 / NEL; the client must still get the token and valid JSON."""
    tokens = ["a\u2028b", "c\u2029d", "e\x85f"]

    @miniagent
    async def unusual(ctx: InteractionContext) -> None:
        promise, writer = MessagePromise.open()
        ctx.reply(promise)
        with writer:
            for token in tokens:
                writer.send(token)

    client = Client()
    async with MiniAgents():
        replies = unusual.inquire()
        await serve(EventStreamResponse(replies), client)
        (message,) = await replies
    assert client.events() == [*expected_message(0, message, tokens), ("done", {"messages": 1})]


# -- errors ---------------------------------------------------------------------------------------------------
async def test_an_agent_failing_after_replies_ends_the_body_with_an_error_event() -> None:
    client = Client()
    async with MiniAgents():  # exits without raising: the error event counts as observed
        replies = fails_after_two.inquire()
        await serve(EventStreamResponse(replies, on_error=error_details), client)  # the app raises nothing
        one, two = [m async for m in _until_error(replies)]
    assert client.events() == [
        *expected_message(0, one, ["one"]),
        *expected_message(1, two, ["two"]),
        ("error", {"type": "ValueError", "message": "bad input"}),
    ]
    assert client.bodies[-1]["more_body"] is False


async def test_by_default_the_error_event_names_the_type_and_the_error_text_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client()
    with caplog.at_level("WARNING", logger="miniagents.asgi"):
        async with MiniAgents():
            await serve(EventStreamResponse(fails_after_two.inquire(), tokens=False), client)
    event, payload = client.events()[-1]
    assert event == "error"
    assert payload == {"type": "ValueError", "message": error_payload(ValueError("bad input"))["message"]}
    assert "bad input" not in json.dumps(payload)  # the client does not see the error's own text
    (record,) = [r for r in caplog.records if r.name == "miniagents.asgi"]
    assert record.exc_info is not None and str(record.exc_info[1]) == "bad input"  # the server log does
    assert client.bodies[-1]["more_body"] is False


async def _until_error(replies: MessageSequencePromise) -> AsyncIterator[Message]:
    try:
        async for message in replies:
            yield message
    except Exception:
        return


async def test_on_error_builds_the_payload_of_the_error_event() -> None:
    errors: list[BaseException] = []

    def on_error(error: BaseException) -> dict[str, Any]:
        errors.append(error)
        return {"code": "agent_failed", "kind": type(error).__name__}

    client = Client()
    async with MiniAgents():
        await serve(EventStreamResponse(fails_after_two.inquire(), tokens=False, on_error=on_error), client)
    assert [event for event, _ in client.events()] == ["message", "message", "error"]
    assert client.events()[-1] == ("error", {"code": "agent_failed", "kind": "ValueError"})
    assert len(errors) == 1 and isinstance(errors[0], ValueError) and str(errors[0]) == "bad input"
    assert client.bodies[-1]["more_body"] is False


def test_error_payload_hides_the_error_text_and_error_details_sends_it() -> None:
    secret = RuntimeError("provider said: invalid key sk-123")
    assert error_payload(secret)["type"] == "RuntimeError"
    assert "sk-123" not in error_payload(secret)["message"]
    assert error_payload(secret)["message"] == error_payload(KeyError("other"))["message"]  # a fixed text
    assert error_details(secret) == {"type": "RuntimeError", "message": "provider said: invalid key sk-123"}
    assert error_details(KeyError("x")) == {"type": "KeyError", "message": "'x'"}


@pytest.mark.parametrize("how", ["writer as a context manager", "writer left open"])
async def test_an_error_in_the_middle_of_a_streamed_message_follows_its_tokens(how: str) -> None:
    @miniagent
    async def breaks_mid_stream(ctx: InteractionContext) -> None:
        ctx.reply("intro")
        promise, writer = MessagePromise.open()
        ctx.reply(promise)
        if how == "writer left open":
            writer.send("par")
            writer.send("tial")
            await anyio.lowlevel.checkpoint()
            raise ValueError("stream broke")
        with writer:
            writer.send("par")
            writer.send("tial")
            await anyio.lowlevel.checkpoint()
            raise ValueError("stream broke")

    client = Client()
    async with MiniAgents():  # exits without raising: the error was sent to the client
        replies = breaks_mid_stream.inquire()
        await serve(EventStreamResponse(replies, on_error=error_details), client)
        (intro,) = [m async for m in _until_error(replies)]
    assert client.events() == [
        *expected_message(0, intro, ["intro"]),
        ("token", {"index": 1, "token": "par"}),
        ("token", {"index": 1, "token": "tial"}),
        ("error", {"type": "ValueError", "message": "stream broke"}),
    ]
    assert client.bodies[-1]["more_body"] is False


# -- the call lives as long as the response -------------------------------------------------------------------
def hanging_agent(cleanups: list[str]) -> Any:
    """An agent that replies one message, then starts streaming a second one and waits forever."""

    @miniagent
    async def hangs(ctx: InteractionContext) -> None:
        ctx.reply("complete")
        promise, writer = MessagePromise.open()
        ctx.reply(promise)
        writer.send("first")
        try:
            await anyio.sleep_forever()
        finally:
            cleanups.append("agent cleaned up")

    return hangs


def on_token(text: str, action: Callable[[Client], None]) -> Callable[[Client, SSE], None]:
    def on_event(client: Client, event: SSE) -> None:
        if event.event == "token" and hook_json(event)["token"] == text:
            action(client)

    return on_event


async def assert_cancelled_after_complete(replies: MessageSequencePromise) -> None:
    """What the call completed before it was cancelled stays in its reply sequence, then the cancellation."""
    seen = [message.content async for message in _until_error(replies)]
    assert seen == ["complete"]
    with pytest.raises(AgentCallCancelledError):
        await replies


async def test_a_client_disconnecting_mid_stream_cancels_the_call_and_the_app_returns() -> None:
    cleanups: list[str] = []
    outcomes = Outcomes()
    client = Client(on_event=on_token("first", Client.leave))
    async with MiniAgents(call_observers=[outcomes]):
        call = hanging_agent(cleanups).initiate_call()
        replies = call.reply_sequence()
        await serve(EventStreamResponse(replies, ping_interval=None), client)
        assert call.done  # the call had ended when the app returned
        assert cleanups == ["agent cleaned up"]
        await assert_cancelled_after_complete(replies)
    assert outcomes.finished == [("hangs", "cancelled")]
    assert ("token", {"index": 1, "token": "first"}) in client.events()
    assert not [event for event, _ in client.events() if event in ("done", "error")]


async def test_a_write_to_a_closed_connection_cancels_the_call_and_the_app_returns() -> None:
    def close_after_first_message(client: Client, event: SSE) -> None:
        if event.event == "message":
            client.close()  # the next write, the token "first", fails

    cleanups: list[str] = []
    outcomes = Outcomes()
    client = Client(on_event=close_after_first_message)
    async with MiniAgents(call_observers=[outcomes]):
        call = hanging_agent(cleanups).initiate_call()
        replies = call.reply_sequence()
        await serve(EventStreamResponse(replies, ping_interval=None), client)  # no OSError escapes
        assert call.done
        assert cleanups == ["agent cleaned up"]
        await assert_cancelled_after_complete(replies)
    assert client.failed_writes == 1
    assert outcomes.finished == [("hangs", "cancelled")]


async def test_a_connection_closed_before_the_response_started_cancels_the_call() -> None:
    outcomes = Outcomes()
    client = Client()
    client.close()
    async with MiniAgents(call_observers=[outcomes]):
        call = hanging_agent([]).initiate_call()
        await serve(EventStreamResponse(call.reply_sequence(), ping_interval=None), client)
        assert call.done
    assert outcomes.finished == [("hangs", "cancelled")]  # before it started: no agent code ran
    assert client.sent == []


async def test_a_ping_written_to_a_closed_connection_cancels_the_call_and_the_app_returns() -> None:
    """The only write while the agent is silent is a ping: its failure is a client that left too."""

    @miniagent
    async def thinks_forever(ctx: InteractionContext) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cleanups.append("agent cleaned up")

    cleanups: list[str] = []
    client = Client()

    async def close_after_start(message: ASGIMessage) -> None:
        await Client.send(client, message)
        client.close()

    async with MiniAgents():
        call = thinks_forever.initiate_call()
        response = EventStreamResponse(call.reply_sequence(), ping_interval=0.01)
        with anyio.fail_after(HANG_GUARD):
            await response(http_scope(), client.receive, close_after_start)
        assert call.done
    assert cleanups == ["agent cleaned up"]
    assert client.failed_writes >= 1


async def test_cancelling_the_task_serving_the_request_cancels_the_call_before_the_scope_exits() -> None:
    cleanups: list[str] = []
    token_sent = anyio.Event()
    client = Client(on_event=on_token("first", lambda _: token_sent.set()))
    async with MiniAgents():
        call = hanging_agent(cleanups).initiate_call()
        replies = call.reply_sequence()
        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, EventStreamResponse(replies, ping_interval=None), client)
                await token_sent.wait()
                tg.cancel_scope.cancel()  # e.g. the server shutting down
        assert call.done
        assert cleanups == ["agent cleaned up"]
        await assert_cancelled_after_complete(replies)


# -- pings and argument checks --------------------------------------------------------------------------------
async def test_silence_longer_than_ping_interval_sends_a_ping_comment() -> None:
    pinged = anyio.Event()

    @miniagent
    async def slow(ctx: InteractionContext) -> None:
        await pinged.wait()  # replies only once the client got a ping
        ctx.reply("after the ping")

    def on_comment(client: Client, comment: str) -> None:
        if comment == "ping":
            pinged.set()

    client = Client(on_comment=on_comment)
    async with MiniAgents():
        replies = slow.inquire()
        await serve(EventStreamResponse(replies, ping_interval=0.01), client)
        (message,) = await replies
    pings = [i for i, m in enumerate(client.bodies) if m["body"] == b": ping\n\n"]
    first_event = next(i for i, m in enumerate(client.bodies) if m["body"].startswith(b"event:"))
    assert pings and pings[0] < first_event
    assert client.events() == [*expected_message(0, message, ["after the ping"]), ("done", {"messages": 1})]
    assert client.bodies[-1]["more_body"] is False


async def test_no_ping_comment_when_ping_interval_is_none() -> None:
    @miniagent
    async def slow(ctx: InteractionContext) -> None:
        await anyio.sleep(0.2)
        ctx.reply("late")

    client = Client()
    async with MiniAgents():
        await serve(EventStreamResponse(slow.inquire(), ping_interval=None), client)
    assert client.parser.comments == []
    assert [event for event, _ in client.events()] == ["token", "message", "done"]


async def test_no_ping_follows_the_last_body_message() -> None:
    """A ping due while the last body message is being written must not be sent after it (ASGI forbids any
    body after ``more_body: False``)."""
    client = Client()
    real_send = client.send

    async def slow_last_write(message: ASGIMessage) -> None:
        await real_send(message)
        if message["type"] == "http.response.body" and message.get("more_body") is False:
            await anyio.sleep(0.1)  # a slow network write: ten ping intervals pass meanwhile

    async with MiniAgents():
        response = EventStreamResponse(greeter.inquire(), ping_interval=0.01)
        with anyio.fail_after(HANG_GUARD):
            await response(http_scope(), client.receive, slow_last_write)
    assert client.bodies[-1]["more_body"] is False, [m["body"] for m in client.bodies[-3:]]


@pytest.mark.parametrize("interval", [0, 0.0, -1.0])
async def test_ping_interval_must_be_positive_or_none(interval: float) -> None:
    async with MiniAgents():
        with pytest.raises(ValueError, match="ping_interval"):
            EventStreamResponse(greeter.inquire(), ping_interval=interval)


@pytest.mark.parametrize("replies", ["Hello", [TextMessage("Hello")], None], ids=["str", "list", "None"])
def test_replies_must_be_a_message_sequence_promise(replies: Any) -> None:
    with pytest.raises(TypeError, match="MessageSequencePromise"):
        EventStreamResponse(replies)


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
async def test_a_non_http_scope_is_refused(scope_type: str) -> None:
    client = Client()
    async with MiniAgents():
        response = EventStreamResponse(greeter.inquire())
        with pytest.raises(TypeError, match=scope_type):
            await response({"type": scope_type}, client.receive, client.send)
    assert client.sent == []


async def test_reply_events_yields_the_same_events_for_other_frameworks() -> None:
    messages = [TextMessage("one"), TextMessage("", note="empty")]
    events = [e async for e in reply_events(MessageSequencePromise.resolved(messages))]
    assert [(e.event, e.data) for e in events] == [
        ("token", {"index": 0, "token": "one"}),
        ("message", {"index": 0, "hash_key": messages[0].hash_key, "message": messages[0].to_dict()}),
        ("message", {"index": 1, "hash_key": messages[1].hash_key, "message": messages[1].to_dict()}),
        ("done", {"messages": 2}),
    ]


# -- ServerSentEvent ------------------------------------------------------------------------------------------
def test_encode_text_on_several_lines_with_event_and_id() -> None:
    event = ServerSentEvent("first line\nsecond line", event="note", id="7")
    assert event.encode() == b"event: note\nid: 7\ndata: first line\ndata: second line\n\n"
    assert parse_sse(event.encode()).events == [SSE("note", "first line\nsecond line", "7")]


def test_encode_without_event_or_id_is_data_only() -> None:
    assert ServerSentEvent("x").encode() == b"data: x\n\n"
    assert ServerSentEvent("").encode() == b"data: \n\n"


def test_encode_non_text_data_as_one_line_of_json_keeping_non_ascii() -> None:
    data = {"token": "héllo ✓ 日本", "n": [1, 2], "nested": {"ok": True}}
    encoded = ServerSentEvent(data, event="token").encode()
    assert "héllo ✓ 日本".encode() in encoded  # UTF-8, not \u escapes
    assert encoded.count(b"data: ") == 1
    assert encoded.startswith(b"event: token\ndata: ") and encoded.endswith(b"\n\n")
    (parsed,) = parse_sse(encoded).events
    assert json.loads(parsed.data) == data


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("bad", ["two\nlines", "carriage\rreturn", "end\r\n"])
def test_event_and_id_must_be_single_lines(field: str, bad: str) -> None:
    with pytest.raises(ValueError, match=f"ServerSentEvent.{field}"):
        ServerSentEvent("data", **{field: bad})


def sse_line_endings_normalised(text: str) -> str:
    """What an SSE client can get back from *text*: the format turns CRLF and CR into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(st.characters(codec="utf-8")),
    event=st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1),
)
def test_property_text_data_parses_back_to_the_original(text: str, event: str | None) -> None:
    (parsed,) = parse_sse(ServerSentEvent(text, event=event).encode()).events
    assert parsed.data == sse_line_endings_normalised(text)
    assert parsed.event == (event or "message")


@settings(max_examples=300, deadline=None)
@given(token=st.text(st.characters(codec="utf-8")), index=st.integers(min_value=0))
def test_property_json_data_parses_back_to_the_original(token: str, index: int) -> None:
    data = {"index": index, "token": token}
    (parsed,) = parse_sse(ServerSentEvent(data, event="token").encode()).events
    assert json.loads(parsed.data) == data


# -- MiniAgentsMiddleware -------------------------------------------------------------------------------------
@miniagent
async def echo(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(f"echo: {message}")


async def test_the_middleware_attaches_a_request_task_that_did_not_inherit_the_context() -> None:
    contexts: list[object] = []

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        contexts.append(MiniAgents.current())
        await EventStreamResponse(echo.inquire("hi"))(scope, receive, send)

    ma = MiniAgents()
    middleware = MiniAgentsMiddleware(handler, context=ma)
    client = Client()
    entered, served = anyio.Event(), anyio.Event()
    outside: list[BaseException] = []

    async def request_task() -> None:  # started before the context: like a server's request handler
        await entered.wait()
        try:
            MiniAgents.current()
        except NoActiveContextError as error:
            outside.append(error)  # this task really has no current context of its own
        await serve(middleware, client)
        served.set()

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(request_task)
            async with ma:
                entered.set()
                await served.wait()
    assert len(outside) == 1
    assert contexts == [ma]
    assert [(event, data.get("token")) for event, data in client.events()] == [
        ("token", "echo: hi"),
        ("message", None),
        ("done", None),
    ]


async def test_the_middleware_passes_lifespan_events_through_without_attaching() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            seen.append(f"{scope['type']}: attached to {MiniAgents.current()!r}")
        except NoActiveContextError:
            seen.append(f"{scope['type']}: no context")

    ma = MiniAgents()
    middleware = MiniAgentsMiddleware(app, context=ma)
    client = Client()
    entered, done = anyio.Event(), anyio.Event()

    async def lifespan_task() -> None:
        await middleware({"type": "lifespan"}, client.receive, client.send)  # before the context is entered
        await entered.wait()
        await middleware({"type": "lifespan"}, client.receive, client.send)  # while it is active elsewhere
        done.set()

    with anyio.fail_after(HANG_GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lifespan_task)
            async with ma:
                entered.set()
                await done.wait()
    assert seen == ["lifespan: no context", "lifespan: no context"]


async def test_the_lifespan_can_enter_the_context_through_the_middleware() -> None:
    """The documented setup: the lifespan (passed through) enters the context the requests attach to."""
    ma = MiniAgents()
    answers: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with ma:
            answers.append(await echo.inquire("startup check").as_single_text())

    await MiniAgentsMiddleware(app, context=ma)({"type": "lifespan"}, Client().receive, Client().send)
    assert answers == ["echo: startup check"]


@pytest.mark.parametrize("context", [None, "ma", MiniAgents], ids=["None", "str", "the class"])
def test_the_middleware_needs_a_miniagents_context(context: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(TypeError, match="context=MiniAgents"):
        MiniAgentsMiddleware(app, context=context)


# -- property: the event stream of any reply script -----------------------------------------------------------
pieces_st = st.lists(
    st.tuples(st.text(min_size=1, max_size=5), st.integers(min_value=0, max_value=3)), min_size=1, max_size=4
)
script_st = st.lists(st.text(max_size=6) | pieces_st, max_size=4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    script=script_st,
    ending=st.sampled_from(["returns", "fails", "client leaves", "connection closes"]),
    tokens=st.booleans(),
    ping_interval=st.sampled_from([None, 1e-6]),
    checkpoint_in_send=st.booleans(),
)
async def test_property_the_event_stream_follows_the_replies_and_the_call_ends_with_the_response(
    script: list[str | list[tuple[str, int]]],
    ending: str,
    tokens: bool,
    ping_interval: float | None,
    checkpoint_in_send: bool,
) -> None:
    """Messages (plain, or streamed in pieces with pauses), then an ending: the agent returns, fails, or waits
    forever after the client left (``http.disconnect`` once it saw the last message; or, after one more reply,
    a write to the connection it closed).  Pings (``1e-6``: at almost every checkpoint) may come anywhere.  The
    client gets, in order, each message's tokens and message event, then ``done`` or ``error`` (neither when it
    left); nothing follows the last body message; the call has ended when the app returns; the block exits
    cleanly."""
    cleanups: list[str] = []
    leaving = ending in ("client leaves", "connection closes")

    @miniagent
    async def scripted(ctx: InteractionContext) -> None:
        for item in script:
            if isinstance(item, str):
                ctx.reply(item)
                continue
            promise, writer = MessagePromise.open()
            ctx.reply(promise)
            for piece, pauses in item:
                writer.send(piece)
                for _ in range(pauses):
                    await anyio.lowlevel.checkpoint()
            writer.finish()
        try:
            if ending == "fails":
                raise ValueError("scripted failure")
            if ending == "connection closes":
                ctx.reply("never delivered")  # its first write fails
            if leaving:
                await anyio.sleep_forever()
        finally:
            cleanups.append("ended")

    expected: list[tuple[str, Any]] = []
    for index, item in enumerate(script):
        pieces = [item] if isinstance(item, str) else [piece for piece, _ in item]
        message = TextMessage("".join(pieces))
        expected += expected_message(index, message, [p for p in pieces if p] if tokens else [])
    if ending == "returns":
        expected.append(("done", {"messages": len(script)}))
    elif ending == "fails":
        expected.append(("error", {"type": "ValueError", "message": "scripted failure"}))

    def leave(client: Client) -> None:
        if ending == "client leaves":
            client.leave()
        else:
            client.close()

    def leave_after_the_script(client: Client, event: SSE) -> None:
        if event.event == "message" and hook_json(event)["index"] == len(script) - 1:
            leave(client)

    client = Client(
        on_event=leave_after_the_script if leaving else None, checkpoint_in_send=checkpoint_in_send
    )
    if leaving and not script:
        leave(client)  # nothing to wait for
    async with MiniAgents():
        call = scripted.initiate_call()
        replies = call.reply_sequence()
        response = EventStreamResponse(
            replies, tokens=tokens, on_error=error_details, ping_interval=ping_interval
        )
        await serve(response, client)
        assert call.done
        assert cleanups == ["ended"] or not client.sent  # (closed at once: maybe cancelled before it started)
    if not client.sent:
        assert ending == "connection closes" and not script  # closed before the response started
        return
    assert client.start["status"] == 200
    assert client.events() == expected
    if not leaving:
        more = [m.get("more_body", False) for m in client.bodies]
        assert more == [True] * (len(more) - 1) + [False]
