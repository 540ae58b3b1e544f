"""docs/tracing.md is true: every attribute and event its tables name is set by the code in traced runs, and
every attribute and event the code sets in those runs is named in the table of its span kind."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from tracing_helpers import KEY, Traces

from miniagents import AgentCallCancelledError, InteractionContext, MiniAgents, miniagent
from miniagents.llms import LLMError, openai_agent
from miniagents.testing import FakeLLMServer, ToolCall, openai_stream
from miniagents.tracing import TracingOptions

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "tracing.md"
#: The heading of each span kind's table in the reference.
SECTIONS = {"Agent-call spans": "call", "LLM request spans": "chat", "Tool spans": "tool"}
_ROW = re.compile(r"^\| `([^`]+)` \| (attribute|event) \|")
#: A name in backticks that looks like an attribute or event name of ours or of the GenAI conventions.
_NAME = re.compile(r"`((?:gen_ai|miniagents)(?:\.[a-z_]+)+)`")

Names = dict[str, dict[str, set[str]]]


def documented() -> Names:
    """The names in the reference's tables: span kind → ``attribute`` / ``event`` → names."""
    result: Names = {kind: {"attribute": set(), "event": set()} for kind in SECTIONS.values()}
    section: str | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = SECTIONS.get(line[3:].strip())
        elif section is not None and (row := _ROW.match(line)):
            name, what = row.groups()
            assert name not in result[section][what], f"{name} is listed twice under {section}"
            result[section][what].add(name)
    return result


def _kind(span: ReadableSpan) -> str:
    if span.name.startswith("chat "):
        return "chat"
    if span.name.startswith("execute_tool "):
        return "tool"
    assert "miniagents.call.id" in (span.attributes or {}), span.name
    return "call"


def observed(traces: Traces) -> Names:
    """What the code set on the finished spans: span kind → ``attribute`` / ``event`` → names."""
    result: Names = {kind: {"attribute": set(), "event": set()} for kind in SECTIONS.values()}
    for span in traces.spans:
        kind = _kind(span)
        result[kind]["attribute"].update(span.attributes or {})
        result[kind]["event"].update(event.name for event in span.events)
    return result


async def lookup(term: str) -> str:
    """Look a term up."""
    return f"{term}: found"


async def broken(term: str) -> str:
    """Always fails."""
    raise ValueError(f"cannot handle {term}")


@miniagent
async def failing(ctx: InteractionContext) -> None:
    raise ValueError("boom")


async def _every_kind_of_traced_run(traces: Traces) -> None:
    """Runs that between them reach every attribute and event of the reference (and so every one the code sets)."""
    capture = TracingOptions(tracer_provider=traces.provider, capture_message_content=True)
    # A nested LLM call with every request option, a tool that succeeds and one that fails, content captured.
    async with FakeLLMServer.serve() as server:
        server.enqueue(
            openai_stream(
                tool_calls=[ToolCall("lookup", {"term": "otel"}, id="c1"), ToolCall("broken", {"term": "x"})],
                model="big-2025",
                completion_id="chatcmpl-1",
                usage={"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37},
            ),
            openai_stream(["Done."], model="big-2025", completion_id="chatcmpl-2"),
        )
        llm = openai_agent.fork(
            model="big",
            system="Be brief.",
            api_key=KEY,
            base_url=server.openai_base_url,
            tools=[lookup, broken],
            temperature=0.5,
            top_p=0.9,
            max_tokens=100,
            stop=["END"],
        )

        @miniagent
        async def boss(ctx: InteractionContext) -> None:
            ctx.reply(llm.inquire(ctx.messages))

        async with MiniAgents(tracing=capture):
            assert str((await boss.inquire("hi"))[-1]) == "Done."
    # A failed call, and a failed request.
    with pytest.raises(ValueError, match="boom"):
        async with MiniAgents(tracing=traces.provider):
            await failing.inquire()
    async with FakeLLMServer.serve(expected_api_key="sk-the-right-one") as server:
        with pytest.raises(LLMError):
            async with MiniAgents(tracing=traces.provider):
                await openai_agent.inquire("hi", model="m", api_key=KEY, base_url=server.openai_base_url)
    # A call cancelled during its request, and one cancelled while its tool runs.
    started = anyio.Event()

    async def slow(term: str) -> str:
        """Never finishes."""
        started.set()
        await anyio.sleep_forever()
        return term

    async with FakeLLMServer.serve() as server:
        server.enqueue(
            openai_stream(["a", "b", "c"], hang_after=2),
            openai_stream(tool_calls=[ToolCall("slow", {"term": "t"}, id="c")]),
        )
        async with MiniAgents(tracing=traces.provider):
            call = openai_agent.initiate_call(model="m", api_key=KEY, base_url=server.openai_base_url)
            call.send("hi").finish()
            async for promise in call.reply_sequence().promises():
                async for _ in promise:
                    call.cancel()
                    break
                break
            with pytest.raises(AgentCallCancelledError):
                await call.reply_sequence()
            call = openai_agent.initiate_call(
                model="m", api_key=KEY, base_url=server.openai_base_url, tools=[slow]
            )
            call.send("go").finish()
            await started.wait()
            call.cancel()


def test_the_reference_has_a_table_for_each_span_kind() -> None:
    names = documented()
    for kind, table in names.items():
        assert table["attribute"], f"no attribute listed for {kind} spans"
        assert table["event"], f"no event listed for {kind} spans"


def test_every_attribute_name_in_the_reference_is_in_a_table() -> None:
    listed = {name for table in documented().values() for names in table.values() for name in names}
    mentioned = set(_NAME.findall(DOC.read_text(encoding="utf-8")))
    assert mentioned - listed == set()


async def test_every_documented_attribute_and_event_is_set_by_the_code(traces: Traces) -> None:
    await _every_kind_of_traced_run(traces)
    seen = observed(traces)
    for kind, table in documented().items():
        for what, names in table.items():
            assert names - seen[kind][what] == set(), f"{kind} span {what}s documented but never set"


async def test_every_attribute_and_event_the_code_sets_is_documented(traces: Traces) -> None:
    await _every_kind_of_traced_run(traces)
    listed = documented()
    for kind, table in observed(traces).items():
        for what, names in table.items():
            assert names - listed[kind][what] == set(), f"{kind} span {what}s set but not in docs/tracing.md"


def test_the_readme_and_the_module_point_to_the_reference() -> None:
    import miniagents.tracing

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Tracing (OpenTelemetry)", 1)[1].split("\n## ", 1)[0]
    assert "(docs/tracing.md)" in section
    assert "docs/tracing.md" in (miniagents.tracing.__doc__ or "")
