"""A failed LLM exchange in a durable call is recorded as a failure marker and raised again on replay.

The agents here catch the LLM layer's errors and retry (or fall back), so the path a call takes depends on which
exchanges failed: a resumed call must see the same failures at the same points, without sending them again.
Each test runs on SQLite and on PostgreSQL (the latter is skipped without ``MINIAGENTS_POSTGRES_URL``).
"""

from __future__ import annotations

import collections
import itertools
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import pytest
from durable_helpers import database_text, interrupted, last_content
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.durable import DurableRuntime, durable
from miniagents.llms import APIStatusError, LLMError, openai_agent
from miniagents.testing import FakeLLMServer, RecordedRequest, ScriptedResponse, openai_error, openai_stream

pytestmark = pytest.mark.anyio

API_KEY = "sk-failed-exchange-secret-key-0123456789"

#: No retries inside the LLM layer: every failure reaches the agent, which retries itself.
llm = openai_agent.fork(alias="fx_llm", model="fake-model", api_key=API_KEY, max_retries=0)


def describe(error: LLMError) -> str:
    """What the agent saw of an error (it is part of the call's replies, so replay must reproduce it)."""
    return (
        f"failed {type(error).__name__} status={error.status} request_id={error.request_id} {error.message}"
    )


@miniagent(alias="fx_retrying")
async def _retrying(ctx: InteractionContext, base_url: str, n: int = 2, attempts: int = 6) -> None:
    """Ask *n* questions in turn; retry each one after an LLM error, replying what each failure was."""
    for i in range(n):
        for _ in range(attempts):
            try:
                ctx.reply(await llm.inquire(f"question {i}", base_url=base_url))
                break
            except LLMError as error:
                ctx.reply(describe(error))


retrying = durable(_retrying)


#: How the server answers the k-th request of one question: "ok", "500", "429", "echo" (a 401 quoting the key),
#: "abort" (one token, then the connection is closed) or "hang" (the stream stops after one token until the
#: client disconnects).
Outcome = str


def scripted(
    plan: dict[str, Sequence[Outcome]], hang_at: int | None = None
) -> Callable[[RecordedRequest], ScriptedResponse]:
    """A handler answering the k-th request of each question as ``plan[question][k]`` ("ok" past the end).

    With *hang_at*, the request of that index (0-based, over all requests) hangs instead, once, and is not
    counted: the same request sent again is answered as planned.
    """
    seen: collections.Counter[str] = collections.Counter()
    received = itertools.count()

    def handler(request: RecordedRequest) -> ScriptedResponse:
        content = last_content(request)
        if next(received) == hang_at:
            return openai_stream(["partial ", "answer"], hang_after=1)
        k = seen[content]
        seen[content] += 1
        outcomes = plan.get(content, ())
        outcome = outcomes[k] if k < len(outcomes) else "ok"
        if outcome == "500":
            return openai_error(500, f"the server failed on {content} #{k}", request_id=f"req-{content}-{k}")
        if outcome == "429":
            return openai_error(429, f"slow down on {content} #{k}", request_id=f"req-{content}-{k}")
        if outcome == "echo":  # a server that echoes the key in its error message
            return openai_error(
                401, f"Incorrect API key provided: {API_KEY}", request_id=f"req-{content}-{k}"
            )
        if outcome == "abort":  # a token, then the connection is closed mid-stream
            return openai_stream(["partial "], abort=True, request_id=f"req-{content}-{k}")
        if outcome == "hang":
            return openai_stream(["partial ", "answer"], hang_after=1)
        return openai_stream(["answer to ", content], request_id=f"req-{content}")

    return handler


def texts(messages: Sequence[Message]) -> list[str]:
    return [str(m) for m in messages]


async def test_a_call_that_retried_after_a_failure_resumes_without_resending_it(
    database: str, tmp_path: Path
) -> None:
    """The first request fails (HTTP 500), the agent retries it, the second question hangs and the runtime is
    left: the resumed call replays the failure and the retry, and sends only the hung request again."""
    async with FakeLLMServer.serve() as server:
        server.handler = scripted({"question 0": ["500"]})
        url = server.openai_base_url
        async with MiniAgents(), DurableRuntime(database) as rt:
            reference = await rt.run(retrying, run_id="reference", base_url=url)
        assert len(server.requests) == 3
        server.handler = scripted({"question 0": ["500"], "question 1": ["hang"]})
        await interrupted(
            database,
            lambda rt: rt.run(retrying, run_id="resumed", base_url=url),
            lambda: len(server.requests) == 6,
        )
        async with MiniAgents(), DurableRuntime(database) as rt:
            with anyio.fail_after(30):
                resumed = await rt.run(retrying, run_id="resumed", base_url=url)
        contents = [last_content(r) for r in server.requests[3:]]
    assert contents == ["question 0", "question 0", "question 1", "question 1"]
    assert texts(resumed) == texts(reference)
    assert texts(resumed)[0].startswith("failed ServerError status=500 request_id=req-question 0-0 ")
    assert [m.hash_key for m in resumed] == [m.hash_key for m in reference]
    data = await anyio.to_thread.run_sync(database_text, database, tmp_path)
    assert b"the server failed on question 0 #0" in data  # the failure marker is in the database
    assert API_KEY.encode() not in data


# -- replayed errors equal the live ones ----------------------------------------------------------------------
seen: list[LLMError] = []


@miniagent(alias="fx_fallback")
async def _fallback(ctx: InteractionContext, urls: list[str], n: int = 2) -> None:
    """Ask *n* questions in turn, each at the first of *urls* that answers (a fallback: other requests)."""
    for i in range(n):
        for url in urls:
            try:
                ctx.reply(await llm.inquire(f"question {i}", base_url=url))
                break
            except LLMError as error:
                seen.append(error)
                ctx.reply(describe(error))


fallback = durable(_fallback)


def closed_port_url() -> str:
    """The URL of a port nothing listens on (the connection is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def identity(error: LLMError) -> tuple[object, ...]:
    extra = (error.retry_after, dict(error.rate_limit_headers)) if isinstance(error, APIStatusError) else ()
    return (
        type(error),
        error.status,
        error.request_id,
        error.message,
        error.provider,
        error.error_type,
        error.code,
        *extra,
    )


async def test_replayed_failures_equal_the_live_ones_and_send_nothing(database: str, tmp_path: Path) -> None:
    """A refused connection, a 429 with retry-after, a 401 echoing the key and a stream cut after a token fail
    live; the resumed call sees errors of the same class, status, request id and message, sending none of
    those requests again (nor the refused one: it is answered from its record, not tried)."""
    dead = closed_port_url()
    async with FakeLLMServer.serve() as server:
        url = server.openai_base_url
        urls = [dead, url, url, url, url]
        server.handler = scripted({"question 0": ["429", "echo", "abort"], "question 1": ["hang"]})
        seen.clear()
        await interrupted(
            database,
            lambda rt: rt.run(fallback, run_id="errors", urls=urls),
            lambda: len(server.requests) == 5,
        )
        live = list(seen)
        seen.clear()
        async with MiniAgents(), DurableRuntime(database) as rt:
            with anyio.fail_after(30):
                replies = await rt.run(fallback, run_id="errors", urls=urls)
        contents = [last_content(r) for r in server.requests]
    assert [type(e).__name__ for e in live] == [
        "LLMConnectionError",
        "RateLimitError",
        "AuthenticationError",
        "TruncatedStreamError",
        "LLMConnectionError",
    ]
    assert [identity(e) for e in seen] == [identity(e) for e in live]
    assert contents == ["question 0"] * 4 + ["question 1", "question 1"]  # only the hung request again
    assert texts(replies)[-1] == "answer to question 1"
    assert all(API_KEY not in text for text in texts(replies))
    data = await anyio.to_thread.run_sync(database_text, database, tmp_path)
    assert b"Incorrect API key provided" in data
    assert API_KEY.encode() not in data


# -- a property: any failures, resumed at any request ----------------------------------------------------------
FAILURES = st.lists(st.sampled_from(["500", "429", "echo", "abort"]), max_size=2)
_property_runs = itertools.count()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=st.lists(FAILURES, min_size=1, max_size=3), data=st.data())
async def test_any_failures_resumed_at_any_request_give_the_uninterrupted_replies(
    tmp_path: Path, plans: list[list[Outcome]], data: st.DataObject
) -> None:
    """Questions whose requests fail (any mix of 500, 429, a 401 echoing the key, a cut stream) before one
    succeeds, the agent retrying through them; interrupted while any one request hangs, the resumed call
    replies what an uninterrupted run replies (texts and hash keys), sends only the hung request again, and
    the key is nowhere in the database."""
    plan = {f"question {i}": outcomes for i, outcomes in enumerate(plans)}
    total = sum(len(outcomes) + 1 for outcomes in plans)  # the requests of an uninterrupted run
    hang_at = data.draw(st.integers(0, total - 1), label="hang_at")
    database = f"sqlite:///{tmp_path / f'dbos-{next(_property_runs)}.db'}"
    async with FakeLLMServer.serve() as server:
        url = server.openai_base_url
        server.handler = scripted(plan)
        async with MiniAgents(), DurableRuntime(database) as rt:
            reference = await rt.run(retrying, run_id="reference", base_url=url, n=len(plans))
        assert len(server.requests) == total
        server.handler = scripted(plan, hang_at=hang_at)
        await interrupted(
            database,
            lambda rt: rt.run(retrying, run_id="resumed", base_url=url, n=len(plans)),
            lambda: len(server.requests) == total + hang_at + 1,
        )
        async with MiniAgents(), DurableRuntime(database) as rt:
            with anyio.fail_after(30):
                resumed = await rt.run(retrying, run_id="resumed", base_url=url, n=len(plans))
        sent = [last_content(r) for r in server.requests[total:]]
    reference_order = [last_content(r) for r in server.requests[:total]]
    assert sent == reference_order[: hang_at + 1] + reference_order[hang_at:]
    assert texts(resumed) == texts(reference)
    assert [m.hash_key for m in resumed] == [m.hash_key for m in reference]
    data_bytes = await anyio.to_thread.run_sync(database_text, database, tmp_path)
    assert API_KEY.encode() not in data_bytes


def test_a_failure_marker_has_the_request_secrets_redacted_whenever_it_is_encoded() -> None:
    # The marker is encoded as soon as the exchange fails, before the LLM layer redacts the error the agent sees:
    # it redacts the request's secrets itself, and leaves the error as it was.
    from miniagents.durable._failures import decode_failure, encode_failure

    error = APIStatusError(
        f"invalid key {API_KEY}",
        status=401,
        request_id=f"req-{API_KEY}",
        provider="openai",
        retry_after=2.0,
        rate_limit_headers={"x-ratelimit-note": f"for {API_KEY}"},
    )
    marker = encode_failure(error, (API_KEY,))
    assert API_KEY not in repr(marker)
    assert marker["status"] == 401 and marker["retry_after"] == 2.0
    replayed = decode_failure(marker)
    assert type(replayed) is APIStatusError and replayed.status == 401
    assert "<redacted>" in replayed.message and API_KEY not in str(replayed)
    assert API_KEY in error.message  # the original is the LLM layer's to redact


def test_an_exchange_request_carries_its_secrets_out_of_its_repr_digest_and_equality() -> None:
    from miniagents.llms._exchange import ExchangeRequest

    with_key = ExchangeRequest("openai", "http://127.0.0.1/v1", b"{}", (API_KEY,))
    assert API_KEY not in repr(with_key)
    assert with_key == ExchangeRequest("openai", "http://127.0.0.1/v1", b"{}")
    assert with_key.digest == ExchangeRequest("openai", "http://127.0.0.1/v1", b"{}").digest
