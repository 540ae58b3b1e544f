"""What OpenTelemetry tracing costs the runtime: W1/W2-like workloads with tracing off, unconfigured and on.

Columns (each one runs in its own subprocess, so imports do not leak between them):

``before``
    the runtime at the commit before the call-observer hook existed (``--before-ref``, default ``5f2b80c``),
    checked out with ``git worktree add`` into ``--before-dir`` and put first on ``PYTHONPATH``.
``off``
    this working tree, ``MiniAgents(tracing=False)``; ``opentelemetry`` is never imported.
``auto``
    this working tree, ``MiniAgents()`` (auto mode) with ``opentelemetry.trace`` imported but no tracer provider
    configured: the runtime must find that out once per context and then do nothing.
``sdk``
    this working tree with an SDK ``TracerProvider`` (``SimpleSpanProcessor`` into an exporter that drops the
    spans): the price of actually tracing every call.

Workloads: **W1** — N sequential calls (inquire an echo agent with one message, await its reply), reported per
call; **W2** — N messages through a chain of 5 forwarding agents, reported per message.  The metric is the CPU
time of the worker process (``time.process_time``) per unit: each worker reports the median of ``--reps``
repetitions after one warm-up, and ``--rounds`` workers per column run interleaved (median of their medians).

Run::

    python benchmarks/bench_tracing.py              # both backends, W1 10,000 calls, W2 20,000 messages
    python benchmarks/bench_tracing.py --quick      # smaller sizes, 3 repetitions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("before", "off", "auto", "sdk")
RESULT = "BENCH_TRACING "


# -- worker (runs in a subprocess) ------------------------------------------------------------------------------
def _worker(mode: str, workload: str, size: int, reps: int, backend: str) -> dict[str, Any]:
    import anyio

    from miniagents import InteractionContext, MiniAgents, miniagent

    options: dict[str, Any] = {}
    if mode == "off":
        options["tracing"] = False
    elif mode == "auto":
        import opentelemetry.trace  # noqa: F401 - imported, but no provider configured
    elif mode == "sdk":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

        class Dropping(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Dropping()))
        options["tracing"] = provider

    @miniagent
    async def echo(ctx: InteractionContext) -> None:
        async for message in ctx.messages:
            ctx.reply(message)

    @miniagent
    async def forward(ctx: InteractionContext) -> None:
        async for message in ctx.messages:
            ctx.reply(message)

    async def w1(n: int) -> int:
        count = 0
        async with MiniAgents(**options) as mas:
            if mode == "auto":
                assert not mas.observers, "auto mode must not trace without a provider"
            if mode == "sdk":
                assert mas.observers, "the SDK provider must be used"
            for _ in range(n):
                count += len(await echo.inquire("x"))
        return count

    async def w2(n: int) -> int:
        async with MiniAgents(**options):
            sequence: Any = [f"m{i}" for i in range(n)]
            for _ in range(5):
                sequence = forward.inquire(sequence)
            return len(await sequence)

    run = w1 if workload == "w1" else w2
    anyio.run(run, max(1, size // 10), backend=backend)  # warm-up
    costs: list[float] = []
    for _ in range(reps):
        start = time.process_time()
        units = anyio.run(run, size, backend=backend)
        costs.append((time.process_time() - start) / units * 1e6)
        assert units == size, (units, size)
    import miniagents

    return {"us_per_unit": statistics.median(costs), "all": costs, "package": miniagents.__file__}


# -- orchestration ----------------------------------------------------------------------------------------------
def _ensure_before(ref: str, directory: Path) -> Path:
    if not (directory / "miniagents" / "__init__.py").exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(directory), ref],
            check=True,
            capture_output=True,
        )
    return directory


def _run(mode: str, workload: str, size: int, reps: int, backend: str, before: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(before if mode == "before" else ROOT)
    result = subprocess.run(
        [sys.executable, __file__, "--worker", mode, workload, str(size), str(reps), backend],
        capture_output=True,
        text=True,
        env=env,
        cwd="/" if mode == "before" else str(ROOT),  # so that the worktree's package is the one imported
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{mode} {workload} {backend} failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith(RESULT))
    data = json.loads(line[len(RESULT) :])
    expected = before if mode == "before" else ROOT
    if not Path(data["package"]).resolve().is_relative_to(expected.resolve()):
        raise SystemExit(f"{mode}: imported {data['package']}, expected the package under {expected}")
    value: float = data["us_per_unit"]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run every column on both backends and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--w1", type=int, default=10_000, help="W1: number of sequential calls")
    parser.add_argument("--w2", type=int, default=20_000, help="W2: messages through 5 forwarders")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per worker process")
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per column (interleaved)")
    parser.add_argument("--backends", nargs="+", default=["trio", "asyncio"])
    parser.add_argument("--before-ref", default="5f2b80c", help="the commit before the observer hook")
    parser.add_argument("--before-dir", type=Path, default=Path("/tmp/miniagents-before-tracing"))
    parser.add_argument("--quick", action="store_true", help="W1 2,000 calls, W2 5,000 messages, 3 reps")
    parser.add_argument("--worker", nargs=5, metavar=("MODE", "WORKLOAD", "SIZE", "REPS", "BACKEND"))
    args = parser.parse_args(argv)
    if args.worker:
        mode, workload, size, reps, backend = args.worker
        print(RESULT + json.dumps(_worker(mode, workload, int(size), int(reps), backend)))
        return 0
    if args.quick:
        args.w1, args.w2, args.reps, args.rounds = 2_000, 5_000, 3, 1
    before = _ensure_before(args.before_ref, args.before_dir)
    print(
        f"CPU µs per unit: median over {args.rounds} interleaved rounds of the median of {args.reps} reps "
        f"(W1: {args.w1} calls, W2: {args.w2} messages x 5 agents)"
    )
    print(
        f"before = {args.before_ref} (no observer hook); off = tracing=False; auto = OTel imported, no provider;"
    )
    print("sdk = SDK TracerProvider + SimpleSpanProcessor + dropping exporter\n")
    header = f"{'workload':<10}{'backend':<9}" + "".join(f"{m:>10}" for m in MODES)
    print(header + f"{'off/before':>12}{'auto/before':>13}{'sdk/off':>9}")
    for workload, size in (("w1", args.w1), ("w2", args.w2)):
        for backend in args.backends:
            # Rounds interleave the columns, so that a burst of load on a shared machine hits them all alike.
            samples: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    samples[mode].append(_run(mode, workload, size, args.reps, backend, before))
            costs = {mode: statistics.median(values) for mode, values in samples.items()}
            row = f"{workload:<10}{backend:<9}" + "".join(f"{costs[m]:>10.2f}" for m in MODES)
            row += f"{costs['off'] / costs['before']:>12.3f}{costs['auto'] / costs['before']:>13.3f}"
            row += f"{costs['sdk'] / costs['off']:>9.2f}"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
