"""The errors of MCP tools.

Every failure of a request to an MCP server is an :class:`MCPError`::

    MCPError                  (an LLMError: a tool failure the model gets back as an error tool result)
    ├── MCPConnectionError    (also a ConnectionError) the server could not be started / reached, or it went away
    ├── MCPTimeoutError       (also a TimeoutError) the server did not answer within ``read_timeout``
    ├── MCPRequestError       the server answered a request with a JSON-RPC error (e.g. an unknown tool)
    └── MCPToolError          the tool ran and reported a failure (``isError``); its text is the tool's

Every error names the server (``server``, its label: a stdio server's command line or an HTTP server's URL
without credentials, query or fragment) and, for a tool call, the tool (``tool``); ``code`` is the JSON-RPC
error code as text, when there is one.  Header values of an :class:`~miniagents.mcp.HttpServer` never appear
in them.
"""

from __future__ import annotations

from typing import Any

from miniagents.llms import LLMError

__all__ = ["MCPConnectionError", "MCPError", "MCPRequestError", "MCPTimeoutError", "MCPToolError"]


class MCPError(LLMError):
    """A request to an MCP server failed.

    Attributes:
        server: the label of the server (see the module description).
        tool: the name of the tool whose call failed, or ``None`` (listing tools, connecting).

    """

    def __init__(
        self, message: str, *, server: str, tool: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.server = server
        self.tool = tool

    def _state(self) -> dict[str, Any]:
        return {"server": self.server, "tool": self.tool, "code": self.code}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, server={self.server!r}, tool={self.tool!r}, "
            f"code={self.code!r})"
        )


class MCPConnectionError(MCPError, ConnectionError):
    """The MCP server could not be started or reached, or the connection to it was lost (it exited, crashed)."""


class MCPTimeoutError(MCPError, TimeoutError):
    """The MCP server did not answer a request within the server description's ``read_timeout``."""


class MCPRequestError(MCPError):
    """The MCP server answered a request with a JSON-RPC error (unknown tool, invalid parameters, ...)."""


class MCPToolError(MCPError):
    """The MCP tool ran and reported a failure (a result with ``isError``); the message is the tool's text."""
