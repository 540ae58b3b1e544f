"""A web service answering questions with a panel of LLM agents, streamed as Server-Sent Events.

    GET /ask?q=...      the panel's answer as an event stream: `token`, `message`, then `done` or `error`
    GET /answer?q=...   the same answer as one JSON object, once it is complete
    GET /health         `ok` once the service is ready

One `MiniAgents` context serves the whole process: entered in the application's lifespan, with a SQLite store
for every message, and attached to every request by `MiniAgentsMiddleware`, so request handlers (which run in
tasks of their own) call agents directly.  Each answer lives as long as its request: when a client disconnects
mid-stream, `EventStreamResponse` cancels the panel's calls and their LLM streams are closed at once (no tokens
billed for nobody); what was complete by then is in the store.

The panel asks two experts at the same time and replies both answers in order (the second streams while the
first is being sent, and is sent as soon as the first ends).

Run it (asyncio with uvicorn, or trio with hypercorn's trio worker):

    python examples/web_service.py [--port 8000] [--db answers.db] [--backend asyncio|trio] [--provider ...]
    curl -N 'http://127.0.0.1:8000/ask?q=Why+structured+concurrency'
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from _providers import add_provider_arguments, llm_agent
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from miniagents import InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.asgi import EventStreamResponse, MiniAgentsMiddleware
from miniagents.persistence import SQLiteStore


def make_panel(args: argparse.Namespace) -> MiniAgent:
    """The agent graph: a panel agent that asks two LLM experts at once and replies their answers in order."""
    optimist = llm_agent(args, alias="optimist", system="You are an optimist. Answer in two sentences.")
    skeptic = llm_agent(args, alias="skeptic", system="You are a skeptic. Answer in two sentences.")

    @miniagent
    async def panel(ctx: InteractionContext, question: str) -> None:
        """Both experts start now; their answers stream back in this order."""
        ctx.reply(optimist.inquire(question))
        ctx.reply(skeptic.inquire(question))

    return panel


def make_app(args: argparse.Namespace) -> Starlette:
    """The Starlette application: one MiniAgents context for all requests, entered by the lifespan."""
    panel = make_panel(args)
    ma = MiniAgents(store=SQLiteStore(args.db))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with ma:  # exits after the last call ended and every message was committed
            yield

    def question(request: Request) -> str | None:
        text = request.query_params.get("q", "").strip()
        return text or None

    async def ask(request: Request) -> Response:
        q = question(request)
        if q is None:
            return PlainTextResponse("missing ?q=", status_code=400)
        return EventStreamResponse(panel.inquire(question=q))

    async def answer(request: Request) -> Response:
        q = question(request)
        if q is None:
            return PlainTextResponse("missing ?q=", status_code=400)
        async with panel.inquire(question=q) as replies:  # the calls end with this block, whatever happens
            messages = await replies
        return JSONResponse({"answers": [str(m) for m in messages]})

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/ask", ask), Route("/answer", answer), Route("/health", health)],
        lifespan=lifespan,
        middleware=[Middleware(MiniAgentsMiddleware, context=ma)],
    )


async def serve_with_uvicorn(app: Starlette, port: int) -> None:
    """asyncio: uvicorn, which handles SIGINT/SIGTERM itself (graceful shutdown, then the lifespan exits)."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()


async def serve_with_hypercorn(app: Starlette, port: int) -> None:
    """trio: hypercorn's trio worker, stopped gracefully by SIGINT/SIGTERM (then the lifespan exits)."""
    import signal

    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"

    async def until_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    await serve(app, config, shutdown_trigger=until_signal)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--db", type=Path, default=Path("answers.db"), help="the SQLite message store")
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="asyncio serves with uvicorn, trio with hypercorn's trio worker",
    )
    add_provider_arguments(parser)
    args = parser.parse_args()
    app = make_app(args)
    server = serve_with_uvicorn if args.backend == "asyncio" else serve_with_hypercorn
    print(f"serving on http://127.0.0.1:{args.port} ({args.backend}); store: {args.db}", file=sys.stderr)
    with contextlib.suppress(
        KeyboardInterrupt
    ):  # uvicorn re-raises the signal once it has shut down gracefully
        anyio.run(server, app, args.port, backend=args.backend)
    print("stopped: every call ended and every message is in the store", file=sys.stderr)


if __name__ == "__main__":
    main()
