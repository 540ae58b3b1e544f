"""Property: for random agent graphs with failures and cancellations, the span tree is the call tree that ran."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode
from tracing_helpers import Recorder, Traces

from miniagents import MiniAgents
from miniagents.testing import GraphNodeError, GraphSpec, NodeSpec, agent_graphs, start_graph

pytestmark = pytest.mark.anyio

PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class CountingProcessor(SpanProcessor):
    """Counts how often each span was started and ended."""

    def __init__(self) -> None:
        self.started: Counter[int] = Counter()
        self.ended: Counter[int] = Counter()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started[span.context.span_id] += 1

    def on_end(self, span: ReadableSpan) -> None:
        self.ended[span.context.span_id] += 1


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _only_graph_errors(error: BaseException) -> bool:
    inner = getattr(error, "exceptions", None)  # an exception group
    if inner is not None:
        return all(_only_graph_errors(e) for e in inner)
    return isinstance(error, GraphNodeError)


FAILING_FAN_OUT = GraphSpec(
    ("m0", "m1"),
    (
        NodeSpec("n0", (-1,), "fan_out", fan=2),
        NodeSpec("n1", (0,), "out_of_order", fail_after=2),
        NodeSpec("n2", (1, -1), "forward"),
    ),
)


@PROPERTY
@example(spec=FAILING_FAN_OUT, cancel_after=None)
@example(spec=FAILING_FAN_OUT, cancel_after=3)
@given(spec=agent_graphs(failures=True), cancel_after=st.none() | st.integers(0, 40))
async def test_the_span_tree_is_the_call_tree(spec: GraphSpec, cancel_after: int | None) -> None:
    traces = Traces()
    counting = CountingProcessor()
    traces.provider.add_span_processor(counting)
    recorder = Recorder()
    warnings = _Warnings()
    sdk_logger = logging.getLogger("opentelemetry")
    sdk_logger.addHandler(warnings)
    tracer = traces.provider.get_tracer("test")
    try:
        with tracer.start_as_current_span("graph") as root, anyio.CancelScope() as scope:
            async with MiniAgents(tracing=traces.provider, call_observers=[recorder]):
                run = start_graph(spec)
                if cancel_after is not None:
                    for _ in range(cancel_after):
                        await anyio.lowlevel.checkpoint()
                    scope.cancel()
                await run.observe_all(early_consumers=1, late_consumers=0)
    except BaseException as error:
        if not _only_graph_errors(error):
            raise
    finally:
        sdk_logger.removeHandler(warnings)
        traces.provider.shutdown()

    # Same calls: one span per call that ran (``by_call_id`` fails on a duplicate), none more.
    spans = traces.by_call_id()
    assert set(spans) == set(recorder.parents)
    assert Counter(s.name for s in spans.values()) == Counter(recorder.aliases.values())
    root_id = root.get_span_context().span_id
    for call_id, span in spans.items():
        # Same parents: the parent call's span, or the span around the graph for a root call.
        parent_call = recorder.parents[call_id]
        expected_parent = root_id if parent_call is None else spans[parent_call].context.span_id
        assert span.parent is not None and span.parent.span_id == expected_parent, (span.name, call_id)
        assert span.context.trace_id == root.get_span_context().trace_id
        # The outcome the runtime reported (once), with the matching status.
        (outcome,) = recorder.outcomes[call_id]
        attributes: Any = span.attributes
        assert attributes["miniagents.call.outcome"] == outcome
        assert attributes.get("miniagents.call.parent_id") == parent_call
        if outcome == "failed":
            assert span.status.status_code is StatusCode.ERROR
        else:
            assert span.status.status_code is StatusCode.UNSET
    # Every span was ended exactly once (the SDK would have warned about a second end()).
    assert counting.started == counting.ended
    assert set(counting.ended.values()) <= {1}
    assert not [m for m in warnings.messages if "end" in m.lower()], warnings.messages
