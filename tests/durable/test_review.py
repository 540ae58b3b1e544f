"""Review tests of ``miniagents.durable``: secrets, replay after an in-process interruption, clear errors.

An interruption is made in the process: the run's caller is cancelled and the runtime left while an LLM request
hangs (the workflow stays PENDING, as after a crash), then a new runtime on the same database (same executor
id) recovers it.  Each test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from durable_helpers import database_text, interrupted, last_content
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.durable import (
    DurableCallError,
    DurableConfigError,
    DurableKwargsError,
    DurableRuntime,
    durable,
)
from miniagents.llms import openai_agent
from miniagents.testing import FakeLLMServer, RecordedRequest, ScriptedResponse, openai_error, openai_stream

pytestmark = pytest.mark.anyio

API_KEY = "sk-review-durable-secret-key-0123456789"

plain_llm = openai_agent.fork(alias="rv_plain_llm", model="fake-model", api_key=API_KEY)


# -- replay ---------------------------------------------------------------------------------------------------
prompt = {"first": "question one"}


@miniagent(alias="rv_two_questions")
async def _two_questions(ctx: InteractionContext, base_url: str) -> None:
    first = await plain_llm.inquire(prompt["first"], base_url=base_url)
    second = await plain_llm.inquire("question two", base_url=base_url)
    ctx.reply([first, second])


two_questions = durable(_two_questions)


def answering(hang_on: str | None) -> Callable[[RecordedRequest], ScriptedResponse]:
    hung: list[str] = []

    def handler(request: RecordedRequest) -> ScriptedResponse:
        content = last_content(request)
        if content == hang_on and not hung:
            hung.append(content)
            return openai_stream(["partial ", "answer"], hang_after=1)
        return openai_stream(["answer to ", content])

    return handler


async def test_a_resumed_call_whose_request_differs_raises_replay_mismatch(database: str) -> None:
    prompt["first"] = "question one"
    async with FakeLLMServer.serve() as server:
        server.handler = answering(hang_on="question two")
        url = server.openai_base_url
        raised_first = await interrupted(
            database,
            lambda rt: rt.run(two_questions, run_id="mismatch", base_url=url),
            lambda: len(server.requests) == 2,
        )
        # The caller that waited when the runtime was left gets a clear error, not a bare RuntimeError group.
        assert len(raised_first) == 1
        assert isinstance(raised_first[0], DurableCallError), repr(raised_first[0])
        assert "stays PENDING" in str(raised_first[0])
        prompt["first"] = "another question one"  # the agent is not deterministic: its first request changed
        async with MiniAgents(), DurableRuntime(database) as rt:
            with pytest.raises(DurableCallError) as raised, anyio.fail_after(30):
                await rt.run(two_questions, run_id="mismatch", base_url=url)
        assert raised.value.error_type == "ReplayMismatchError"
        assert "differs from the recorded one" in str(raised.value)
        assert len(server.requests) == 2  # the differing request was not sent


async def test_a_resumed_call_replays_finished_requests_and_keeps_hash_keys(database: str) -> None:
    prompt["first"] = "question one"
    async with FakeLLMServer.serve() as server:
        server.handler = answering(hang_on=None)
        url = server.openai_base_url
        async with MiniAgents(), DurableRuntime(database) as rt:
            reference = await rt.run(two_questions, run_id="reference", base_url=url)
        server.handler = answering(hang_on="question two")
        await interrupted(
            database,
            lambda rt: rt.run(two_questions, run_id="resumed", base_url=url),
            lambda: len(server.requests) == 4,
        )
        async with MiniAgents(), DurableRuntime(database) as rt:
            with anyio.fail_after(30):
                resumed = await rt.run(two_questions, run_id="resumed", base_url=url)
        contents = [last_content(r) for r in server.requests]
    assert contents == ["question one", "question two"] * 2 + ["question two"]  # only the in-flight one again
    assert [m.hash_key for m in resumed] == [m.hash_key for m in reference]


# -- secrets --------------------------------------------------------------------------------------------------
llm = durable(openai_agent.fork(alias="rv_llm", model="fake-model", api_key=API_KEY))


async def test_a_secret_in_a_url_kwarg_is_refused() -> None:
    async with MiniAgents():
        with pytest.raises(DurableKwargsError, match="secret") as raised:
            llm.inquire("x", base_url=f"http://127.0.0.1:1/v1?api-key={API_KEY}")
        assert API_KEY not in str(raised.value)
        assert "'rv_llm'" in str(raised.value)
        assert "'base_url'" in str(raised.value)
        with pytest.raises(DurableKwargsError, match="secret") as raised:
            llm.inquire("x", base_url=f"http://user:{API_KEY}@127.0.0.1:1/v1")
        assert API_KEY not in str(raised.value)


async def test_an_error_echoing_the_key_is_redacted_in_the_error_and_the_database(
    database: str, tmp_path: Path
) -> None:
    async with FakeLLMServer.serve() as server:
        server.handler = lambda request: openai_error(401, f"Incorrect API key provided: {API_KEY}")
        async with MiniAgents(), DurableRuntime(database) as rt:
            with pytest.raises(DurableCallError) as raised:
                await rt.run(llm, "hello", run_id="echo", base_url=server.openai_base_url)
    assert API_KEY not in str(raised.value)
    assert raised.value.error_type == "AuthenticationError"
    data = await anyio.to_thread.run_sync(database_text, database, tmp_path)
    assert b"Incorrect API key provided" in data
    assert API_KEY.encode() not in data


# -- clear errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://someone:hunter2-db-password@127.0.0.1:1/nodb",
        "nosuchscheme://host/db",
        "sqlite:////nonexistent-folder/sub/dbos.db",
    ],
)
async def test_a_wrong_database_url_is_a_config_error_without_the_password(url: str) -> None:
    async with MiniAgents():
        runtime = DurableRuntime(url)
        with pytest.raises(DurableConfigError) as raised, anyio.fail_after(60):
            async with runtime:
                pass
        assert not runtime.active
    text = str(raised.value)
    assert "hunter2-db-password" not in text
    assert "hunter2-db-password" not in repr(runtime)
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None  # the driver's error (it may hold the connection) is not kept
    assert "database" in text
    # The runtime can be entered again afterwards (the failed launch left nothing behind).
    async with MiniAgents():
        with pytest.raises(DurableConfigError):
            async with DurableRuntime(url):
                pass


def test_the_repr_masks_the_database_password() -> None:
    runtime = DurableRuntime("postgresql://someone:hunter2-db-password@127.0.0.1:5432/app")
    assert "hunter2-db-password" not in repr(runtime)
    assert "postgresql://someone:***@127.0.0.1:5432/app" in repr(runtime)


# -- cancellation ---------------------------------------------------------------------------------------------
async def test_cancelling_the_caller_ends_at_once_and_the_run_resumes_later(database: str) -> None:
    """The caller's scope is cancelled while an LLM request hangs: ``run()`` ends, leaving the runtime and the
    ``MiniAgents`` block raises nothing and leaves no thread; the run is PENDING and a new runtime finishes it."""
    import threading

    prompt["first"] = "question one"
    async with FakeLLMServer.serve() as server:
        server.handler = answering(hang_on="question two")
        url = server.openai_base_url
        async with MiniAgents(), DurableRuntime(database) as rt:
            with anyio.CancelScope() as scope:

                async def cancel_when_hung() -> None:
                    while len(server.requests) < 2:
                        await anyio.sleep(0.01)
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_when_hung)
                    await rt.run(two_questions, run_id="cancelled", base_url=url)
            assert scope.cancelled_caught
        assert not any(t.name == "miniagents-durable-dbos" for t in threading.enumerate())
        async with MiniAgents(), DurableRuntime(database) as rt:
            with anyio.fail_after(30):
                replies = await rt.run(two_questions, run_id="cancelled", base_url=url)
        assert [str(m) for m in replies] == ["answer to question one", "answer to question two"]
        assert [last_content(r) for r in server.requests] == ["question one", "question two", "question two"]


@miniagent(alias="rv_n_questions")
async def _n_questions(ctx: InteractionContext, base_url: str, n: int) -> None:
    ctx.reply([await plain_llm.inquire(f"question {i}", base_url=base_url) for i in range(n)])


n_questions = durable(_n_questions)
_property_runs = iter(range(10**6))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 4), data=st.data())
async def test_interrupted_at_any_request_only_that_one_is_sent_again(
    tmp_path: Path, n: int, data: st.DataObject
) -> None:
    """Interrupted while any one of *n* sequential requests hangs, the resumed run re-sends only that request
    and replies what an uninterrupted run replies (hash keys)."""
    hang = data.draw(st.integers(0, n - 1))
    database = f"sqlite:///{tmp_path / f'dbos-{next(_property_runs)}.db'}"
    async with FakeLLMServer.serve() as server:
        server.handler = answering(hang_on=None)
        url = server.openai_base_url
        async with MiniAgents(), DurableRuntime(database) as rt:
            reference = await rt.run(n_questions, run_id="reference", base_url=url, n=n)
        server.handler = answering(hang_on=f"question {hang}")
        await interrupted(
            database,
            lambda rt: rt.run(n_questions, run_id="resumed", base_url=url, n=n),
            lambda: len(server.requests) == n + hang + 1,
        )
        async with MiniAgents(), DurableRuntime(database) as rt:
            with anyio.fail_after(30):
                resumed = await rt.run(n_questions, run_id="resumed", base_url=url, n=n)
        contents = [last_content(r) for r in server.requests]
    questions = [f"question {i}" for i in range(n)]
    assert contents == questions + questions[: hang + 1] + questions[hang:]
    assert [m.hash_key for m in resumed] == [m.hash_key for m in reference]


async def test_a_run_id_reused_for_another_agent_or_input_is_refused(tmp_path: Path) -> None:
    """A run id names one run: another agent, other kwargs or another input under it is an error, not the old
    run's replies; the same call under it returns the recorded replies."""

    @miniagent(alias="reuse_a")
    async def _a(ctx: InteractionContext, tone: str = "plain") -> None:
        ctx.reply(f"from a ({tone}): {' '.join(str(m) for m in await ctx.messages)}")

    @miniagent(alias="reuse_b")
    async def _b(ctx: InteractionContext) -> None:
        ctx.reply("from b")

    a, b = durable(_a), durable(_b)
    async with MiniAgents(), DurableRuntime(f"sqlite:///{tmp_path / 'reuse.db'}") as runtime:
        first = await runtime.run(a, "in1", run_id="same")
        assert [str(m) for m in first] == ["from a (plain): in1"]
        again = await runtime.run(a, "in1", run_id="same")
        assert [m.hash_key for m in again] == [m.hash_key for m in first]
        with pytest.raises(
            DurableConfigError, match=r"run id 'same' was recorded for a call of agent 'reuse_a'"
        ):
            await runtime.run(b, "in1", run_id="same")
        with pytest.raises(DurableConfigError, match="input"):
            await runtime.run(a, "other", run_id="same")
        with pytest.raises(DurableConfigError, match="kwargs"):
            await runtime.run(a, "in1", run_id="same", tone="warm")
