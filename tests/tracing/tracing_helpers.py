"""Reading the spans of a private SDK tracer provider that exports to memory.

Imported by its bare name: pytest (import mode ``prepend``) puts each test directory on
``sys.path``, the directories not being packages, so every helper module's name is unique in the suite.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from miniagents import AgentCall, CallOutcome, InteractionContext, miniagent

#: A key that must never show up in a span, an attribute or an event.
KEY = "sk-SENTINEL-d41d8cd98f00b204-NEVER-TRACED"


class Traces:
    """A tracer provider whose finished spans are kept in memory, with helpers to read the tree."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def spans(self) -> list[ReadableSpan]:
        """Every finished span, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        """The finished spans called *name*."""
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        """The only finished span called *name*."""
        (span,) = self.named(name)
        return span

    def parent(self, span: ReadableSpan) -> ReadableSpan | None:
        """The finished span that is *span*'s parent (``None`` for a root or an unknown parent)."""
        if span.parent is None:
            return None
        for candidate in self.spans:
            if candidate.context.span_id == span.parent.span_id:
                return candidate
        return None

    def by_call_id(self) -> dict[int, ReadableSpan]:
        """The agent-call spans by ``miniagents.call.id`` (fails if a call has two spans)."""
        result: dict[int, ReadableSpan] = {}
        for span in self.spans:
            attributes = span.attributes or {}
            call_id = attributes.get("miniagents.call.id")
            if isinstance(call_id, int):
                assert call_id not in result, f"call {call_id} has two spans"
                result[call_id] = span
        return result

    def clear(self) -> None:
        """Forget the spans exported so far."""
        self.exporter.clear()


class Recorder:
    """A plain call observer: the parent and the outcome of every call, as the runtime reports them."""

    def __init__(self) -> None:
        self.parents: dict[int, int | None] = {}
        self.aliases: dict[int, str] = {}
        self.outcomes: dict[int, list[str]] = {}

    def call_started(self, call: AgentCall) -> None:
        self.parents[call.call_id] = None if call.parent is None else call.parent.call_id
        self.aliases[call.call_id] = call.agent.alias
        self.outcomes[call.call_id] = []

    def call_running(self, call: AgentCall, state: None) -> None:
        pass

    def call_finished(
        self, call: AgentCall, state: None, outcome: CallOutcome, error: BaseException | None
    ) -> None:
        self.outcomes[call.call_id].append(outcome)


@miniagent
async def adder(ctx: InteractionContext, a: int, b: int = 0) -> None:
    """Add two numbers."""
    ctx.reply(f"sum={a + b}")
