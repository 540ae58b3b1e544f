"""Hypothesis: for random agent graphs (``miniagents.testing``) with random failures and cancellations, the
store holds exactly the messages consumers observed plus those sent, and the calls that ran.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import AgentCallCancelledError, CallRecord, Message, MiniAgents, TextMessage
from miniagents.persistence import SQLiteStore, StoredCall, StoreReader
from miniagents.testing._graphs import GraphNodeError, GraphSpec, agent_graphs, start_graph

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio


def _with_nested(messages: list[Message]) -> set[str]:
    keys: set[str] = set()
    stack = list(messages)
    while stack:
        message = stack.pop()
        if message.hash_key not in keys:
            keys.add(message.hash_key)
            stack.extend(message.sub_messages())
    return keys


def _only_graph_errors(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_only_graph_errors(e) for e in error.exceptions)
    return isinstance(error, GraphNodeError)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=agent_graphs(max_nodes=4), cancel_after=st.none() | st.sampled_from([0.0, 0.001, 0.003]))
async def test_store_matches_what_ran(spec: GraphSpec, cancel_after: float | None) -> None:
    observed: dict[str, list[Message]] = {node.name: [] for node in spec.nodes}
    finished: dict[str, bool] = dict.fromkeys(observed, False)
    records: list[CallRecord] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(str(Path(tmp) / "run.db"), batch_size=7, flush_interval=0.001)
        try:
            with anyio.move_on_after(1e9 if cancel_after is None else cancel_after):
                async with MiniAgents(store=store, on_call_finished=records.append) as mas:
                    run = start_graph(spec)

                    async def consume(name: str) -> None:
                        try:
                            async for message in run.replies[name]:
                                observed[name].append(message)
                        except GraphNodeError:
                            pass
                        except AgentCallCancelledError:
                            # The block's deadline cancels the calls too: on asyncio a consumer may be woken
                            # by its call's cancellation before its own task is cancelled.  Nothing else
                            # cancels a call here.
                            if cancel_after is None:
                                raise
                        finished[name] = True

                    async with anyio.create_task_group() as tg:
                        for name in observed:
                            tg.start_soon(consume, name)
                    if cancel_after is not None:
                        # hang until cancelled, unless every call already ended
                        await anyio.sleep(cancel_after * 2)
        except BaseException as error:  # unobserved failures of nodes nobody consumed
            if not _only_graph_errors(error):
                raise
        stored: set[str] = set()
        stored_calls: dict[tuple[int, int | None, str, str], StoredCall] = {}
        replies: dict[int, list[Message]] = {}
        if _exists(store.path):  # (a block cancelled at once never opened the file)
            with StoreReader(store.path) as reader:
                stored = reader.hash_keys()
                stored_calls = {
                    (c.call_id, c.parent_call_id, c.agent_alias, c.outcome): c for c in reader.calls()
                }
                replies = {c.call_id: reader.replies(c) for c in reader.calls()}

    seen = [m for messages in observed.values() for m in messages]
    in_records = [m for r in records for m in (*r.input_messages, *r.reply_messages)]
    assert _with_nested(seen) <= stored, "a message a consumer observed is not stored"
    assert _with_nested(in_records) <= stored, "a message a call sent or received is not stored"
    if cancel_after is None:
        graph_inputs = {m.hash_key for r in records for m in r.input_messages if r.parent_call_id is None}
        assert stored == _with_nested(seen + in_records) | graph_inputs
        # the stored graph is the calls that ran, with their replies in order
        assert set(stored_calls) == {(r.call_id, r.parent_call_id, r.agent_alias, r.outcome) for r in records}
        for record in records:
            assert replies[record.call_id] == list(record.reply_messages)
        by_alias = {r.agent_alias: r for r in records if r.parent_call_id is None}
        for name, messages in observed.items():
            assert finished[name]
            assert [m.content for m in replies[by_alias[name].call_id]] == [m.content for m in messages]
        assert mas.run_id
    else:
        # whatever was stored is something that was produced (nothing invented)
        assert stored <= _with_nested(seen + in_records) | _all_inputs(spec)
        for record in records:
            if (record.call_id, record.parent_call_id, record.agent_alias, record.outcome) in stored_calls:
                assert replies[record.call_id] == list(record.reply_messages)


def _exists(path: str) -> bool:
    return Path(path).exists()


def _all_inputs(spec: GraphSpec) -> set[str]:
    return {TextMessage(content=content).hash_key for content in spec.inputs}
