"""Shared runner for one benchmark subprocess (standard library only).

Each implementation module (``impl_ours.py``, ``impl_upstream.py``, ``impl_floor.py``) defines one async
function per workload with the signature ``async def wN(size, sw, **params) -> int``.  The function does the
whole workload (including entering/leaving the framework's context, so work deferred to background tasks is
counted), calls ``sw.start()`` / ``sw.stop()`` around the measured region and returns the number of units it
observed (replies, messages, tokens...).  The harness checks that number against the expected count, so every
implementation provably does the same amount of work.

Usage (the orchestrator ``run.py`` builds these command lines)::

    python benchmarks/impl_floor.py --workload w1 --size 10000 --backend trio --reps 5 --warmup 500

The result is printed as one line ``BENCH_RESULT {json}`` on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

RESULT_MARKER = "BENCH_RESULT "


class Stopwatch:
    """Measures one region per repetition; ``start``/``stop`` are called by the workload itself.

    Records both the CPU time of this process (``time.process_time``: the primary metric, since it is not
    inflated when other processes compete for the cores; on an idle machine it equals the wall time of these
    CPU-bound, I/O-free workloads) and the wall-clock time.
    """

    __slots__ = ("_c0", "_t0", "cpu", "elapsed")

    def __init__(self) -> None:
        self._t0: float | None = None
        self._c0 = 0.0
        self.elapsed: float | None = None
        self.cpu: float | None = None

    def start(self) -> None:
        self._c0 = time.process_time()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        t1 = time.perf_counter()
        c1 = time.process_time()
        assert self._t0 is not None, "Stopwatch.stop() without start()"
        self.elapsed = t1 - self._t0
        self.cpu = c1 - self._c0


def expected_units(workload: str, size: int, params: dict[str, int]) -> int:
    if workload == "w5":
        return size * params["consumers"]
    return size


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def w6_base_url() -> str:
    """The base URL of the W6 stream server (``benchmarks/w6_server.py``), which ``run.py`` starts."""
    url = os.environ.get("BENCH_W6_BASE_URL")
    if not url:
        raise SystemExit("W6 needs BENCH_W6_BASE_URL: start benchmarks/w6_server.py (run.py does it)")
    return url


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True, choices=["w1", "w2", "w3", "w4", "w4r", "w5", "w6"])
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0, help="size of one untimed warm-up run (0: none)")
    p.add_argument("--consumers", type=int, default=100, help="W5: number of late consumers")
    p.add_argument("--measure-rss", action="store_true", help="report peak RSS growth per unit (use reps=1)")
    return p.parse_args(argv)


async def run_all(
    workloads: dict[str, Callable[..., Awaitable[int]]], args: argparse.Namespace
) -> dict[str, Any]:
    fn = workloads[args.workload]
    params = {"consumers": args.consumers} if args.workload == "w5" else {}
    if args.warmup:
        warm_params = {"consumers": min(args.consumers, 10)} if args.workload == "w5" else {}
        got = await fn(args.warmup, Stopwatch(), **warm_params)
        want = expected_units(args.workload, args.warmup, warm_params)
        if got != want:
            raise AssertionError(f"warm-up: observed {got} units, expected {want}")
    times: list[float] = []
    walls: list[float] = []
    rss_per_unit: float | None = None
    for _ in range(args.reps):
        gc.collect()
        baseline = current_rss_bytes() if args.measure_rss else 0
        sw = Stopwatch()
        got = await fn(args.size, sw, **params)
        want = expected_units(args.workload, args.size, params)
        if got != want:
            raise AssertionError(f"observed {got} units, expected {want}")
        assert sw.elapsed is not None and sw.cpu is not None, "workload did not stop its stopwatch"
        times.append(sw.cpu)
        walls.append(sw.elapsed)
        if args.measure_rss:
            # Peak RSS of the process minus the resident size just before this repetition.
            rss_per_unit = max(0, peak_rss_bytes() - baseline) / args.size
    return {"times": times, "walls": walls, "rss_per_unit": rss_per_unit}


def main(
    impl: str,
    workloads: dict[str, Callable[..., Awaitable[int]]],
    run_loop: Callable[[Callable[[], Awaitable[dict[str, Any]]], str], dict[str, Any]],
    describe: Callable[[], dict[str, str]],
) -> None:
    """Entry point of an implementation module.

    ``run_loop(async_fn, backend)`` runs ``async_fn`` on a fresh event loop of the given backend.
    ``describe()`` returns version/location facts (checked by the orchestrator: it proves which
    ``miniagents`` package this process imported).
    """
    args = parse_args()

    async def _main() -> dict[str, Any]:
        return await run_all(workloads, args)

    t0 = time.perf_counter()
    res = run_loop(_main, args.backend)
    res.update(
        impl=impl,
        workload=args.workload,
        size=args.size,
        backend=args.backend,
        consumers=args.consumers if args.workload == "w5" else None,
        wall=time.perf_counter() - t0,
        python=platform.python_version(),
        **describe(),
    )
    sys.stdout.write(RESULT_MARKER + json.dumps(res) + "\n")
    sys.stdout.flush()
