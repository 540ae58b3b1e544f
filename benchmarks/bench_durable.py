"""Durable-call overhead: one agent call in process, through ``miniagents.durable`` on SQLite, and as raw DBOS.

One *call* is: an input message of ``--input-chars`` characters goes to an agent that makes ``--exchanges``
OpenAI Chat Completions requests (each streams ``--tokens`` tokens; from the second on, the history grows by
the previous answer and a short follow-up, as in a conversation or a tool loop) and replies the last answer.
The model is ``benchmarks/w6_server.py`` in its own process (a pre-rendered stream; its cost is not in the
client's CPU time).  Variants:

``inprocess``
    ``bench_agent.inquire(message)`` inside one open ``MiniAgents`` context (no durability).
``durable``
    the same ``bench_agent`` marked ``durable()`` and called with ``miniagents.durable.run(..., run_id=...)``
    (a new run id per call) on a SQLite system database: one workflow per call, one step per exchange.
``raw``
    a DBOS workflow written directly against ``dbos`` on SQLite (asyncio, DBOS's own loop): the same requests
    from an ``httpx.AsyncClient``, one ``@DBOS.step`` per exchange returning the raw response (status, kept
    headers, body bytes, as the durable layer records it), the workflow parsing the SSE answer and returning
    a message-shaped dict; its input is the input message's dict.  No miniagents.

Each worker is a subprocess (DBOS is a process-wide singleton) with a fresh SQLite file: it makes ``--warmup``
calls, then times ``--calls`` sequential calls (wall clock and CPU time of the whole process, DBOS's threads
included).  ``--reps`` workers per variant and backend run interleaved (the order alternates each round) and
the medians are reported, with the ratios durable/raw (target: within 1.5x) and durable/inprocess.
``inprocess`` and ``durable`` run on every ``--backends`` entry; ``raw`` on asyncio.

    python benchmarks/bench_durable.py [--calls 300] [--reps 3] [--exchanges 1] [--backends trio asyncio]
    python benchmarks/bench_durable.py --quick          # a smoke run: 40 calls, 1 rep

The durable package may live elsewhere before it is merged: ``--durable-path DIR`` is put first on the
workers' ``PYTHONPATH`` for the ``durable`` variant only.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from miniagents import InteractionContext, Message, TextMessage, miniagent

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = "BENCH_DURABLE "
VARIANTS = ("inprocess", "durable", "raw")
API_KEY = "bench-key"
FOLLOW_UP = "Go on."
TOKEN = "tok "  # what w6_server.py streams


def input_text(chars: int, index: int) -> str:
    """An input of exactly *chars* characters, distinct per call (no layer may answer it from a cache)."""
    tail = f" #{index:07d}"
    body = ("The quick brown fox jumps over the lazy dog. " * (chars // 45 + 1))[: max(0, chars - len(tail))]
    return body + tail


@miniagent
async def bench_agent(ctx: InteractionContext, base_url: str, model: str, exchanges: int) -> None:
    """The benchmark's agent: *exchanges* model turns over a growing history, replying the last answer."""
    from miniagents.llms import openai_agent

    history: list[Message] = list(await ctx.messages)
    for turn in range(exchanges):
        if turn:
            history.append(TextMessage(content=FOLLOW_UP))
        history.extend(await openai_agent.inquire(history, model=model, base_url=base_url, api_key=API_KEY))
    ctx.reply(history[-1])


# -- workers (each runs in a subprocess) -------------------------------------------------------------------------
def _timed(
    run_calls: Callable[[int, int], Awaitable[None]],
    backend: str,
    warmup: int,
    calls: int,
    context: Callable[[], AbstractAsyncContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, float]:
    """Run *warmup* calls, then time *calls* more, all inside one *context* (whose exit is not timed)."""
    import anyio

    async def measure() -> tuple[float, float]:
        async with context():
            await run_calls(0, warmup)
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            await run_calls(warmup, calls)
            return time.perf_counter() - wall, time.process_time() - cpu

    wall, cpu = anyio.run(measure, backend=backend)
    return {"wall_us": wall / calls * 1e6, "cpu_us": cpu / calls * 1e6}


def _check(text: str, tokens: int) -> None:
    if text != TOKEN * tokens:
        raise AssertionError(f"unexpected reply: {text[:80]!r}... ({len(text)} characters)")


def _worker_inprocess(args: argparse.Namespace) -> dict[str, Any]:
    from miniagents import MiniAgents

    options = {"base_url": args.base_url, "model": f"bench-{args.tokens}", "exchanges": args.exchanges}

    async def run_calls(start: int, count: int) -> None:
        for index in range(start, start + count):
            reply = await bench_agent.inquire(
                TextMessage(content=input_text(args.input_chars, index)), **options
            )
            _check("".join(str(message) for message in reply), args.tokens)

    return _timed(run_calls, args.backend, args.warmup, args.calls, MiniAgents)


def _worker_durable(args: argparse.Namespace) -> dict[str, Any]:
    # Coded against the API of issue #14: durable(agent, queue=None); await run(agent, input, run_id=...).
    # The system database is given as DBOS's own setting (see the comment at `configure`).
    from miniagents import durable as durable_package

    agent = durable_package.durable(bench_agent)
    options = {"base_url": args.base_url, "model": f"bench-{args.tokens}", "exchanges": args.exchanges}
    database = f"sqlite:///{args.db}"
    configure = getattr(durable_package, "configure", None)
    if configure is not None:
        configure(database=database)
    os.environ.setdefault("MINIAGENTS_DURABLE_DB", database)

    async def run_calls(start: int, count: int) -> None:
        for index in range(start, start + count):
            message = TextMessage(content=input_text(args.input_chars, index))
            replies = await durable_package.run(
                agent.fork(**options) if hasattr(agent, "fork") else agent, message, run_id=f"bench-{index}"
            )
            _check("".join(str(reply) for reply in replies), args.tokens)

    return _timed(run_calls, args.backend, args.warmup, args.calls)


def _worker_raw(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from dbos import DBOS

    if args.backend != "asyncio":
        raise SystemExit("the raw DBOS variant runs on asyncio only")
    url = f"{args.base_url}/chat/completions"
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    kept = ("content-type", "content-encoding", "x-request-id", "request-id")
    client: list[httpx.AsyncClient] = []  # made on the event loop that uses it

    @DBOS.step()
    async def llm_exchange(body: bytes) -> dict[str, Any]:
        async with client[0].stream("POST", url, content=body, headers=headers) as response:
            raw = await response.aread()
        response.raise_for_status()
        return {
            "status": response.status_code,
            "headers": [(name, response.headers[name]) for name in kept if name in response.headers],
            "body": raw,
        }

    @DBOS.workflow()
    async def raw_call(message: dict[str, Any], model: str, exchanges: int) -> dict[str, Any]:
        history: list[dict[str, str]] = [{"role": "user", "content": message["content"]}]
        for turn in range(exchanges):
            if turn:
                history.append({"role": "user", "content": FOLLOW_UP})
            request = {
                "model": model,
                "messages": history,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            recorded = await llm_exchange(json.dumps(request, ensure_ascii=False).encode("utf-8"))
            history.append({"role": "assistant", "content": _sse_text(recorded["body"])})
        return {"class_": "TextMessage", **history[-1]}

    DBOS(
        config={
            "name": "bench-durable-raw",
            "system_database_url": f"sqlite:///{args.db}",
            "log_level": "WARNING",
        }
    )
    DBOS.launch()

    async def run_calls(start: int, count: int) -> None:
        if not client:
            client.append(httpx.AsyncClient(timeout=60.0))
        for index in range(start, start + count):
            message = {"class_": "TextMessage", "content": input_text(args.input_chars, index)}
            reply = await raw_call(message, f"bench-{args.tokens}", args.exchanges)
            _check(reply["content"], args.tokens)

    try:
        return _timed(run_calls, "asyncio", args.warmup, args.calls)
    finally:
        DBOS.destroy()


def _sse_text(body: bytes) -> str:
    """The answer text of a Chat Completions SSE body."""
    parts: list[str] = []
    for line in body.decode("utf-8").splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        for choice in json.loads(line[6:]).get("choices") or ():
            parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


WORKERS = {"inprocess": _worker_inprocess, "durable": _worker_durable, "raw": _worker_raw}


# -- orchestration ----------------------------------------------------------------------------------------------
# w6_server.py with TCP_NODELAY on its connections: it writes the headers and the body separately, and with
# Nagle's algorithm the body of a short response waits for the client's delayed ACK (~40 ms on Linux), which
# would swamp the per-call cost measured here (W6 streams one long response, where it does not matter).
_SERVE = "import w6_server; w6_server.Handler.disable_nagle_algorithm = True; w6_server.main()"


class StreamServer:
    """``w6_server.py`` in its own process for the whole run (it exits when its stdin closes)."""

    def __init__(self, tokens: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(tokens)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise RuntimeError(f"the stream server did not start (exit {self.proc.returncode})")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _run_worker(
    variant: str, backend: str, args: argparse.Namespace, base_url: str, db: Path
) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", variant, "--backend", backend, "--base-url", base_url]
    command += ["--db", str(db), "--calls", str(args.calls), "--warmup", str(args.warmup)]
    command += [
        "--exchanges",
        str(args.exchanges),
        "--tokens",
        str(args.tokens),
        "--input-chars",
        str(args.input_chars),
    ]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if variant == "durable" and args.durable_path:
        env["PYTHONPATH"] = os.pathsep.join([str(args.durable_path), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{variant} on {backend} failed:\n{result.stderr[-4000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith(RESULT))
    data: dict[str, float] = json.loads(line[len(RESULT) :])
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300, help="timed sequential calls per worker")
    parser.add_argument("--warmup", type=int, default=20, help="calls per worker before the timed ones")
    parser.add_argument("--reps", type=int, default=3, help="workers per variant and backend (interleaved)")
    parser.add_argument("--exchanges", type=int, default=1, help="model requests per call (one step each)")
    parser.add_argument("--tokens", type=int, default=50, help="tokens streamed per model answer")
    parser.add_argument("--input-chars", type=int, default=2000, help="characters of the input message")
    parser.add_argument("--backends", nargs="+", default=["trio", "asyncio"], choices=["trio", "asyncio"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--durable-path", type=Path, help="put first on PYTHONPATH for the durable variant")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 calls, 5 warm-up, 1 rep")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](args)
        import miniagents

        result["package"] = miniagents.__file__
        print(RESULT + json.dumps(result))
        return 0
    if args.quick:
        args.calls, args.warmup, args.reps = 40, 5, 1

    jobs = [(v, b) for b in args.backends for v in args.variants if v != "raw"]
    if "raw" in args.variants:
        jobs.append(("raw", "asyncio"))
    samples: dict[tuple[str, str], list[dict[str, float]]] = {job: [] for job in jobs}
    server = StreamServer(args.tokens)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-durable-") as tmp:
            for rep in range(args.reps):
                for variant, backend in jobs if rep % 2 == 0 else list(reversed(jobs)):
                    db = Path(tmp) / f"{variant}-{backend}-{rep}.sqlite"
                    samples[variant, backend].append(_run_worker(variant, backend, args, server.url, db))
    finally:
        server.close()

    median = {
        job: {metric: statistics.median(s[metric] for s in runs) for metric in ("wall_us", "cpu_us")}
        for job, runs in samples.items()
    }
    print(
        f"per-call cost, µs (median of {args.reps} interleaved workers x {args.calls} sequential calls after"
        f" {args.warmup} warm-up); a call = {args.input_chars}-character input, {args.exchanges} model"
        f" exchange(s) of {args.tokens} streamed tokens (w6_server.py, another process); SQLite system database"
    )
    print(f"{'variant':<11}{'backend':<9}{'wall µs':>10}{'cpu µs':>10}")
    for (variant, backend), values in median.items():
        print(f"{variant:<11}{backend:<9}{values['wall_us']:>10.0f}{values['cpu_us']:>10.0f}")
    raw = median.get(("raw", "asyncio"))
    for backend in args.backends:
        durable_cost = median.get(("durable", backend))
        if durable_cost is None:
            continue
        if raw:
            print(
                f"durable/raw ({backend} vs raw DBOS on asyncio): wall {durable_cost['wall_us'] / raw['wall_us']:.2f}x"
                f"  cpu {durable_cost['cpu_us'] / raw['cpu_us']:.2f}x  (target <= 1.5x)"
            )
        inprocess = median.get(("inprocess", backend))
        if inprocess:
            print(
                f"durable/inprocess ({backend}): wall {durable_cost['wall_us'] / inprocess['wall_us']:.1f}x"
                f"  cpu {durable_cost['cpu_us'] / inprocess['cpu_us']:.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
