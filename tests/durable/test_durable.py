"""``miniagents.durable`` in one process: the call boundary, live tokens, errors, and a property of fan-out."""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from durable_helpers import database_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import InteractionContext, MiniAgents, RateLimit, RateLimiter, TextMessage, miniagent
from miniagents.durable import (
    DurableAgent,
    DurableCallError,
    DurableConfigError,
    DurableKwargsError,
    DurableRuntime,
    durable,
    run,
)
from miniagents.llms import openai_agent
from miniagents.testing import FakeLLMServer, openai_stream

pytestmark = pytest.mark.anyio

executions: collections.Counter[tuple[str, ...]] = collections.Counter()


@miniagent(alias="t_child")
async def _child(ctx: InteractionContext, n: int = 0, tag: str = "") -> None:
    text = " ".join(str(m) for m in await ctx.messages)
    executions[("t_child", tag, str(n), text)] += 1
    ctx.reply(f"child {n}: {text}")


child = durable(_child)


@miniagent(alias="t_fanout")
async def _fanout(ctx: InteractionContext, calls: list[list[Any]], tag: str = "") -> None:
    executions[("t_fanout", tag)] += 1
    replies = [child.inquire(text, n=n, tag=tag) for n, text in calls]  # all started at once
    ctx.reply(replies)


fanout = durable(_fanout)


@miniagent(alias="t_fails")
async def _fails(ctx: InteractionContext) -> None:
    executions[("t_fails",)] += 1
    raise ValueError("boom from the agent")


fails = durable(_fails)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[MiniAgents, DurableRuntime]]:
    async with MiniAgents() as ma, DurableRuntime(f"sqlite:///{tmp_path / 'dbos.db'}") as rt:
        yield ma, rt


# -- the call boundary --------------------------------------------------------------------------------------
async def test_unserialisable_kwarg_fails_at_call_time_naming_agent_and_path() -> None:
    async with MiniAgents():
        with pytest.raises(DurableKwargsError) as raised:
            child.inquire("x", n=1, tag={"deep": [1, object()]})
    message = str(raised.value)
    assert "'t_child'" in message
    assert "'tag'['deep'][1]" in message
    assert "object" in message
    assert isinstance(raised.value, TypeError)


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"api_key": "sk-abc"}, "'api_key'"),
        ({"extra": {"Authorization": "Bearer x"}}, "'extra'['Authorization']"),
    ],
)
async def test_secret_kwargs_are_refused(kwargs: dict[str, Any], path: str) -> None:
    @miniagent(alias=f"t_secret_{len(path)}")
    async def takes_anything(ctx: InteractionContext, **kw: Any) -> None:
        ctx.reply("never")

    agent = durable(takes_anything)
    async with MiniAgents():
        with pytest.raises(DurableKwargsError, match="secret") as raised:
            agent.inquire("x", **kwargs)
    assert path in str(raised.value)
    assert "sk-abc" not in str(raised.value)
    assert "Bearer x" not in str(raised.value)


async def test_the_wrapped_agents_checks_apply() -> None:
    async with MiniAgents():
        with pytest.raises(TypeError, match="'t_child' got unexpected kwargs"):
            child.inquire("x", nope=1)


def test_aliases_are_unique_and_the_same_fork_twice_is_one_agent() -> None:
    with pytest.raises(DurableConfigError, match="'t_child'"):
        durable(miniagent(alias="t_child")(_fails.func))
    first = child.fork(alias="t_child_forked", tag="f")
    again = child.fork(alias="t_child_forked", tag="f")  # the same definition: it takes the old one's place
    assert isinstance(again, DurableAgent)
    assert again.inner.default_kwargs == first.inner.default_kwargs
    with pytest.raises(DurableConfigError):
        child.fork(alias="t_child_forked", tag="other")
    with pytest.raises(TypeError):
        durable("not an agent")  # type: ignore[arg-type]


async def test_outside_a_durable_run_the_agent_runs_in_process() -> None:
    async with MiniAgents():
        replies = await fanout.inquire(calls=[[1, "a"], [2, "b"]], tag="plain")
    assert [str(m) for m in replies] == ["child 1: a", "child 2: b"]


async def test_run_needs_a_runtime_or_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MINIAGENTS_DURABLE_DB", raising=False)
    with pytest.raises(DurableConfigError, match="DurableRuntime"):
        await run(child, "x", run_id="nothing")


async def test_run_opens_a_runtime_from_database(tmp_path: Path) -> None:
    replies = await run(child, "once", run_id="db-run", database=f"sqlite:///{tmp_path / 'db.db'}", n=3)
    assert [str(m) for m in replies] == ["child 3: once"]


# -- in a runtime ---------------------------------------------------------------------------------------------
async def test_failure_is_a_durable_call_error(runtime: tuple[MiniAgents, DurableRuntime]) -> None:
    ma, rt = runtime
    with ma.attach(), pytest.raises(DurableCallError) as raised:
        await rt.run(fails, "x", run_id="fails")
    assert raised.value.error_type == "ValueError"
    assert "boom from the agent" in str(raised.value)
    executions.clear()
    with ma.attach(), pytest.raises(DurableCallError, match="boom from the agent"):
        await rt.run(fails, "x", run_id="fails")  # the recorded outcome: nothing runs
    assert not executions
    with ma.attach(), pytest.raises(TypeError, match="durable agent"):
        await rt.run(_child, "x", run_id="not-durable")  # type: ignore[arg-type]


async def test_tokens_stream_live_to_a_consumer_in_the_process(
    runtime: tuple[MiniAgents, DurableRuntime],
) -> None:
    ma, rt = runtime
    seen_first = anyio.Event()

    async def tokens() -> AsyncIterator[str]:
        yield "first "
        await seen_first.wait()  # only a consumer that saw "first" while the call runs lets it finish
        yield "second"

    @miniagent(alias="t_streamer")
    async def streamer(ctx: InteractionContext) -> None:
        ctx.reply(TextMessage.stream(tokens()))

    agent = durable(streamer)

    @miniagent(alias="t_stream_root")
    async def root(ctx: InteractionContext) -> None:
        async for promise in agent.inquire("go").promises():
            async for token in promise:
                if token == "first ":
                    seen_first.set()
            ctx.reply(await promise)

    with ma.attach(), anyio.fail_after(30):
        replies = await rt.run(durable(root), run_id="live-tokens")
    assert [str(m) for m in replies] == ["first second"]


_examples = itertools.count()
CALLS = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["a", "b"])), min_size=1, max_size=6)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=CALLS)
async def test_fan_out_equals_in_process_and_runs_once(
    runtime: tuple[MiniAgents, DurableRuntime], calls: list[tuple[int, str]]
) -> None:
    """Children started concurrently, identical ones included: the durable run replies what the in-process
    run replies, each child call runs exactly once, and the same run id again runs nothing."""
    ma, rt = runtime
    tag = f"p{next(_examples)}"
    spec = [list(call) for call in calls]
    with ma.attach():
        plain = await fanout.inquire(calls=spec, tag=tag + "-plain")
        executions.clear()
        first = await rt.run(fanout, run_id=tag, calls=spec, tag=tag)
        counted = dict(executions)
        again = await rt.run(fanout, run_id=tag, calls=spec, tag=tag)
    assert [str(m) for m in first] == [str(m) for m in plain]
    assert [m.hash_key for m in again] == [m.hash_key for m in first]
    expected: collections.Counter[tuple[str, ...]] = collections.Counter(
        ("t_child", tag, str(n), text) for n, text in calls
    )
    expected[("t_fanout", tag)] = 1
    assert counted == dict(expected)
    assert dict(executions) == counted  # the second run executed nothing


llm = durable(openai_agent.fork(alias="t_llm", model="fake-model", api_key="sk-test-durable-in-process-key"))


@miniagent(alias="t_llm_fanout")
async def _llm_fanout(ctx: InteractionContext, base_url: str) -> None:
    ctx.reply([llm.inquire(f"question {n}", base_url=base_url) for n in range(3)])


llm_fanout = durable(_llm_fanout)


async def test_calls_share_the_contexts_rate_limiter_and_replays_send_nothing(tmp_path: Path) -> None:
    limiter = RateLimiter(default=RateLimit(max_concurrent=2))
    async with FakeLLMServer.serve() as server:
        server.handler = lambda request: openai_stream(
            ["answer to ", json.loads(request.body)["messages"][-1]["content"]]
        )
        async with (
            MiniAgents(rate_limiter=limiter),
            DurableRuntime(f"sqlite:///{tmp_path / 'dbos.db'}") as rt,
        ):
            first = await rt.run(llm_fanout, run_id="llm-fanout", base_url=server.openai_base_url)
            granted = sum(stats.granted for stats in limiter.statistics().values())
            again = await rt.run(llm_fanout, run_id="llm-fanout", base_url=server.openai_base_url)
        requests = len(server.requests)
    assert sorted(str(m) for m in first) == [f"answer to question {n}" for n in range(3)]
    assert granted == 3  # every durable call's request went through the context's limiter
    assert requests == 3
    assert [m.hash_key for m in again] == [m.hash_key for m in first]
    assert sum(stats.granted for stats in limiter.statistics().values()) == 3  # the replay sent nothing
    data = await anyio.to_thread.run_sync(database_bytes, tmp_path)
    assert b"answer to question 0" in data
    assert b"sk-test-durable-in-process-key" not in data
