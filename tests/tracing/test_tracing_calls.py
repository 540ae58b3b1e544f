"""One span per agent call, under the span of the call that started it, with the outcome recorded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import anyio
import pytest
from opentelemetry.trace import SpanKind, StatusCode
from tracing_helpers import Recorder, Traces

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.tracing import TracingOptions, tracing_observer

pytestmark = pytest.mark.anyio


@miniagent
async def echo(ctx: InteractionContext) -> None:
    ctx.reply(await ctx.messages)


@miniagent
async def boss(ctx: InteractionContext) -> None:
    """Starts sub-calls from its own task, from a ctx.start_soon child and through reply_out_of_order."""
    ctx.reply(echo.inquire(ctx.messages))

    async def child() -> None:
        ctx.reply(await echo.inquire("from a child task"))

    ctx.start_soon(child)
    ctx.reply_out_of_order(echo.inquire("out of order"))


@miniagent
async def failing(ctx: InteractionContext) -> None:
    ctx.reply("partial")
    raise ValueError("boom")


@miniagent
async def waits_forever(ctx: InteractionContext) -> None:
    ctx.reply("started")
    await anyio.sleep_forever()


async def test_each_call_has_one_span_under_the_call_that_started_it(traces: Traces) -> None:
    async with MiniAgents(tracing=traces.provider) as mas:
        replies = await boss.inquire(["a", "b"])
    assert sorted(str(m) for m in replies) == ["a", "b", "from a child task", "out of order"]
    boss_span = traces.one("boss")
    echoes = traces.named("echo")
    assert len(echoes) == 3 and len(traces.spans) == 4
    assert boss_span.parent is None
    boss_id = boss_span.attributes["miniagents.call.id"]
    for span in echoes:
        assert traces.parent(span) is boss_span
        assert span.context.trace_id == boss_span.context.trace_id
        assert span.attributes["miniagents.call.parent_id"] == boss_id
        assert span.attributes["miniagents.call.outcome"] == "completed"
        assert (
            span.attributes["miniagents.call.input_messages"]
            == span.attributes["miniagents.call.reply_messages"]
        )
        assert span.kind is SpanKind.INTERNAL
        assert span.status.status_code is StatusCode.UNSET
    assert dict(boss_span.attributes) == {
        "miniagents.agent.alias": "boss",
        "miniagents.call.id": boss_id,
        "miniagents.run.id": mas.run_id,
        "miniagents.call.input_messages": 2,
        "miniagents.call.reply_messages": 4,
        "miniagents.call.outcome": "completed",
    }
    # A child's span ends before its parent's: the parent's replies end after its children's.
    assert all(span.end_time <= boss_span.end_time for span in echoes)


async def test_a_span_around_inquire_is_the_parent_and_agent_spans_nest_under_the_call(
    traces: Traces,
) -> None:
    tracer = traces.provider.get_tracer("test")

    @miniagent
    async def instrumented(ctx: InteractionContext) -> None:
        with tracer.start_as_current_span("inside the agent"):
            ctx.reply(await echo.inquire(ctx.messages))

    async with MiniAgents(tracing=traces.provider):
        with tracer.start_as_current_span("request"):
            replies = instrumented.inquire("x")
        assert [str(m) for m in await replies] == ["x"]
    request, call, inside, sub = (
        traces.one(name) for name in ("request", "instrumented", "inside the agent", "echo")
    )
    assert traces.parent(call) is request
    assert traces.parent(inside) is call
    # The sub-call's parent is the call that started it (not the user span that was current there).
    assert traces.parent(sub) is call
    assert {s.context.trace_id for s in traces.spans} == {request.context.trace_id}


async def test_a_failed_call_records_the_exception_with_error_status(traces: Traces) -> None:
    with pytest.raises(ValueError, match="boom"):
        async with MiniAgents(tracing=traces.provider):
            await failing.inquire()
    span = traces.one("failing")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: boom"
    assert span.attributes["miniagents.call.outcome"] == "failed"
    assert span.attributes["error.type"] == "ValueError"
    assert span.attributes["miniagents.call.reply_messages"] == 1
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "boom"


async def test_a_cancelled_call_is_recorded_as_cancelled_not_as_an_error(traces: Traces) -> None:
    async with MiniAgents(tracing=traces.provider):
        call = waits_forever.initiate_call()
        replies = call.reply_sequence()
        async for message in replies:
            assert str(message) == "started"
            break
        call.cancel()
        never_ran = echo.initiate_call()
        never_ran.cancel()  # cancelled before its task ran: still one span, ended once
        for sequence in (replies, never_ran.reply_sequence()):
            with pytest.raises(Exception, match="cancelled"):
                await sequence
    for name in ("waits_forever", "echo"):
        span = traces.one(name)
        assert span.status.status_code is StatusCode.UNSET
        assert span.attributes["miniagents.call.outcome"] == "cancelled"
        assert [e.name for e in span.events] == ["miniagents.call.cancelled"]
        assert "error.type" not in span.attributes


async def test_an_outer_cancellation_ends_every_span_once(traces: Traces) -> None:
    recorder = Recorder()
    with anyio.CancelScope() as scope:
        async with MiniAgents(tracing=traces.provider, call_observers=[recorder]):
            replies = boss.inquire(waits_forever.inquire())
            async for _ in replies:
                scope.cancel()
    assert scope.cancelled_caught
    spans = traces.by_call_id()  # fails if a call has two spans
    assert set(spans) == set(recorder.outcomes)
    assert {s.name for s in spans.values()} >= {"boss", "waits_forever"}
    for call_id, span in spans.items():
        # Ended, with the outcome the runtime reported.
        assert span.end_time is not None
        assert [span.attributes["miniagents.call.outcome"]] == recorder.outcomes[call_id]
    assert traces.one("waits_forever").attributes["miniagents.call.outcome"] == "cancelled"


async def test_tracing_off_or_unconfigured_adds_no_observer(traces: Traces) -> None:
    async with MiniAgents(tracing=False) as mas:
        assert mas.observers == ()
        assert [str(m) for m in await echo.inquire("x")] == ["x"]
    # The global provider of this process is OpenTelemetry's default proxy: auto mode traces nothing.
    async with MiniAgents() as mas:
        assert mas.observers == ()
    async with MiniAgents(tracing=TracingOptions(tracer_provider=traces.provider)) as mas:
        assert len(mas.observers) == 1
        assert [str(m) for m in await echo.inquire("y")] == ["y"]
    assert [s.name for s in traces.spans] == ["echo"]


async def test_a_wrong_tracing_value_is_refused() -> None:
    with pytest.raises(TypeError, match=r"MiniAgents\(tracing=...\) takes None, True, False.*not str"):
        tracing_observer("yes")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, env=env
    )


def test_auto_mode_traces_once_a_global_provider_is_configured() -> None:
    result = _run(
        """
        import anyio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from miniagents import MiniAgents, miniagent

        @miniagent
        async def echo(ctx):
            ctx.reply(await ctx.messages)

        async def main():
            async with MiniAgents() as mas:
                assert mas.observers == ()  # opentelemetry imported, no provider: nothing
                await echo.inquire("x")
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            async with MiniAgents():
                await echo.inquire("x")
            async with MiniAgents(tracing=False):
                await echo.inquire("x")
            print([s.name for s in exporter.get_finished_spans()])

        anyio.run(main)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['echo']"


def test_without_opentelemetry_the_package_works_and_tracing_true_says_what_to_install() -> None:
    result = _run(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        import anyio
        import miniagents.llms, miniagents.tracing
        from miniagents import MiniAgents, miniagent

        @miniagent
        async def echo(ctx):
            ctx.reply(await ctx.messages)

        async def main():
            async with MiniAgents() as mas:
                assert mas.observers == ()
                print([str(m) for m in await echo.inquire("x")])
            try:
                async with MiniAgents(tracing=True):
                    pass
            except ImportError as error:
                print(error)

        anyio.run(main)
        assert not any(name.startswith("opentelemetry.") for name in sys.modules)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "['x']",
        "MiniAgents(tracing=...) needs OpenTelemetry: pip install 'miniagents[otel]'",
    ]
