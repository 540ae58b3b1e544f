"""Test an agent graph that calls an LLM: record the exchanges once, then run offline and deterministically.

The first run (no cassette file yet) calls the real provider and writes ``cassettes/<module>.<test>.jsonl``; every
later run replays that file through a fake provider server on 127.0.0.1 — no network, no key, same tokens.
Commit the cassette and CI runs the test offline::

    pytest examples/test_with_cassette.py                          # replays the committed cassette
    MINIAGENTS_CASSETTE_MODE=record OPENAI_API_KEY=sk-... EXAMPLE_MODEL=gpt-4o-mini \\
        pytest examples/test_with_cassette.py                      # re-records against OpenAI

The committed cassette was recorded against the embedded local model (Gemma 3 270M, then under llama-cpp-python, an
OpenAI-compatible server: ``OPENAI_BASE_URL=<its url>``), which is why its answers are not very clever.  The
assertions are about the graph: what reaches the model and what comes back, not the model's wording.
"""

from __future__ import annotations

import os

import pytest

from miniagents import InteractionContext, MiniAgents, miniagent
from miniagents.llms import openai_agent

MODEL = os.environ.get("EXAMPLE_MODEL", "gemma3-270m")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # both backends share the cassette: the first run records, the other replays


# --- the application under test: a writer drafts, an editor shortens the draft ---------------------------------
# (extra_body: the server it was recorded with, llama-cpp-python, knew only the older `max_tokens` field; replay
# matches request bodies, so it stays)
writer = openai_agent.fork(
    alias="writer",
    model=MODEL,
    system="Write one short sentence.",
    max_tokens=24,
    extra_body={"max_tokens": 24},
)
editor = openai_agent.fork(
    alias="editor", model=MODEL, system="Shorten the text.", max_tokens=16, extra_body={"max_tokens": 16}
)


@miniagent
async def blurb_pipeline(ctx: InteractionContext) -> None:
    """Draft a blurb about the topic, then have the editor shorten it."""
    draft = writer.inquire(ctx.messages, temperature=0)
    ctx.reply(editor.inquire(draft, temperature=0))


# --- the test ---------------------------------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.llm_cassette  # cassettes/test_with_cassette.test_blurb_pipeline.jsonl
async def test_blurb_pipeline() -> None:
    async with MiniAgents():
        tokens = []
        async for promise in blurb_pipeline.inquire("a blurb about structured concurrency").promises():
            tokens.extend([token async for token in promise])
            message = await promise
    assert message.role == "assistant" and message.model
    assert message.content == "".join(tokens) and message.content.strip()
    assert message.finish_reason in ("stop", "length")
