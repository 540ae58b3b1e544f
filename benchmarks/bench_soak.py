"""Soak benchmark (issue #18): 1M agent calls through one open ``MiniAgents`` context with ``SQLiteStore``.

A service's shape: every call gets a system prompt built afresh (the same hash key every time, a new object), a
question and replies with an answer of its own.  Question ``i % (calls // 2)`` comes back ``calls // 2`` calls
later, long after any bounded cache dropped its key, so the store is handed it again and must keep one row.
Calls run ``--concurrency`` at a time.

Each variant runs in a fresh child process (so neither inherits the other's heap), on a store in a temporary
directory:

* ``bounded``: ``SQLiteStore`` as it is (it declares ``deduplicates_by_hash_key``, so the context remembers at
  most ``dedup_cache_size`` recent keys: the default, or ``--cache-size``);
* ``exact``: the same store with the declaration turned off, so the context keeps every key (the exact set
  plain ``on_persist_message`` handlers get), for the side-by-side comparison.

Every 10% of the calls the child prints its RSS (``/proc/self/statm``), SQLite's own heap
(``sqlite3_memory_used()``, mostly the writer's page cache, at most 64 MiB), their difference (the Python
side), the keys the context holds and the writer's id cache.  Then the RSS growth per call between the 20% and
100% samples, and at the end (after the context closed and the store committed) the stored rows against the
expected ones: every distinct message exactly once, every call once.

    python benchmarks/bench_soak.py [--calls 1000000] [--concurrency 64] [--backend trio] [--cache-size N]
    python benchmarks/bench_soak.py --calls 20000          # smoke run: growth figures need the full size
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from miniagents import InteractionContext, MiniAgents, TextMessage, miniagent
from miniagents.persistence import SQLiteStore

SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and cite nothing you cannot check."
_PAGE = os.sysconf("SC_PAGE_SIZE")
_RESULT = "RESULT "


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc/self/statm`` (pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _sqlite_memory_used() -> Any:
    try:  # the symbol of the libsqlite3 the sqlite3 module is linked against (or built with)
        import _sqlite3

        function = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (ImportError, OSError, AttributeError):
        return None
    function.restype = ctypes.c_int64
    function.argtypes = []
    return function


_sqlite_used = _sqlite_memory_used()


def sqlite_bytes() -> int:
    """Bytes SQLite has allocated in this process (page caches, statements); 0 when it cannot be read."""
    return int(_sqlite_used()) if _sqlite_used is not None else 0


class ExactStore(SQLiteStore):
    """``SQLiteStore`` without the declaration: its context keeps every key it has seen."""

    deduplicates_by_hash_key = False


@miniagent
async def assistant(ctx: InteractionContext, number: int) -> None:
    async for _message in ctx.messages:
        pass
    ctx.reply(f"answer {number}")


def _question(number: int, calls: int) -> str:
    return f"question {number % max(1, calls // 2)}"


async def soak(
    variant: str, calls: int, concurrency: int, cache_size: int | None, path: str
) -> dict[str, Any]:
    store = (ExactStore if variant == "exact" else SQLiteStore)(path)
    options: dict[str, Any] = {} if cache_size is None else {"dedup_cache_size": cache_size}
    samples: list[dict[str, Any]] = []
    marks = {calls * tenth // 10: tenth * 10 for tenth in range(1, 11)}
    started = time.perf_counter()

    def sample(done: int, percent: int, context: MiniAgents) -> None:
        writer = store._writer
        rss, lite = rss_bytes(), sqlite_bytes()
        samples.append(
            {
                "percent": percent,
                "calls": done,
                "rss": rss,
                "sqlite": lite,
                "python": rss - lite,
                "dedup_keys": context.statistics().dedup_keys,
                "writer_ids": len(writer._ids) if writer is not None else 0,
                "queued": len(writer.queue) if writer is not None else 0,
                "seconds": time.perf_counter() - started,
            }
        )
        print(_format_sample(samples[-1]), flush=True)

    async with MiniAgents(store=store, **options) as context:
        bound = context.statistics().dedup_cache_size
        sample(0, 0, context)
        done = 0
        while done < calls:
            wave = range(done, min(calls, done + concurrency))
            replies = [
                assistant.inquire([TextMessage(content=SYSTEM_PROMPT), _question(i, calls)], number=i)
                for i in wave
            ]
            for reply in replies:
                await reply
            done = wave.stop
            for mark, percent in marks.items():
                if wave.start < mark <= done:
                    sample(done, percent, context)
    elapsed = time.perf_counter() - started
    stats = store.statistics()
    return {
        "variant": variant,
        "bound": bound,
        "samples": samples,
        "seconds": elapsed,
        "throttled": stats.throttled,
        "throttled_seconds": stats.throttled_seconds,
        **check(path, calls),
    }


def check(path: str, calls: int) -> dict[str, Any]:
    """Compare the file with what the calls produced: each distinct message once, each call once."""
    expected = {TextMessage(content=SYSTEM_PROMPT).hash_key}
    expected.update(TextMessage(content=_question(i, calls)).hash_key for i in range(calls))
    expected.update(TextMessage(content=f"answer {i}").hash_key for i in range(calls))
    db = sqlite3.connect(path)
    try:
        rows, distinct = db.execute("SELECT count(*), count(DISTINCT hash_key) FROM messages").fetchone()
        missing = set(expected)
        unexpected = 0
        for (key,) in db.execute("SELECT hash_key FROM messages"):
            if key in missing:
                missing.discard(key)
            else:
                unexpected += 1
        stored_calls = db.execute("SELECT count(*) FROM calls").fetchone()[0]
    finally:
        db.close()
    return {
        "expected_messages": len(expected),
        "message_rows": rows,
        "distinct_keys": distinct,
        "missing": len(missing),
        "unexpected": unexpected,
        "call_rows": stored_calls,
        "expected_calls": calls,
        "file_bytes": os.path.getsize(path),
    }


def _format_sample(sample: dict[str, Any]) -> str:
    mb = 1024 * 1024
    return (
        f"  {sample['percent']:3d}%  {sample['calls']:>9,} calls  RSS {sample['rss'] / mb:7.1f} MiB"
        f"  sqlite {sample['sqlite'] / mb:6.1f}  python {sample['python'] / mb:7.1f}"
        f"  context keys {sample['dedup_keys']:>9,}  writer ids {sample['writer_ids']:>7,}"
        f"  queued {sample['queued']:>6,}  {sample['seconds']:7.1f} s"
    )


def growth_per_call(result: dict[str, Any], field: str) -> float:
    """Bytes per call of *field* between the 20% and the 100% samples."""
    by_percent = {s["percent"]: s for s in result["samples"]}
    first, last = by_percent[20], by_percent[100]
    return float(last[field] - first[field]) / max(1, int(last["calls"] - first["calls"]))


def child(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        result = anyio.run(
            soak,
            args.child,
            args.calls,
            args.concurrency,
            args.cache_size,
            str(Path(tmp) / "soak.db"),
            backend=args.backend,
        )
    print(_RESULT + json.dumps(result), flush=True)


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", variant, "--calls", str(args.calls)]
    command += ["--concurrency", str(args.concurrency), "--backend", args.backend]
    if args.cache_size is not None:
        command += ["--cache-size", str(args.cache_size)]
    print(
        f"{variant}: {args.calls:,} calls, {args.concurrency} at a time, backend={args.backend}", flush=True
    )
    result: dict[str, Any] | None = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:  # the samples as they come
            if line.startswith(_RESULT):
                result = json.loads(line[len(_RESULT) :])
            else:
                print(line, end="", flush=True)
    if process.returncode != 0 or result is None:
        raise SystemExit(f"the {variant} run failed (exit status {process.returncode})")
    return result


def report(result: dict[str, Any]) -> bool:
    ok = bool(
        result["message_rows"] == result["distinct_keys"] == result["expected_messages"]
        and result["missing"] == result["unexpected"] == 0
        and result["call_rows"] == result["expected_calls"]
    )
    bound = "every key (exact set)" if result["bound"] is None else f"at most {result['bound']:,} keys"
    print(
        f"  {result['variant']}: context kept {bound}; {result['seconds']:.1f} s"
        f" ({result['expected_calls'] / result['seconds']:,.0f} calls/s);"
        f" growth 20%->100%: RSS {growth_per_call(result, 'rss'):+.1f} B/call,"
        f" python side {growth_per_call(result, 'python'):+.1f} B/call,"
        f" sqlite {growth_per_call(result, 'sqlite'):+.1f} B/call; handing over waited for the writer"
        f" {result['throttled']:,} times, {result['throttled_seconds']:.1f} s in all"
    )
    print(
        f"  {result['variant']}: rows: {result['message_rows']:,} messages ({result['distinct_keys']:,} distinct"
        f" keys; expected {result['expected_messages']:,}; missing {result['missing']}, unexpected"
        f" {result['unexpected']}), {result['call_rows']:,} calls (expected {result['expected_calls']:,}),"
        f" file {result['file_bytes'] / 1024 / 1024:.0f} MiB: {'OK' if ok else 'MISMATCH'}"
    )
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="agent calls per variant (default 1M)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight at a time (default 64)")
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    parser.add_argument(
        "--cache-size",
        type=int,
        default=None,
        help="dedup_cache_size= of the bounded variant (default: the store's)",
    )
    parser.add_argument("--variants", default="bounded,exact", help="comma-separated: bounded, exact")
    parser.add_argument("--child", choices=["bounded", "exact"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.calls < 10:
        parser.error("--calls must be at least 10 (one sample per 10%)")
    if args.child:
        child(args)
        return
    results = [run_variant(variant, args) for variant in args.variants.split(",")]
    print(f"soak: {args.calls:,} calls through one open MiniAgents context with SQLiteStore")
    ok = all([report(result) for result in results])
    by_variant = {result["variant"]: result for result in results}
    if {"bounded", "exact"} <= set(by_variant):
        bounded, exact = (growth_per_call(by_variant[v], "python") for v in ("bounded", "exact"))
        peak = {
            v: max(s["rss"] for s in by_variant[v]["samples"]) / 1024 / 1024 for v in ("bounded", "exact")
        }
        ratio = f"{exact / bounded:.1f}x" if bounded > 1 else "n/a (bounded: no growth)"
        print(
            f"  side by side: python-side growth exact {exact:+.1f} vs bounded {bounded:+.1f} B/call"
            f" (exact/bounded {ratio}); peak RSS exact {peak['exact']:.0f} MiB, bounded {peak['bounded']:.0f} MiB"
        )
    if not ok:
        raise SystemExit("soak: the store does not hold exactly the expected rows")


if __name__ == "__main__":
    main()
