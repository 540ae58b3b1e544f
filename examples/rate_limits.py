"""One model turn fans out to 200 tool calls, each one an LLM request, under 20 concurrent / 100 per minute.

A planner model (on a local fake provider server) answers the first turn with 200 tool calls of `summarize`; each
tool call asks a worker model, through `openai_agent`.  One `RateLimiter` on the `MiniAgents` context limits the
worker model to 20 concurrent requests and 100 requests per minute, for every call however deeply nested: the
tool calls are agent calls started by the planner's call, and nobody passes the limiter to them.

The fake server enforces the same limits the way a provider does and answers 429 (with `retry-after-ms`) to a
request over them; the run ends with the number of 429s it had to send, which is zero.  A progress bar shows the
tool calls as they finish.

Time: the limits are per minute of the limiter's clock.  `--time-scale 15` makes that clock (and the server's)
run 15 times faster, so the two windows the 200 requests need take about 5 s instead of 1-2 minutes; the server
allows `--grace` real seconds of network latency between the client's grant and the request's arrival.

Run it:  python examples/rate_limits.py [--calls 200] [--time-scale 1] [--no-progress]
(needs the `examples` extra for the progress bar: `pip install miniagents[examples]`)
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from miniagents import MiniAgents, RateLimit, RateLimiter
from miniagents.llms import openai_agent
from miniagents.testing.fake_llm_server import (
    FakeLLMServer,
    RecordedRequest,
    ScriptedResponse,
    ToolCall,
    openai_stream,
)
from miniagents.testing.limits import ProviderLimits, ScaledClock

PLANNER, WORKER = "fake-planner", "fake-worker"
LIMIT = RateLimit(requests_per_minute=100, max_concurrent=20)


def respond(request: RecordedRequest, calls: int) -> ScriptedResponse:
    """What the fake provider answers: the planner fans out, then concludes; the worker summarises."""
    body: Any = request.json
    if body["model"] == WORKER:
        document = body["messages"][-1]["content"].rsplit(" ", 1)[-1]
        return openai_stream(["Summary ", "of ", document], delay=0.005)
    if any(message["role"] == "tool" for message in body["messages"]):
        return openai_stream(f"All {calls} documents are summarised.")
    return openai_stream(
        tool_calls=[ToolCall("summarize", {"document": f"doc-{i:03}"}) for i in range(calls)]
    )


async def main(calls: int, time_scale: float, grace: float, show_progress: bool) -> int:
    clock = ScaledClock(time_scale)
    limiter = RateLimiter({("openai", WORKER): LIMIT}, clock=clock)
    console = Console(stderr=not show_progress)
    provider = ProviderLimits(
        lambda request: respond(request, calls),
        requests_per_minute=LIMIT.requests_per_minute,
        max_concurrent=LIMIT.max_concurrent,
        now=clock.now,
        grace=grace * time_scale,
        time_scale=time_scale,
        limited=lambda model: model == WORKER,
    )
    progress = Progress(
        TextColumn("tool calls"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
    )
    task = progress.add_task("summaries", total=calls)
    started = time.perf_counter()
    async with FakeLLMServer.serve() as server:
        server.handler = provider
        worker = openai_agent.fork(model=WORKER, base_url=server.openai_base_url, api_key="fake-key")

        async def summarize(document: str) -> str:
            """Summarise one document."""
            summary = str(await worker.inquire(f"Summarise {document}").as_single_text())
            progress.advance(task)
            return summary

        with progress:
            async with MiniAgents(rate_limiter=limiter):
                replies = await openai_agent.inquire(
                    f"Summarise the {calls} documents.",
                    model=PLANNER,
                    base_url=server.openai_base_url,
                    api_key="fake-key",
                    tools=[summarize],
                    max_tool_rounds=1,
                )
    elapsed = time.perf_counter() - started
    stats = limiter.statistics()[("openai", WORKER)]
    print(str(replies[-1]))
    print(f"worker requests granted by the limiter: {stats.granted}")
    print(
        f"accepted by the provider: {provider.accepted}; refused with 429: {provider.rejected} {provider.rejections}"
    )
    print(
        f"most concurrent requests the provider saw: {provider.max_seen_concurrent} (limit {LIMIT.max_concurrent}); "
        f"most in one window: {provider.max_seen_in_window} (limit {LIMIT.requests_per_minute} per minute)"
    )
    print(
        f"took {elapsed:.1f} s real = {elapsed * time_scale / 60:.2f} limiter minutes (time scale {time_scale:g})"
    )
    return 1 if provider.rejected else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=200, help="tool calls in the model turn (default 200)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="limiter minutes run this much faster")
    parser.add_argument("--grace", type=float, default=0.25, help="latency allowance of the fake server (s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    arguments = parser.parse_args()
    sys.exit(
        anyio.run(main, arguments.calls, arguments.time_scale, arguments.grace, not arguments.no_progress)
    )
