"""Depth benchmark: what a chain of nested agent calls costs to complete and to cancel, against its depth.

A chain is agent k forwarding the replies of agent k+1 (``ctx.reply(next.inquire(ctx.messages))``), down to
depth N, on trio and asyncio in one run.  Four costs per depth, each the best of a few repetitions:

* **completion**: ``await top.inquire(...)`` of a chain whose bottom replies at once (start, run and finish
  every level);
* **cancel() the top call**: the chain is built and its bottom waits forever; from ``top.cancel()`` until
  the top's replies have ended (every level concluded);
* **cancel the scope around the block**: same chain; from cancelling a scope around the ``MiniAgents``
  block until the block has exited (the way a ``move_on_after`` or a failing body ends it);
* **failure at the bottom, awaited**: every level awaits the next (``ctx.reply(await next.inquire())``) and
  the bottom raises: the error fails every level on its way up to the top caller, who gets it.

For each cost the table prints the time per chain and per level, and the ratio of each depth's cost to the
previous depth's scaled by the depth: ``cost(1000) / (10 x cost(100))``.  About 1 (or below, where fixed
costs dominate the shallow chain) means linear; a ratio near the depth factor (10) would mean quadratic.
The full run prints two tables: with garbage collection as usual, then with it off around the timed part
(``--no-gc``: only that one).  The collector's full passes traverse the whole heap, which a deep chain fills
(every level is alive until the chain ends), so with it on the deepest chains cost more per level on both
backends; that is the interpreter's work, and the table without it shows the runtime's own.

Depths: 10, 100, 1,000 and 5,000 (``--quick``: 10, 100, 1,000 once each, GC on).  A depth a backend cannot do (a
recursion error in the runtime or in the event loop, a hang) is reported as such instead of a time, and so is
one too slow to measure (its chains take longer than ``HANG_GUARD``): each measurement runs in its own event
loop under that ``fail_after``, and deeper chains of that cost are not tried.

Run it:  python benchmarks/bench_depth.py [--quick] [--no-gc]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import sys
import time
from collections.abc import Awaitable, Callable

import anyio

from miniagents import AgentCallCancelledError, InteractionContext, MiniAgents, miniagent

DEPTHS = (10, 100, 1000, 5000)
QUICK_DEPTHS = (10, 100, 1000)
BACKENDS = ("trio", "asyncio")
LEVELS_PER_MEASUREMENT = 10_000  # shallow chains are measured several at a time: the timer's resolution
HANG_GUARD = 120.0  # seconds per measurement: past it the depth is reported as not supported


class Chain:
    """The agents of one chain; ``bottom_reached`` is set when the deepest call runs."""

    def __init__(self, depth: int, bottom: str = "returns") -> None:
        self.depth = depth
        self.bottom = bottom
        self.bottom_reached = anyio.Event()

        @miniagent
        async def link(ctx: InteractionContext, level: int) -> None:
            if level < self.depth:
                replies = link.inquire(ctx.messages, level=level + 1)
                ctx.reply(await replies if self.bottom == "fails" else replies)
                return
            self.bottom_reached.set()
            if self.bottom == "hangs":
                await anyio.sleep_forever()
            if self.bottom == "fails":
                raise ValueError("the bottom failed")
            ctx.reply("bottom")

        self.agent = link


async def completion(depth: int, chains: int) -> float:
    async with MiniAgents():
        start = time.perf_counter()
        for _ in range(chains):
            await Chain(depth).agent.inquire("go", level=0)
        elapsed = time.perf_counter() - start
    return elapsed


async def cancel_top(depth: int, chains: int) -> float:
    elapsed = 0.0
    async with MiniAgents():
        for _ in range(chains):
            chain = Chain(depth, bottom="hangs")
            top = chain.agent.initiate_call(level=0)
            top.send("go").finish()
            await chain.bottom_reached.wait()
            start = time.perf_counter()
            top.cancel()
            with contextlib.suppress(AgentCallCancelledError):
                await top.reply_sequence()
            elapsed += time.perf_counter() - start
    return elapsed


async def cancel_outer(depth: int, chains: int) -> float:
    elapsed = 0.0
    for _ in range(chains):
        chain = Chain(depth, bottom="hangs")
        with anyio.CancelScope() as scope:
            async with MiniAgents():
                chain.agent.inquire("go", level=0)
                await chain.bottom_reached.wait()
                start = time.perf_counter()
                scope.cancel()
                await anyio.sleep_forever()
        elapsed += time.perf_counter() - start
    return elapsed


async def failure(depth: int, chains: int) -> float:
    async with MiniAgents():
        start = time.perf_counter()
        for _ in range(chains):
            with contextlib.suppress(ValueError):
                await Chain(depth, bottom="fails").agent.inquire("go", level=0)
        elapsed = time.perf_counter() - start
    return elapsed


MEASURES: dict[str, Callable[[int, int], Awaitable[float]]] = {
    "completion": completion,
    "cancel() the top call": cancel_top,
    "cancel the scope around the block": cancel_outer,
    "failure at the bottom, awaited": failure,
}


async def _guarded(
    measure: Callable[[int, int], Awaitable[float]], depth: int, chains: int, gc_on: bool
) -> float:
    with anyio.fail_after(HANG_GUARD):
        gc.collect()
        if not gc_on:
            gc.disable()
        try:
            return await measure(depth, chains)
        finally:
            gc.enable()


def measure_one(backend: str, name: str, depth: int, repetitions: int, gc_on: bool) -> float | str:
    """Seconds per chain (best of *repetitions*), or why the depth is not supported on *backend*."""
    chains = max(1, LEVELS_PER_MEASUREMENT // depth)
    best = float("inf")
    for _ in range(repetitions):
        try:
            elapsed = anyio.run(_guarded, MEASURES[name], depth, chains, gc_on, backend=backend)
        except BaseException as exc:  # reported, not hidden: the depth is not supported
            if isinstance(exc, KeyboardInterrupt):
                raise
            if isinstance(exc, TimeoutError):
                per_chain = HANG_GUARD / chains * 1e3
                return (
                    f"too slow: {chains} chains took over {HANG_GUARD:.0f} s (over {per_chain:,.0f} ms each)"
                )
            return f"not supported: {type(exc).__name__}: {str(exc)[:80]}"
        best = min(best, elapsed / chains)
    return best


def table(depths: tuple[int, ...], repetitions: int, gc_on: bool) -> None:
    """Measure every cost at every depth on both backends and print the table."""
    print(
        f"Depth benchmark: chains of nested calls, best of {repetitions}, GC {'on' if gc_on else 'off'}, "
        f"Python {sys.version.split()[0]}, recursion limit {sys.getrecursionlimit()}"
    )
    header = f"{'backend':8} {'cost':34} {'depth':>6} {'per chain':>12} {'per level':>10}  ratio to the depth before"
    print(header)
    print("-" * len(header))
    for backend in BACKENDS:
        for name in MEASURES:
            previous: tuple[int, float] | None = None
            for depth in depths:
                result = measure_one(backend, name, depth, repetitions, gc_on)
                if isinstance(result, str):
                    print(f"{backend:8} {name:34} {depth:>6} {result} (deeper chains not tried)")
                    break
                ratio = ""
                if previous is not None:
                    before_depth, before = previous
                    factor = depth // before_depth
                    ratio = f"{result / (factor * before):5.2f}  (cost at {depth:,} / ({factor} x cost at {before_depth:,}))"
                print(
                    f"{backend:8} {name:34} {depth:>6} {result * 1e3:>9.2f} ms {result / depth * 1e6:>7.1f} us  {ratio}"
                )
                previous = (depth, result)
        print()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="depths 10/100/1,000 once each, GC on only")
    parser.add_argument("--no-gc", action="store_true", help="only the table with GC off while timing")
    args = parser.parse_args()
    # A measurement cut short by its hang guard logs the failures nobody observed (with their whole report):
    # the table says what happened instead.
    logging.getLogger("miniagents").disabled = True
    if args.quick:
        table(QUICK_DEPTHS, 1, gc_on=True)
        return
    for gc_on in (False,) if args.no_gc else (True, False):
        table(DEPTHS, 3, gc_on)


if __name__ == "__main__":
    main()
