"""Tools from Model Context Protocol servers, for the LLM agents (the ``mcp`` extra: ``pip install 'miniagents[mcp]'``).

* :class:`StdioServer` / :class:`HttpServer` — the server to connect to: a subprocess spoken to over stdio, or
  a streamable-HTTP endpoint; immutable values, usable in agent kwargs.
* :func:`mcp_tools` — list a server's tools as :class:`~miniagents.llms.Tool` objects for ``tools=[...]``; the
  session lives in the current ``MiniAgents`` context.
* :func:`serve_mcp` / :func:`mcp_server` — the other way round: agents and async functions served as the tools
  of an MCP server (stdio), each call an agent call in one ``MiniAgents`` context.
* :class:`MCPError` and its subclasses — what a failed MCP request raises (see :mod:`miniagents.mcp._exceptions`).

The SDK speaks HTTP through ``httpx2``, not through the ``httpx`` client of the LLM agents: cassettes do not
record MCP traffic, and tracing has no HTTP spans for it (a tool call still has its ``execute_tool`` span).

See the README section "MCP".
"""

try:
    import mcp as _mcp  # noqa: F401 - the SDK, checked first for a clear error without the extra
except ModuleNotFoundError as _error:  # pragma: no cover - the test environment has the extra
    if _error.name != "mcp":
        raise
    raise ImportError("miniagents.mcp needs the MCP SDK: pip install 'miniagents[mcp]'") from _error

from miniagents._publish import publish
from miniagents.mcp._client import mcp_tools, result_text
from miniagents.mcp._exceptions import (
    MCPConnectionError,
    MCPError,
    MCPRequestError,
    MCPTimeoutError,
    MCPToolError,
)
from miniagents.mcp._serve import mcp_server, serve_mcp
from miniagents.mcp._servers import HttpServer, MCPServerSpec, StdioServer

__all__ = [
    "HttpServer",
    "MCPConnectionError",
    "MCPError",
    "MCPRequestError",
    "MCPServerSpec",
    "MCPTimeoutError",
    "MCPToolError",
    "StdioServer",
    "mcp_server",
    "mcp_tools",
    "result_text",
    "serve_mcp",
]

publish(globals())  # the public names report this module (see miniagents._publish)
