"""Properties of replay: a recorded transcript replayed with arbitrary chunk boundaries gives exactly the same
results, and concurrent calls replayed in any order and interleaving get exactly their own recordings."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from cassette_helpers import DEAD_URL, agent_for, run_graph, scripted_rounds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents import MiniAgents
from miniagents.testing import (
    Cassette,
    FakeLLMServer,
    RecordedRequest,
    ScriptedResponse,
    ToolCall,
    anthropic_stream,
    openai_stream,
)

pytestmark = pytest.mark.anyio

tokens_strategy = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6),
    min_size=1,
    max_size=6,
)
cuts_strategy = st.lists(st.integers(min_value=0, max_value=4000), max_size=30)


def rechunk(path: Path, target: Path, cuts: list[int]) -> None:
    """Write *path* with every response body cut at *cuts* (bytes; non-UTF-8 pieces as base64)."""
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # not splitlines(): U+0085 may be in a line
    out = [lines[0]]
    for line in lines[1:]:
        entry = json.loads(line)
        body = "".join(entry["response"]["chunks"]).encode("utf-8")
        points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
        pieces = [body[a:b] for a, b in itertools.pairwise(points) if b > a]
        chunks: list[Any] = []
        for piece in pieces:
            try:
                chunks.append(piece.decode("utf-8"))
            except UnicodeDecodeError:
                chunks.append({"base64": base64.b64encode(piece).decode("ascii")})
        entry["response"]["chunks"] = chunks
        out.append(json.dumps(entry, ensure_ascii=False))
    target.write_text("\n".join(out) + "\n", encoding="utf-8")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=tokens_strategy, city=st.text(min_size=1, max_size=8), cuts=cuts_strategy)
async def test_replay_is_independent_of_chunk_boundaries(
    provider: str, tokens: list[str], city: str, cuts: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        recorded, rechunked = Path(directory) / "rec.jsonl", Path(directory) / "cut.jsonl"
        async with FakeLLMServer.serve() as server:
            server.enqueue(
                *scripted_rounds(provider, tokens, city), *scripted_rounds(provider, tokens[::-1], city)
            )
            url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
            async with Cassette(recorded, mode="record"):
                live = await run_graph(provider, url, question=f"Weather in {city}?")
        rechunk(recorded, rechunked, cuts)
        dead = DEAD_URL + "/v1" if provider == "openai" else DEAD_URL
        async with Cassette(rechunked, mode="replay") as cassette:
            assert await run_graph(provider, dead, question=f"Weather in {city}?") == live
        assert cassette.statistics().replayed == 4
        assert "".join(live[0][2]) == "".join(tokens)


# ---------------------------------------------------------------------------------------------------------------
# Concurrent calls replayed in any order, with any interleaving, get exactly their recordings
Spec = tuple[str, int, bool]  # (provider, question number, with a tool round)
SPECS: list[Spec] = [(p, q, tool) for p in ("openai", "anthropic") for q in (0, 1) for tool in (False, True)]


def question_of(spec: Spec) -> str:
    return f"question {spec[1]}" + (" (use-tool)" if spec[2] else "")


def scripted_provider() -> Callable[[RecordedRequest], ScriptedResponse]:
    """Answers determined by the request: a tool call for a first round asking for one, else text naming the
    request (a digest of its body) and how many identical requests came before it."""
    seen: Counter[str] = Counter()

    def answer(request: RecordedRequest) -> ScriptedResponse:
        body = request.json
        key = json.dumps(body, sort_keys=True)
        occurrence = seen[key]
        seen[key] += 1
        anthropic = request.path.split("?")[0].endswith("/messages")
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        if "use-tool" in key and len(body["messages"]) == 1:  # the same for every repeat: round 2 repeats too
            call = ToolCall("weather", {"city": f"c-{digest}"}, id="call_w", fragment_size=5)
            if anthropic:
                return anthropic_stream(["Checking."], tool_uses=[call])
            return openai_stream(["Checking. "], tool_calls=[call])
        tokens = [f"{digest} ", f"round {len(body['messages'])} ", f"#{occurrence}"]
        return anthropic_stream(tokens) if anthropic else openai_stream(tokens)

    return answer


@attrs.frozen
class Scenario:
    specs: list[Spec]  # call i asks specs[i]
    order: list[int]  # replay starts the calls in this order
    pauses: list[int]  # checkpoints before call i starts (replay)
    token_pauses: int  # checkpoints after every token (replay)
    chain: bool  # identical calls wait for the previous one (in start order) to finish


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    specs = draw(st.lists(st.sampled_from(SPECS), min_size=1, max_size=6))
    n = len(specs)
    return Scenario(
        specs=specs,
        order=draw(st.permutations(range(n))),
        pauses=draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)),
        token_pauses=draw(st.integers(0, 2)),
        chain=draw(st.booleans()),
    )


CallResult = tuple[list[list[str]], list[dict[str, Any]]]


async def run_calls(
    scenario: Scenario, urls: dict[str, str], order: list[int], pauses: list[int], token_pauses: int
) -> list[CallResult]:
    """Run every call of *scenario* concurrently (started in *order*); return each call's tokens and messages."""
    n = len(scenario.specs)
    results: list[CallResult | None] = [None] * n
    done = [anyio.Event() for _ in range(n)]
    previous: dict[int, int] = {}  # call -> the identical call started before it (when chained)
    last: dict[Spec, int] = {}
    for i in order:
        if scenario.chain and scenario.specs[i] in last:
            previous[i] = last[scenario.specs[i]]
        last[scenario.specs[i]] = i

    async def call(i: int) -> None:
        provider = scenario.specs[i][0]
        for _ in range(pauses[i]):
            await anyio.lowlevel.checkpoint()
        if i in previous:
            await done[previous[i]].wait()
        reply = agent_for(provider, urls[provider]).inquire(question_of(scenario.specs[i]))
        tokens: list[list[str]] = []
        async for promise in reply.promises():
            message_tokens = []
            async for token in promise:
                message_tokens.append(token)
                for _ in range(token_pauses):
                    await anyio.lowlevel.checkpoint()
            tokens.append(message_tokens)
        results[i] = (tokens, [m.to_dict() for m in await reply])
        done[i].set()

    async with MiniAgents(), anyio.create_task_group() as group:
        for i in order:
            group.start_soon(call, i)
    return [result for result in results if result is not None]


def by_request(
    scenario: Scenario, order: list[int], results: list[CallResult]
) -> dict[Spec, list[CallResult]]:
    """The results of identical calls, in their start order (sorted when they were not chained)."""
    grouped: dict[Spec, list[CallResult]] = {}
    for i in order:
        grouped.setdefault(scenario.specs[i], []).append(results[i])
    if not scenario.chain:  # concurrent identical calls: which one goes first is up to the scheduler
        grouped = {spec: sorted(group, key=repr) for spec, group in grouped.items()}
    return grouped


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
async def test_concurrent_calls_replay_their_own_recordings_in_any_order(scenario: Scenario) -> None:
    n = len(scenario.specs)
    requests = n + sum(1 for spec in scenario.specs if spec[2])
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "concurrent.jsonl"
        async with FakeLLMServer.serve() as server:
            server.handler = scripted_provider()
            urls = {"openai": server.openai_base_url, "anthropic": server.anthropic_base_url}
            async with Cassette(path, mode="record") as recording:
                recorded = await run_calls(scenario, urls, list(range(n)), [0] * n, 0)
        assert recording.statistics().recorded == requests
        offline = {"openai": DEAD_URL + "/v1", "anthropic": DEAD_URL}
        async with Cassette(path, mode="replay") as cassette:
            replayed = await run_calls(
                scenario, offline, scenario.order, scenario.pauses, scenario.token_pauses
            )
    assert by_request(scenario, scenario.order, replayed) == by_request(scenario, list(range(n)), recorded)
    stats = cassette.statistics()
    assert (stats.loaded, stats.replayed, stats.unused, stats.unmatched, stats.recorded) == (
        requests,
        requests,
        0,
        0,
        0,
    )
    # Every answer names its request and, for identical requests, which recording it is: all distinct.
    finals = [result[0][-1] for result in replayed]
    assert all(tokens[-1].startswith("#") for tokens in finals)
    assert len({(spec, "".join(tokens)) for spec, tokens in zip(scenario.specs, finals, strict=True)}) == n
