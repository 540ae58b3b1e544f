"""Fan-out / fan-in with streamed, out-of-order replies and replay — no LLM needed.

A `coordinator` agent asks several `researcher` agents about sub-topics at once.  Each researcher "thinks" for a
while (a sleep standing in for real work) and then streams its finding word by word.  The coordinator replies
every finding *out of order* — as soon as one is available, whoever finished first — and, in order at the end,
a summary.  The main program prints a live view of which agent answered when, token by token, and then a late
consumer replays the very same reply sequence from its first message.

Run it:  python examples/parallel_research.py [--topics N] [--backend trio|asyncio]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncIterator

import anyio

from miniagents import InteractionContext, MiniAgents, TextMessage, miniagent

SUBTOPICS = [
    "structured concurrency",
    "replayable promises",
    "immutable messages",
    "cancellation scopes",
    "token streaming",
    "agent graphs",
    "error propagation",
    "back-pressure",
]


async def words(text: str, delay: float) -> AsyncIterator[str]:
    """Yield *text* word by word, like an LLM streaming tokens."""
    for i, word in enumerate(text.split()):
        await anyio.sleep(delay)
        yield word if i == 0 else " " + word


def think_seconds(index: int, topics: int) -> float:
    """A think time per researcher: later questions finish first (a permutation of 0.05 s steps)."""
    return 0.05 + ((index * (topics - 1)) % topics) * 0.05


@miniagent
async def researcher(ctx: InteractionContext, subtopic: str, think_seconds: float) -> None:
    """Research one subtopic and stream the finding."""
    await anyio.sleep(think_seconds)  # stand-in for real work (an LLM call, a web search, ...)
    finding = f"{subtopic}: looked into it for {think_seconds:.2f}s and found it useful"
    # The reply is one message whose tokens stream while they are produced.
    ctx.reply(TextMessage.stream(words(finding, 0.01), researcher=ctx.agent.alias, subtopic=subtopic))


@miniagent
async def coordinator(ctx: InteractionContext, topics: int) -> None:
    """Fan out to researchers; forward each finding as soon as it exists; summarise at the end."""
    question = await ctx.messages.as_single_text()
    findings = []
    for i, subtopic in enumerate(SUBTOPICS[:topics]):
        # Different think times make them finish in an order that differs from the order we asked in.
        think = think_seconds(i, topics)
        replies = researcher.fork(alias=f"researcher-{i + 1}").inquire(subtopic=subtopic, think_seconds=think)
        ctx.reply_out_of_order(replies)  # delivered whenever ready, ahead of the summary below
        findings.append(replies)
    # Ordered reply: its content is known only when every finding is complete.
    done = [await replies for replies in findings]
    ctx.reply(f"Summary for {question!r}: {sum(len(r) for r in done)} findings from {len(done)} researchers.")


async def main(topics: int) -> None:
    """Ask the coordinator, print a live timeline, then replay the same replies as a late consumer."""
    async with MiniAgents():
        started = time.perf_counter()
        replies = coordinator.inquire("How do agents cooperate?", topics=topics)

        print(f"Asked {topics} researchers in parallel; replies arrive as they are ready:\n")
        async for promise in replies.promises():  # one MessagePromise per reply, as soon as it starts
            who = promise.known_beforehand.get("researcher", "coordinator")
            print(f"[{time.perf_counter() - started:5.2f}s] {who:>13} | ", end="", flush=True)
            async for token in promise:  # tokens stream while the researcher produces them
                print(token, end="", flush=True)
            print()
        elapsed = time.perf_counter() - started

        # A late consumer replays the whole sequence from the first message; it is the same sequence.
        replayed = [str(message) for message in await replies]
        print(f"\nReplayed {len(replayed)} messages for a late consumer; all {topics} researchers worked in")
        print(
            f"parallel: {elapsed:.2f}s in all, while their think times add up to "
            f"{sum(think_seconds(i, topics) for i in range(topics)):.2f}s."
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=6, choices=range(1, len(SUBTOPICS) + 1), metavar="N")
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    args = parser.parse_args()
    anyio.run(main, args.topics, backend=args.backend)
    sys.exit(0)
