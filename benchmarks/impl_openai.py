"""W6 on the official ``openai`` Python client (the reference for SSE parsing; it has no W1-W5).

Runs in its own virtualenv (``benchmarks/.cache/openai-venv``, created by ``run.py``) so the project's
dependencies stay untouched; it needs only ``openai`` and this directory's ``_harness.py``.  The client reads
the same pre-rendered stream from the same server (``benchmarks/w6_server.py``) as ours does.
"""

from __future__ import annotations

import os

import _harness
import anyio
import openai


async def w6(n: int, sw: _harness.Stopwatch) -> int:
    # The timed region includes creating and closing the client (ours: entering and leaving MiniAgents,
    # which creates and closes its pooled HTTP client) and the request.
    base_url = _harness.w6_base_url()
    sw.start()
    count = 0
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=f"bench-{n}",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    count += 1
    sw.stop()
    return count


WORKLOADS = {"w6": w6}


def run_loop(fn, backend):  # type: ignore[no-untyped-def]
    return anyio.run(fn, backend=backend)


def describe() -> dict[str, str]:
    return {"openai_version": openai.__version__, "openai_file": os.path.abspath(openai.__file__)}


if __name__ == "__main__":
    _harness.main("openai", WORKLOADS, run_loop, describe)
