"""The embedded default model: a real OpenAI-compatible server on 127.0.0.1, no API key needed.

Nobody should need an API key to see MiniAgents work.  This module runs the PyPI-packaged Gemma 3 270M model
(the *base* model: its text is not coherent, but it streams real tokens and, with the
``chatml-function-calling`` chat format and a forced ``tool_choice``, emits real tool calls) behind
llama.cpp's OpenAI-compatible server and gives you an agent that talks to it.

On first use the model and the server are built and cached (minutes, once per machine; see
:mod:`miniagents.llms._local_server` and ``.ci/prepare-local-llm``); afterwards a server starts in about a
second on a free port.

Two ways to use it:

* :data:`local_agent` — a miniagent to use like :data:`~miniagents.llms.openai_agent`.  Its first call in a
  ``MiniAgents`` context starts the server (one per chat format, shared by every call in the context) and
  the server is stopped when the context exits::

      async with MiniAgents():
          async for promise in local_agent.inquire("Hello!", max_tokens=32).promises():
              async for token in promise:  # each model turn is one message, streamed token by token
                  print(token, end="")

* :func:`open_local_agent` — an async context manager that starts a server for the duration of the block
  and yields an ``openai_agent.fork(...)`` configured for it (the server's lifetime is then explicit)::

      async with open_local_agent(max_tokens=32) as llm, MiniAgents():
          print(await llm.inquire("Hello!").as_single_text())
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from miniagents import InteractionContext, MiniAgent, MiniAgents
from miniagents.llms._agents import openai_agent
from miniagents.llms._common import OPTION_NAMES, check_options, unknown_names_message
from miniagents.llms._http import DEFAULT_TIMEOUT
from miniagents.llms._local_server import DEFAULT_MODEL_ALIAS, LocalLLMServer, ServerKind

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "LOCAL_MODEL",
    "TOOL_CHAT_FORMAT",
    "local_agent",
    "local_server",
    "open_local_agent",
]

LOCAL_MODEL = DEFAULT_MODEL_ALIAS
"""The model name the local server answers to."""

DEFAULT_MAX_TOKENS = 64
"""The completion limit used when none is given (the model makes ~35 tokens/s on 2 CPU cores)."""

TOOL_CHAT_FORMAT = "chatml-function-calling"
"""The llama-cpp-python chat format that understands ``tools`` (use it with a forced ``tool_choice``)."""

_HTTP_CLIENT_KEY = "miniagents.llms.local.httpx.AsyncClient"

# Options that only make sense for a remote provider; the local agent sets them itself.
_MANAGED_OPTIONS = frozenset({"model", "base_url", "api_key"})
# What local_agent accepts: its own parameters and the options of openai_agent that it does not set itself.
_LOCAL_AGENT_PARAMETERS = frozenset({"chat_format", "kind"})
_LOCAL_AGENT_NAMES = (OPTION_NAMES - _MANAGED_OPTIONS) | _LOCAL_AGENT_PARAMETERS


class _SharedServer:
    """One lazily started server, kept as a shared resource of a ``MiniAgents`` context."""

    def __init__(self, kind: ServerKind, chat_format: str) -> None:
        self.server = LocalLLMServer(kind, chat_format=chat_format)
        self.lock = anyio.Lock()
        self.running = False

    async def get(self) -> LocalLLMServer:
        async with self.lock:  # concurrent first calls start one server, the others wait for it
            if not self.running:
                await self.server.__aenter__()
                self.running = True
        return self.server

    async def aclose(self) -> None:
        if self.running:
            self.running = False
            await self.server.__aexit__(None, None, None)


async def local_server(chat_format: str = "gemma", kind: ServerKind | None = None) -> LocalLLMServer:
    """Return the current ``MiniAgents`` context's local server for *chat_format*, starting it if needed.

    The first call builds what is missing (cached under ``~/.cache/miniagents/local-llm``), starts the
    server on a free 127.0.0.1 port and waits until it answers; later calls in the same context get the same
    running server.  The server is stopped when the context exits (also on error or cancellation).

    Args:
        chat_format: ``"gemma"`` for chat, :data:`TOOL_CHAT_FORMAT` for tool calls.
        kind: the server program; by default llama.cpp's ``"llama-server"`` for ``"gemma"`` (it decodes
            several requests in parallel) and ``"llama-cpp-python"`` for any other format (llama-cpp-python's
            ``--chat_format``, the one that can emit tool calls).

    Raises:
        NoActiveContextError: no ``MiniAgents`` context is active.
        LocalLLMError: building or starting the server failed (the message has the tail of its log).

    """
    server_kind = kind or _default_kind(chat_format)
    shared = MiniAgents.current().shared_resource(
        ("miniagents.llms.local", server_kind, chat_format),
        lambda: _SharedServer(server_kind, chat_format),
        aclose=_SharedServer.aclose,
    )
    return await shared.get()


def _new_http_client() -> httpx.AsyncClient:
    # trust_env=False: a proxy configured in the environment must not see requests to 127.0.0.1
    return httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, trust_env=False)


async def _close_http_client(client: httpx.AsyncClient) -> None:
    await client.aclose()


def _default_kind(chat_format: str) -> ServerKind:
    return "llama-server" if chat_format == "gemma" else "llama-cpp-python"


def _check_managed(agent: str, options: Mapping[str, Any]) -> None:
    unexpected = sorted(_MANAGED_OPTIONS.intersection(options))
    if unexpected:
        them = "them" if len(unexpected) > 1 else "it"
        raise TypeError(f"agent {agent!r} sets {', '.join(unexpected)} itself; do not pass {them}")


def _check_local_agent_options(agent: str, options: Mapping[str, Any]) -> None:
    """The ``kwargs_validator`` of :data:`local_agent`: the checks of ``openai_agent``'s, at fork/call time."""
    _check_managed(agent, options)
    unknown = sorted(set(options) - _LOCAL_AGENT_NAMES)
    if unknown:
        raise TypeError(unknown_names_message(agent, unknown, _LOCAL_AGENT_NAMES, "option"))
    check_options(agent, {k: v for k, v in options.items() if k not in _LOCAL_AGENT_PARAMETERS})


def _local_options(
    server: LocalLLMServer, options: dict[str, Any], http_client: httpx.AsyncClient | None = None
) -> dict[str, Any]:
    """Options for ``openai_agent`` talking to *server*: its URL and model, and a default token limit."""
    _check_managed("local_agent", options)
    max_tokens = options.pop("max_tokens", None) or DEFAULT_MAX_TOKENS
    # llama-cpp-python only knows OpenAI's older `max_tokens` field, not `max_completion_tokens`
    extra_body = {"max_tokens": max_tokens, **dict(options.pop("extra_body", None) or {})}
    return {
        **options,
        "model": server.model,
        "base_url": server.base_url,
        "api_key": "",  # the local server needs no key (and no key is sent)
        "max_tokens": max_tokens,
        "extra_body": extra_body,
        "http_client": options.get("http_client") or http_client,
    }


async def _local_agent(
    ctx: InteractionContext, chat_format: str = "gemma", kind: ServerKind | None = None, **options: Any
) -> None:
    """Chat with the embedded local model; takes the options of :data:`~miniagents.llms.openai_agent`.

    ``model``, ``base_url`` and ``api_key`` are set from the context's local server (see
    :func:`local_server`, which *chat_format* and *kind* select); ``max_tokens`` defaults to
    :data:`DEFAULT_MAX_TOKENS`.  Replies are those of ``openai_agent``: one streamed message per model turn.
    Options are checked like ``openai_agent``'s, at ``fork()`` / ``inquire()`` (an unknown one, or one of
    those three, raises ``TypeError`` there).
    """
    server = await local_server(chat_format, kind)
    client = MiniAgents.current().shared_resource(
        _HTTP_CLIENT_KEY, _new_http_client, aclose=_close_http_client
    )
    ctx.reply(openai_agent.inquire(ctx.messages, **_local_options(server, dict(options), client)))


#: The embedded local model as a miniagent (see the module description).
local_agent = MiniAgent(
    _local_agent,
    alias="local_agent",
    description="Answers with the embedded local model (Gemma 3 270M).",
    kwargs_validator=_check_local_agent_options,
)


@asynccontextmanager
async def open_local_agent(
    *, chat_format: str = "gemma", kind: ServerKind | None = None, **options: Any
) -> AsyncIterator[MiniAgent]:
    """Start a local server for the duration of the block; yield an ``openai_agent`` fork that uses it.

    *options* become default options of the fork (``system``, ``max_tokens``, ``tools``, ...; see
    :data:`~miniagents.llms.openai_agent`).  Unlike :data:`local_agent`, no ``MiniAgents`` context is needed
    to start the server; use the agent inside one.  The server is stopped when the block exits.
    """
    server_kind = kind or _default_kind(chat_format)
    async with LocalLLMServer(server_kind, chat_format=chat_format) as server, _new_http_client() as client:
        yield openai_agent.fork(alias="local_llm", **_local_options(server, dict(options), client))
