"""The connection to an MCP server, held open by a service task of the ``MiniAgents`` context, and its tools."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx2
import mcp
import mcp.types as mcp_types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError as SDKError
from mcp_types.jsonrpc import CONNECTION_CLOSED, REQUEST_TIMEOUT

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from miniagents import MiniAgents
from miniagents.llms import Tool
from miniagents.mcp._exceptions import (
    MCPConnectionError,
    MCPError,
    MCPRequestError,
    MCPTimeoutError,
    MCPToolError,
)
from miniagents.mcp._servers import HttpServer, MCPServerSpec, StdioServer

__all__ = ["mcp_tools", "result_text"]

logger = logging.getLogger("miniagents.mcp")

#: The HTTP timeouts of an :class:`HttpServer` with headers: those the SDK uses for its own client.
_HTTP_TIMEOUT = httpx2.Timeout(30.0, read=300.0)
_CLIENT_INFO = mcp_types.Implementation(name="miniagents", version="0.1")


def _describe(error: BaseException) -> str:
    """``Type: text`` of an error, of each leaf of an exception group."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in error.exceptions)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class _Connection:
    """One MCP session of one server in one ``MiniAgents`` context (a shared resource of the context).

    The session (an async context manager that owns a task group) is entered and left by a service task of
    the context (:meth:`MiniAgents.start_service`), started by the first request; requests are sent from the
    callers' own tasks, so cancelling a caller cancels its request (the SDK then sends
    ``notifications/cancelled`` to the server).  The service leaves the session when the context exits, after
    every call finished, or at once when the context is cancelled.
    """

    def __init__(self, context: MiniAgents, server: MCPServerSpec) -> None:
        self.context = context
        self.server = server
        self.label = server.label
        self._started = False
        self._ready = anyio.Event()
        self._client: mcp.Client | None = None
        self._failure: str | None = None
        self._http_status: str | None = None

    async def client(self, tool: str | None = None) -> mcp.Client:
        """The connected client, connecting on first use.

        Raises:
            MCPConnectionError: the server could not be started or reached, or the session ended.

        """
        if not self._started:
            self.context.start_service(self._serve)  # raises when the context is exiting: not started
            self._started = True
        await self._ready.wait()
        client = self._client
        if client is None:
            raise MCPConnectionError(
                f"MCP server {self.label!r}: {self._failure or 'the session is closed'}",
                server=self.label,
                tool=tool,
            )
        return client

    def _transport(self, stack: AsyncExitStack) -> Any:
        server = self.server
        if isinstance(server, StdioServer):
            params = mcp.StdioServerParameters(
                command=server.command,
                args=list(server.args),
                env=None if server.env is None else dict(server.env),
                cwd=server.cwd,
            )
            return stdio_client(params, errlog=sys.stderr)

        async def remember_status(response: httpx2.Response) -> None:
            if response.status_code >= 400:  # the SDK reports these as a stand-in JSON-RPC error
                self._http_status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()

        http_client = httpx2.AsyncClient(
            headers=dict(server.headers or {}),
            timeout=_HTTP_TIMEOUT,
            event_hooks={"response": [remember_status]},
        )
        stack.push_async_callback(http_client.aclose)
        return streamable_http_client(server.url, http_client=http_client)

    def _status_note(self) -> str:
        """`` (HTTP 401 Unauthorized)`` after an HTTP error status from the server (never its URL), else ``""``."""
        status, self._http_status = self._http_status, None
        if status is None:
            return ""
        hint = "; check the server's headers (credentials)" if status.split()[1] in ("401", "403") else ""
        return f" ({status}{hint})"

    async def _serve(self, stop: anyio.Event) -> None:
        connected = False
        try:
            async with anyio.create_task_group() as watch:
                # The context may exit while the server is still starting (nobody waits for it any more):
                # then the connection attempt is given up, instead of holding the context's exit.
                watch.start_soon(self._give_up_when, stop, watch.cancel_scope)
                async with AsyncExitStack() as stack:
                    client = mcp.Client(
                        self._transport(stack),
                        read_timeout_seconds=self.server.read_timeout,
                        client_info=_CLIENT_INFO,
                    )
                    await stack.enter_async_context(client)
                    connected = True
                    self._client = client
                    self._ready.set()
                    logger.debug("MCP server %r: connected", self.label)
                    await stop.wait()
                watch.cancel_scope.cancel()
            if not connected:
                self._failure = "the MiniAgents context exited before the connection was made"
        except Exception as error:
            if connected:
                self._failure = f"the connection was lost ({_describe(error)}){self._status_note()}"
                logger.warning("MCP server %r: %s", self.label, self._failure)
            else:
                self._failure = f"could not connect ({_describe(error)}){self._status_note()}"
        finally:
            self._client = None
            if self._failure is None:
                self._failure = "the session is closed (its MiniAgents context exited)"
            self._ready.set()

    async def _give_up_when(self, stop: anyio.Event, scope: anyio.CancelScope) -> None:
        await stop.wait()
        if self._client is None:
            scope.cancel()

    def error(self, error: SDKError, tool: str | None) -> MCPError:
        """The error of this package for an error the SDK raised for a request."""
        code = error.error.code
        what = f"the call of tool {tool!r}" if tool else "the request"
        if code == CONNECTION_CLOSED:
            return MCPConnectionError(
                f"MCP server {self.label!r}: the connection closed during {what} (did the server exit?)",
                server=self.label,
                tool=tool,
                code=str(code),
            )
        if code == REQUEST_TIMEOUT:
            return MCPTimeoutError(
                f"MCP server {self.label!r}: no answer to {what} within {self.server.read_timeout} s",
                server=self.label,
                tool=tool,
                code=str(code),
            )
        return MCPRequestError(
            f"MCP server {self.label!r} rejected {what}: {error.error.message}{self._status_note()}",
            server=self.label,
            tool=tool,
            code=str(code),
        )

    async def list_tools(self) -> list[mcp_types.Tool]:
        client = await self.client()
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        try:
            while True:
                page = await client.list_tools(cursor=cursor)
                listed.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    return listed
        except SDKError as error:
            raise self.error(error, None) from None

    async def call_tool(self, tool: str, arguments: dict[str, Any]) -> str:
        client = await self.client(tool)
        try:
            result = await client.call_tool(tool, arguments)
        except SDKError as error:
            raise self.error(error, tool) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as error:
            raise MCPConnectionError(
                f"MCP server {self.label!r}: the connection closed during the call of tool {tool!r} "
                f"({_describe(error)})",
                server=self.label,
                tool=tool,
            ) from None
        except RuntimeError as error:  # the SDK's check of a result against the tool's output schema
            raise MCPToolError(
                f"MCP tool {tool!r} of server {self.label!r} returned a result its own output schema "
                f"rejects ({_describe(error)})",
                server=self.label,
                tool=tool,
            ) from None
        text = result_text(result)
        if result.is_error:
            raise MCPToolError(
                f"MCP tool {tool!r} of server {self.label!r} failed: {text or '(no text)'}",
                server=self.label,
                tool=tool,
            )
        return text


def _connection(server: MCPServerSpec) -> _Connection:
    context = MiniAgents.current()
    connection: _Connection = context.shared_resource(
        ("miniagents.mcp", server), lambda: _Connection(context, server)
    )
    return connection


def _block_text(block: Any) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            return resource.text
        return f"[resource {resource.uri} ({resource.mime_type or 'binary'})]"
    if isinstance(block, mcp_types.ResourceLink):
        return f"[resource link {block.uri}]"
    mime = getattr(block, "mime_type", None)
    return f"[{getattr(block, 'type', 'content')}{f' ({mime})' if mime else ''}]"


def result_text(result: mcp_types.CallToolResult) -> str:
    """The text an LLM gets for an MCP tool result.

    The structured content as JSON when the result has some (by the MCP specification its text content is
    the same value serialised); otherwise the text blocks joined by blank lines, an embedded text resource by
    its text, and other blocks (images, audio, binary resources, resource links) as a short ``[...]`` note.
    """
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n\n".join(_block_text(block) for block in result.content)


async def mcp_tools(
    server: MCPServerSpec, *, names: Iterable[str] | None = None, prefix: str = ""
) -> tuple[Tool, ...]:
    """List the tools of an MCP server, as tools for ``tools=[...]`` of the LLM agents.

    The server's name, description and input JSON schema of each tool are passed to the model as they are
    (a name is sanitised to ``[a-zA-Z0-9_-]{1,64}`` as every tool name is; the call uses the server's own
    name).  A call sends the model's arguments to the server (which validates them); its result is
    :func:`result_text`.  The model gets any failure back as an error tool result, as with other tools:
    :class:`MCPToolError` for a result with ``isError``, :class:`MCPRequestError` for a JSON-RPC error,
    :class:`MCPConnectionError` (naming the server and the tool) when the server went away, and
    :class:`MCPTimeoutError`.  Cancelling the call cancels the request at the server.

    The session belongs to the current ``MiniAgents`` context: opened by the first call for an equal *server*
    (one per context), closed when the context exits (after its calls finished) and cancelled with it.  A
    server that went away is not started again in that context: its later calls raise
    :class:`MCPConnectionError` at once.  The tools may be used in later contexts too (each opens its own
    session).

    Args:
        server: a :class:`StdioServer` or :class:`HttpServer`.
        names: keep only the tools with these (server) names.
        prefix: put this before every tool name the model sees (to tell servers with equal names apart).

    Raises:
        NoActiveContextError: no ``MiniAgents`` context is active.
        MCPConnectionError: the server could not be started or reached.
        MCPRequestError: the server refused to list its tools.
        ValueError: a name of *names* is not among the server's tools.

    """
    if not isinstance(server, (StdioServer, HttpServer)):
        raise TypeError(f"mcp_tools() takes a StdioServer or an HttpServer, got {server!r}")
    connection = _connection(server)
    listed = await connection.list_tools()
    if names is not None:
        wanted = list(names)
        known = {t.name for t in listed}
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ValueError(
                f"MCP server {connection.label!r} has no tool {', '.join(map(repr, missing))} "
                f"(its tools: {', '.join(sorted(known)) or 'none'})"
            )
        listed = [t for t in listed if t.name in wanted]
    return tuple(_tool(server, item, prefix) for item in listed)


def _tool(server: MCPServerSpec, listed: mcp_types.Tool, prefix: str) -> Tool:
    remote_name = listed.name

    async def handler(arguments: dict[str, Any]) -> str:
        # Looked up per call: the tool may be used in a later MiniAgents context than the one that listed it.
        return await _connection(server).call_tool(remote_name, arguments)

    schema = dict(listed.input_schema) if listed.input_schema else {"type": "object", "properties": {}}
    return Tool(
        name=f"{prefix}{remote_name}",
        description=listed.description or listed.title or "",
        parameters=schema,
        handler=handler,
    )
