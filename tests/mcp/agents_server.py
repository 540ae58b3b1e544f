"""MiniAgents agents served as MCP tools, for the tests.

``python agents_server.py BACKEND`` serves them over stdio (``serve_mcp``), ``python agents_server.py BACKEND http
PORT`` over streamable HTTP on 127.0.0.1 (``mcp_server(...).streamable_http_app()``).
"""

from __future__ import annotations

import sys

import anyio

from miniagents import InteractionContext, MiniAgents, TextMessage, miniagent
from miniagents.mcp import mcp_server, serve_mcp


@miniagent
async def adder(ctx: InteractionContext, a: int, b: int = 0) -> None:
    """Add two numbers."""
    ctx.reply(f"{a} + {b} = {a + b}")


@miniagent(description="Repeats each input message in upper case.")
async def loud(ctx: InteractionContext) -> None:
    async for message in ctx.messages:
        ctx.reply(str(message).upper())


async def _words(text: str):  # type: ignore[no-untyped-def]
    for word in text.split():
        await anyio.sleep(0)
        yield word + " "


@miniagent
async def writer(ctx: InteractionContext, topic: str) -> None:
    """Write a note, streamed word by word."""
    ctx.reply(TextMessage.stream(_words(f"a short note about {topic}")))


@miniagent
async def broken(ctx: InteractionContext) -> None:
    """Always fails."""
    raise RuntimeError("the agent broke")


async def wait_forever(marker: str) -> str:
    """Write 'started' to the file `marker`, wait forever, and write 'cancelled' there when cancelled."""
    path = anyio.Path(marker)
    await path.write_text("started")
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await path.write_text("cancelled")
    return "never"


TOOLS = [adder, loud, writer, broken, wait_forever]


async def serve_http(backend: str, port: int) -> None:
    """Serve the tools over streamable HTTP: uvicorn under asyncio, hypercorn's trio worker under trio."""
    async with MiniAgents() as context:
        app = mcp_server(TOOLS, context=context).streamable_http_app()
        if backend == "trio":
            from hypercorn.config import Config
            from hypercorn.trio import serve

            config = Config()
            config.bind = [f"127.0.0.1:{port}"]
            await serve(app, config)  # type: ignore[arg-type]
        else:
            import uvicorn

            await uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
            ).serve()


if __name__ == "__main__":
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    if sys.argv[2:3] == ["http"]:
        anyio.run(serve_http, backend, int(sys.argv[3]), backend=backend)
    else:
        anyio.run(serve_mcp, TOOLS, backend=backend)
