"""Property: a recorded transcript replayed with arbitrary chunk boundaries gives exactly the same results."""

from __future__ import annotations

import base64
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cassettes._helpers import DEAD_URL, run_graph, scripted_rounds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miniagents.testing import Cassette, FakeLLMServer

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
