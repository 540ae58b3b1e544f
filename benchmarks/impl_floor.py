"""The "floor": workloads W1-W5 written directly with anyio tasks and memory object streams.

No framework, no message classes: payloads are plain ``str``.  It has the same *shape* as an agent runtime
(one task per call, an input stream and a reply stream per call, streamed messages as streams of tokens) and
uses the primitives the way a careful anyio programmer would:

* unbounded memory object streams (replies are never back-pressured in the runtime either), written with
  ``send_nowait``;
* receivers drain what is already buffered with ``receive_nowait`` and only ``await receive()`` when the
  buffer is empty (``async for item in stream`` would add a scheduler checkpoint per item; that variant is
  available as implementation ``floor-naive`` for reference).

So this is an estimate of what the runtime could cost at best with the same primitives.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from typing import Any

import _harness
import anyio
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

TOKEN = "tok "
YIELD_EVERY = 1024  # the producer of W4 yields to the scheduler every this many tokens (same in every impl)
NAIVE = os.environ.get("BENCH_FLOOR_NAIVE") == "1"


def channel() -> tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]]:
    return anyio.create_memory_object_stream[Any](math.inf)


class _Drain:
    """Async iterator over a receive stream that only awaits when nothing is buffered."""

    __slots__ = ("_recv",)

    def __init__(self, recv: MemoryObjectReceiveStream[Any]) -> None:
        self._recv = recv

    def __aiter__(self) -> _Drain:
        return self

    async def __anext__(self) -> Any:
        try:
            return self._recv.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        try:
            return await self._recv.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


def items(recv: MemoryObjectReceiveStream[Any]) -> AsyncIterator[Any] | ObjectReceiveStream[Any]:
    return recv if NAIVE else _Drain(recv)


# --- "agents" -------------------------------------------------------------------------------------------


async def echo(inp: MemoryObjectReceiveStream[Any], out: MemoryObjectSendStream[Any]) -> None:
    with inp, out:
        async for msg in items(inp):
            out.send_nowait(msg)


forward = echo


async def produce_messages(n: int, out: MemoryObjectSendStream[Any]) -> None:
    with out:
        for i in range(n):
            out.send_nowait(f"m{i}")


async def produce_tokens(n: int, out: MemoryObjectSendStream[Any]) -> None:
    # One streamed "message": a token stream whose receiving end is sent as the message.
    tok_send, tok_recv = channel()
    with out, tok_send:
        out.send_nowait(tok_recv)
        for i in range(n):
            tok_send.send_nowait(TOKEN)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await anyio.lowlevel.checkpoint()


async def forward_tokens(inp: MemoryObjectReceiveStream[Any], out: MemoryObjectSendStream[Any]) -> None:
    # Re-stream every incoming streamed message token by token into a new token stream.
    async with anyio.create_task_group() as tg:
        with inp, out:
            async for tokens in items(inp):
                new_send, new_recv = channel()
                out.send_nowait(new_recv)
                tg.start_soon(_pump, tokens, new_send)


async def _pump(src: MemoryObjectReceiveStream[Any], dst: MemoryObjectSendStream[Any]) -> None:
    with src, dst:
        async for token in items(src):
            dst.send_nowait(token)


def call(tg: anyio.abc.TaskGroup, agent: Any, *args: Any) -> tuple[Any, Any]:
    """Start one "agent call": a task with its own input and reply streams."""
    in_send, in_recv = channel()
    out_send, out_recv = channel()
    tg.start_soon(agent, *args, in_recv, out_send)
    return in_send, out_recv


def call_with_upstream(
    tg: anyio.abc.TaskGroup, agent: Any, upstream: MemoryObjectReceiveStream[Any]
) -> MemoryObjectReceiveStream[Any]:
    """Start a call whose input is the reply stream of another call (a pipeline stage)."""
    out_send, out_recv = channel()
    tg.start_soon(agent, upstream, out_send)
    return out_recv


# --- workloads ------------------------------------------------------------------------------------------


async def w1(n: int, sw: _harness.Stopwatch) -> int:
    sw.start()
    count = 0
    async with anyio.create_task_group() as tg:
        for i in range(n):
            in_send, out_recv = call(tg, echo)
            with in_send:
                in_send.send_nowait(f"m{i}")
            with out_recv:
                async for _msg in items(out_recv):
                    count += 1
    sw.stop()
    return count


async def w2(n: int, sw: _harness.Stopwatch) -> int:
    msgs = [f"m{i}" for i in range(n)]
    sw.start()
    count = 0
    async with anyio.create_task_group() as tg:
        src_send, src_recv = channel()
        with src_send:
            for m in msgs:
                src_send.send_nowait(m)
        seq = src_recv
        for _ in range(5):
            seq = call_with_upstream(tg, forward, seq)
        with seq:
            async for _msg in items(seq):
                count += 1
    sw.stop()
    return count


async def w3(n: int, sw: _harness.Stopwatch) -> int:
    sw.start()
    count = 0
    async with anyio.create_task_group() as tg:
        pending = []
        for i in range(n):
            in_send, out_recv = call(tg, echo)
            with in_send:
                in_send.send_nowait(f"m{i}")
            pending.append(out_recv)
        for out_recv in pending:
            with out_recv:
                async for _msg in items(out_recv):
                    count += 1
    sw.stop()
    return count


async def w4(n: int, sw: _harness.Stopwatch) -> int:
    # Pass-through forwarding: each forwarder re-sends the streamed message (its token stream) as soon as it
    # starts; the consumer reads every token live.
    sw.start()
    count = 0
    async with anyio.create_task_group() as tg:
        out_send, seq = channel()
        tg.start_soon(produce_tokens, n, out_send)
        for _ in range(5):
            seq = call_with_upstream(tg, forward, seq)
        with seq:
            async for tokens in items(seq):
                with tokens:
                    async for _token in items(tokens):
                        count += 1
    sw.stop()
    return count


async def w4r(n: int, sw: _harness.Stopwatch) -> int:
    # Re-streaming forwarding: each forwarder reads every token and writes it into its own streamed message.
    sw.start()
    count = 0
    async with anyio.create_task_group() as tg:
        out_send, seq = channel()
        tg.start_soon(produce_tokens, n, out_send)
        for _ in range(5):
            seq = call_with_upstream(tg, forward_tokens, seq)
        with seq:
            async for tokens in items(seq):
                with tokens:
                    async for _token in items(tokens):
                        count += 1
    sw.stop()
    return count


async def w5(n: int, sw: _harness.Stopwatch, consumers: int) -> int:
    counts = [0] * consumers
    async with anyio.create_task_group() as tg:
        # Production (not timed): one call produces n messages; its replies are recorded for late consumers.
        out_send, out_recv = channel()
        tg.start_soon(produce_messages, n, out_send)
        log = []
        with out_recv:
            async for msg in items(out_recv):
                log.append(msg)

    async def consume(k: int) -> None:
        # A late consumer: gets its own stream replaying the recorded log, and drains it.
        send, recv = channel()
        with send:
            for msg in log:
                send.send_nowait(msg)
        c = 0
        with recv:
            async for _msg in items(recv):
                c += 1
        counts[k] = c

    sw.start()
    async with anyio.create_task_group() as tg:
        for k in range(consumers):
            tg.start_soon(consume, k)
    sw.stop()
    return sum(counts)


WORKLOADS = {"w1": w1, "w2": w2, "w3": w3, "w4": w4, "w4r": w4r, "w5": w5}


def run_loop(fn, backend):  # type: ignore[no-untyped-def]
    return anyio.run(fn, backend=backend)


def describe() -> dict[str, str]:
    return {"anyio_version": anyio.__version__ if hasattr(anyio, "__version__") else ""}


if __name__ == "__main__":
    _harness.main("floor-naive" if NAIVE else "floor", WORKLOADS, run_loop, describe)
