"""A real MCP server for the tests, written with the SDK's server API (``MCPServer``).

Run as ``python mcp_server.py`` (stdio) or ``python mcp_server.py http PORT`` (streamable HTTP on 127.0.0.1).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

server = MCPServer("test-tools")
_waiting: dict[str, tuple[int, anyio.Event]] = {}


@server.tool()
async def add(a: Annotated[int, Field(description="The first number.")], b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
async def shout(text: str) -> str:
    """Upper-case a text."""
    return text.upper()


@server.tool()
async def refuse(reason: str) -> str:
    """Always fails, with the reason as its error text."""
    raise ToolError(f"refused: {reason}")


@server.tool()
async def pid() -> int:
    """The process id of this server."""
    return os.getpid()


@server.tool()
async def rendezvous(group: str, size: int, label: str) -> str:
    """Return only once `size` calls of the same group are running at the same time."""
    count, event = _waiting.get(group, (0, anyio.Event()))
    _waiting[group] = (count + 1, event)
    if count + 1 >= size:
        event.set()
    await event.wait()
    return f"{label} met {size - 1} others"


@server.tool()
async def hang(marker: str) -> str:
    """Write 'started' to the file `marker`, then wait forever; write 'cancelled' there when cancelled."""
    path = anyio.Path(marker)
    await path.write_text("started")
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await path.write_text("cancelled")
    return "never"


if __name__ == "__main__":
    if sys.argv[1:2] == ["http"]:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
