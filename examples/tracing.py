"""OpenTelemetry traces of an agent graph: one span per agent call, one GenAI span per model request.

A `planner` agent asks two `writer` LLM agents for ideas at the same time — one from its own task, one from a
`ctx.start_soon` child task — and then an `editor` LLM agent picks the best one, with a `word_count` agent as a
tool.  Everything runs inside a span of our own ("example run"), which becomes the root of the trace.

The spans go to an in-memory exporter and are printed as a tree at the end: agent calls by alias, model
requests as `chat <model>` with their GenAI attributes (provider, response model, token usage, finish reason).
`--console` also prints every span as JSON as it ends (OpenTelemetry's ConsoleSpanExporter).  To send the same
traces to a collector, configure an OTLP exporter instead (see the README, "Tracing (OpenTelemetry)").

`--fake` answers every model request from `FakeLLMServer` (scripted, offline, instant) and shows that the W3C
`traceparent` header of each HTTP request names the request's own span.

Needs the OpenTelemetry SDK: pip install opentelemetry-sdk

Run it:  python examples/tracing.py [--fake | --provider local|openai|anthropic] [--console]
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import anyio
from _providers import add_provider_arguments, llm_agent
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from miniagents import InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.llms import openai_agent
from miniagents.testing import FakeLLMServer, RecordedRequest, ScriptedResponse, ToolCall, openai_stream
from miniagents.tracing import TracingOptions

#: The attributes shown in the tree, with their labels.
SHOWN_ATTRIBUTES = {
    "miniagents.call.outcome": "outcome",
    "gen_ai.provider.name": "provider",
    "gen_ai.response.model": "model",
    "gen_ai.usage.input_tokens": "in",
    "gen_ai.usage.output_tokens": "out",
    "gen_ai.response.finish_reasons": "finish",
    "error.type": "error",
}


@miniagent(description="Counts the words of a text.")
async def word_count(ctx: InteractionContext, text: str) -> None:
    """A tool of the editor."""
    ctx.reply(f"{len(text.split())} words")


def build_agents(make_llm: Callable[..., MiniAgent], with_tools: bool) -> MiniAgent:
    """The graph: planner -> 2 writers in parallel -> editor (with the word_count tool when *with_tools*)."""
    writer = make_llm(alias="writer", system="Give one short idea for the topic.")
    tools = {"tools": [word_count]} if with_tools else {}
    editor = make_llm(alias="editor", system="Pick the best idea. Use word_count if useful.", **tools)

    @miniagent
    async def planner(ctx: InteractionContext) -> None:
        topic = await ctx.messages.as_single_text()
        funny: list[str] = []
        written = anyio.Event()

        async def second_writer() -> None:  # a child task: its call is still a child of planner's call
            funny.append(await writer.inquire(f"{topic} (funny)").as_single_text())
            written.set()

        ctx.start_soon(second_writer)
        serious = await writer.inquire(f"{topic} (serious)").as_single_text()
        await written.wait()
        ctx.reply(editor.inquire([f"Idea 1: {serious}", f"Idea 2: {funny[0]}"]))

    return planner


def fake_response(request: RecordedRequest) -> ScriptedResponse:
    """What the fake server answers: the editor calls its tool once, everybody else just writes."""
    body = request.json or {}
    messages = body.get("messages", [])
    asks_editor = any("Pick the best" in str(m.get("content", "")) for m in messages)
    if asks_editor and not any(m.get("role") == "tool" for m in messages):
        return openai_stream(tool_calls=[ToolCall("word_count", {"text": "a robot that waters plants"})])
    return openai_stream(["An idea: ", "a robot ", "that waters plants."], model="fake-model-v1")


@contextlib.asynccontextmanager
async def model_for(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[Callable[..., MiniAgent], FakeLLMServer | None]]:
    """The LLM agent factory of the chosen provider (and the fake server, with `--fake`)."""
    if not args.fake:
        yield (lambda alias, **options: llm_agent(args, alias=alias, **options)), None
        return
    async with FakeLLMServer.serve() as server:
        server.handler = fake_response

        def make(alias: str, **options: object) -> MiniAgent:
            return openai_agent.fork(
                alias=alias, model="fake-model", api_key="sk-fake", base_url=server.openai_base_url, **options
            )

        yield make, server


def print_tree(spans: Sequence[ReadableSpan]) -> None:
    """Print the spans as an indented tree (children in start order) with a few attributes."""
    children: dict[int | None, list[ReadableSpan]] = {}
    known = {s.context.span_id for s in spans}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in known else None
        children.setdefault(parent, []).append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        attributes = span.attributes or {}
        details = [
            f"{label}={','.join(map(str, value)) if isinstance(value, tuple) else value}"
            for key, label in SHOWN_ATTRIBUTES.items()
            if (value := attributes.get(key)) is not None
        ]
        millis = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
        print(f"{'  ' * depth}{span.name}  [{millis:.1f} ms] {' '.join(details)}".rstrip())
        for child in children.get(span.context.span_id, []):
            show(child, depth + 1)

    for root in children.get(None, []):
        show(root, 0)


async def main(args: argparse.Namespace) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # a private provider: the global one is left alone
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if args.console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    tracer = provider.get_tracer("examples.tracing")
    async with model_for(args) as (make_llm, server):
        # The tiny local model does not call tools unless forced to (and then never stops): no tools there.
        planner = build_agents(make_llm, with_tools=args.fake or args.provider != "local")
        async with MiniAgents(tracing=TracingOptions(tracer_provider=provider)):
            with tracer.start_as_current_span("example run"):
                replies = planner.inquire("a gift for a gardener")
            for message in await replies:
                calls = [call["name"] for call in message.get("tool_calls") or ()]
                text = f"(calls {', '.join(calls)})" if calls else repr(str(message)[:70])
                print(f"{message.get('role', 'agent')}> {text}")
        print()
        print_tree(exporter.get_finished_spans())
        if server is not None:
            request_spans = {f"{s.context.span_id:016x}": s.name for s in exporter.get_finished_spans()}
            named = [request_spans.get(r.headers["traceparent"].split("-")[2]) for r in server.requests]
            print(
                f"\n{len(server.requests)} HTTP requests, each carrying its own span's traceparent: {named}"
            )
    provider.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_provider_arguments(parser)
    parser.add_argument(
        "--fake", action="store_true", help="answer from the scripted FakeLLMServer (offline)"
    )
    parser.add_argument(
        "--console", action="store_true", help="also print every span as JSON (ConsoleSpanExporter)"
    )
    anyio.run(main, parser.parse_args())
