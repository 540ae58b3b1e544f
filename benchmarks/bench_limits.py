"""Rate limiter benchmark: the cost of an uncontended acquire/release, and limited throughput against the fake server.

1. ``async with limiter.acquire(key, tokens=...)`` with nothing to wait for, in µs per acquire/release, on trio and
   asyncio, for a limiter with only ``max_concurrent``, and with all three limits; next to the same loop over a
   ``nullcontext`` (the loop's own cost).
2. ``openai_agent`` calls (``--concurrency`` callers, 20 by default) against
   :class:`~miniagents.testing.fake_llm_server.FakeLLMServer` in the same process: first 1,000 unlimited (the
   capacity of client + server on this machine), then 10,000 through a context ``RateLimiter`` whose rate is
   ``--fraction`` (0.8) of that capacity; the limiter's minute is ``--time-scale`` times faster (default 60: a
   one-second window).  The table compares the achieved rate to the configured one and to the best a sliding
   window allows (full windows, then the rest at capacity).

Run it:  python benchmarks/bench_limits.py [--calls 10000] [--fraction 0.8] [--time-scale 60]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import anyio

from miniagents import MiniAgents, RateLimit, RateLimiter
from miniagents.llms import openai_agent
from miniagents.testing.fake_llm_server import FakeLLMServer, openai_stream
from miniagents.testing.limits import ScaledClock

ITERATIONS = 50_000


async def _acquire_loop(limiter: RateLimiter | None, n: int) -> float:
    start = time.perf_counter()
    if limiter is None:
        for _ in range(n):
            async with nullcontext():
                pass
    else:
        for _ in range(n):
            async with limiter.acquire("k", tokens=1):
                pass
    return (time.perf_counter() - start) / n * 1e6


def uncontended(backend: str) -> dict[str, float]:
    results: dict[str, float] = {}
    big = 10**12
    configs: dict[str, RateLimiter | None] = {
        "loop floor (nullcontext)": None,
        "unlimited key": RateLimiter(),
        "max_concurrent only": RateLimiter(default=RateLimit(max_concurrent=10)),
        "rpm + tpm + max_concurrent": RateLimiter(
            default=RateLimit(requests_per_minute=big, tokens_per_minute=big, max_concurrent=10)
        ),
    }
    for name, limiter in configs.items():
        results[name] = min(anyio.run(_acquire_loop, limiter, ITERATIONS, backend=backend) for _ in range(3))
    return results


async def _calls(calls: int, concurrency: int, limiter: RateLimiter | None) -> tuple[float, int, int]:
    async with FakeLLMServer.serve() as server:
        server.handler = lambda request: openai_stream(
            "ok", usage={"prompt_tokens": 5, "completion_tokens": 1}
        )
        agent = openai_agent.fork(model="m", base_url=server.openai_base_url, api_key="k")
        remaining = calls

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await agent.inquire("hi")

        start = time.perf_counter()
        async with MiniAgents(rate_limiter=limiter), anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(caller)
        elapsed = time.perf_counter() - start
        granted = sum(s.granted for s in limiter.statistics().values()) if limiter is not None else 0
        return elapsed, len(server.requests), granted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.8)
    parser.add_argument("--capacity-sample", type=int, default=1000)
    parser.add_argument("--time-scale", type=float, default=60.0)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args()

    print(f"Uncontended acquire/release, µs per lease (best of 3 x {ITERATIONS:,})")
    rows = {backend: uncontended(backend) for backend in ("trio", "asyncio")}  # about 10 s
    print(f"{'configuration':<30} {'trio':>8} {'asyncio':>8}")
    for name in rows["trio"]:
        print(f"{name:<30} {rows['trio'][name]:>8.2f} {rows['asyncio'][name]:>8.2f}", flush=True)

    print(
        f"\n{args.calls:,} openai_agent calls against FakeLLMServer ({args.backend}, {args.concurrency} callers)"
    )
    anyio.run(_calls, 200, args.concurrency, None, backend=args.backend)  # warm-up
    sample = min(args.calls, args.capacity_sample)
    free_s, _, _ = anyio.run(_calls, sample, args.concurrency, None, backend=args.backend)
    capacity = sample / free_s
    print(f"{'run':<34} {'seconds':>8} {'calls/s':>9}")
    print(f"{f'unlimited, {sample:,} calls (capacity)':<34} {free_s:>8.2f} {capacity:>9.0f}", flush=True)
    per_second = capacity * args.fraction
    window = 60.0 / args.time_scale
    rpm = max(1, int(per_second * window))
    limiter = RateLimiter(
        default=RateLimit(requests_per_minute=rpm, max_concurrent=args.concurrency),
        clock=ScaledClock(args.time_scale),
    )
    limited_s, sent, granted = anyio.run(_calls, args.calls, args.concurrency, limiter, backend=args.backend)
    configured = rpm / window
    # With a sliding window the last window is only partly used: the best possible time is (windows - 1) full
    # windows plus the time to send the last batch at full speed.
    windows = -(-args.calls // rpm)
    best = (windows - 1) * window + (args.calls - (windows - 1) * rpm) / capacity
    print(
        f"{f'limited: {rpm} per {window:g} s window':<34} {limited_s:>8.2f} {args.calls / limited_s:>9.0f}"
        f"   configured {configured:.0f}/s; best possible {best:.2f} s; granted {granted}, sent {sent}"
    )


if __name__ == "__main__":
    main()
