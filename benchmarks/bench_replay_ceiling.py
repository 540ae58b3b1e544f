"""W5's ceiling: replaying a complete sequence against a bare ``async for`` over a plain async generator.

W5 (``run.py``) replays a finished 10,000-message sequence to 100 late consumers and compares the cost per
message per consumer with upstream miniagents.  This benchmark measures, side by side in one process and in
alternating order, ours (``impl_ours.w5``: ``async for msg in sequence`` in 100 tasks) and the least any
framework could do: the same 100 tasks each running ``async for`` over an async generator that yields the
same messages from a tuple (no channel, no buffer, nothing shared).  The ratio says how much of W5 is the
framework's and how much is the interpreter's ``async for`` step.

    python benchmarks/bench_replay_ceiling.py [--messages 10000] [--consumers 100] [--reps 7]

Prints the medians of process CPU time per message per consumer, on both anyio backends.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import AsyncIterator, Sequence

import anyio
import impl_ours  # benchmarks/impl_ours.py: the script's directory is on sys.path

from miniagents import Message, MiniAgents


class _Stopwatch:
    def start(self) -> None:
        self.started = time.process_time()

    def stop(self) -> None:
        self.elapsed = time.process_time() - self.started


async def _yield_each(messages: Sequence[Message]) -> AsyncIterator[Message]:
    for message in messages:
        yield message


async def bare(messages: Sequence[Message], consumers: int) -> tuple[float, int]:
    """CPU seconds for *consumers* tasks to each ``async for`` over a plain async generator of *messages*."""
    counts = [0] * consumers

    async def consume(k: int) -> None:
        count = 0
        async for _message in _yield_each(messages):
            count += 1
        counts[k] = count

    started = time.process_time()
    async with anyio.create_task_group() as tg:
        for k in range(consumers):
            tg.start_soon(consume, k)
    return time.process_time() - started, sum(counts)


async def measure(n: int, consumers: int, reps: int) -> dict[str, float]:
    async with MiniAgents():
        messages = await impl_ours.produce_messages.inquire(n=n)
    results: dict[str, list[float]] = {"ours": [], "bare": []}
    for rep in range(reps):
        for variant in ("ours", "bare") if rep % 2 == 0 else ("bare", "ours"):
            if variant == "ours":
                watch = _Stopwatch()
                count = await impl_ours.w5(n, watch, consumers)
                elapsed = watch.elapsed
            else:
                elapsed, count = await bare(messages, consumers)
            if count != n * consumers:
                raise AssertionError(f"{variant}: {count} messages read, expected {n * consumers}")
            results[variant].append(elapsed)
    return {variant: statistics.median(times) / (n * consumers) * 1e9 for variant, times in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--consumers", type=int, default=100)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    print(
        f"W5 ceiling: {args.messages} messages replayed to {args.consumers} consumers, medians of {args.reps} reps"
    )
    for backend in ("trio", "asyncio"):
        ns = anyio.run(measure, args.messages, args.consumers, args.reps, backend=backend)
        print(
            f"  {backend:8s} ours {ns['ours']:6.0f} ns   bare async-for over an async generator {ns['bare']:6.0f} ns"
            f"   per message per consumer; ours/bare {ns['ours'] / ns['bare']:.2f}"
        )


if __name__ == "__main__":
    main()
