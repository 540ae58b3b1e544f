"""Misbehaving MCP servers for the tests of failure handling.

* ``python review_server.py noisy`` — an MCP server over stdio (the SDK's ``MCPServer``, run as a child) behind a
  relay that writes a line that is not JSON first, and after every message of the server lines that are not
  JSON-RPC messages (text, a JSON object, an answer to a request never sent).
* ``python review_server.py serve BACKEND`` — ``serve_mcp`` over stdio of a function ``meet`` that returns only once
  ``size`` calls of its group run at the same time.
* ``python review_server.py schema`` — a low-level SDK ``Server`` over stdio whose tool ``count`` declares an
  output schema (``{"n": integer}``) and returns structured content that does not conform to it.
* ``python review_server.py status CODE PORT`` — an HTTP server on 127.0.0.1 that answers every request with the
  status CODE (for example 401 or 404) and a short plain-text body.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
from mcp.server.mcpserver import MCPServer

from miniagents.mcp import serve_mcp

server = MCPServer("noisy-tools")


@server.tool()
async def noisy(text: str) -> str:
    """Echo the text (the relay of ``noisy`` adds the garbage)."""
    return text


@server.tool()
async def echo(text: str) -> str:
    """Echo the text."""
    return text


_groups: dict[str, tuple[int, anyio.Event]] = {}


async def meet(group: str, size: int, label: str) -> str:
    """Return only once `size` calls of the same group are running at the same time."""
    count, event = _groups.get(group, (0, anyio.Event()))
    _groups[group] = (count + 1, event)
    if count + 1 >= size:
        event.set()
    await event.wait()
    return f"{label} met {size - 1} others"


async def serve_schema() -> None:
    import mcp.types as mcp_types
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    async def on_list_tools(ctx: object, params: object) -> mcp_types.ListToolsResult:
        tool = mcp_types.Tool(
            name="count",
            description="Count, badly.",
            input_schema={"type": "object", "properties": {}},
            output_schema=schema,
        )
        return mcp_types.ListToolsResult(tools=[tool])

    async def on_call_tool(ctx: object, params: object) -> mcp_types.CallToolResult:
        return mcp_types.CallToolResult(
            content=[mcp_types.TextContent(type="text", text='{"n": "many"}')],
            structured_content={"n": "many"},
        )

    server: Server[object] = Server("schema", on_list_tools=on_list_tools, on_call_tool=on_call_tool)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


GARBAGE = b'this is not JSON-RPC\n{"not": "a message"}\n{"jsonrpc": "2.0", "id": 987654, "result": {}}\n'


def relay_with_garbage() -> None:
    """Run ``review_server.py quiet`` as a child; relay stdin to it and its stdout back, adding garbage lines."""
    import subprocess
    import threading

    child = subprocess.Popen(
        [sys.executable, __file__, "quiet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    child_stdin, child_stdout = child.stdin, child.stdout

    def forward_input() -> None:
        for line in sys.stdin.buffer:
            child_stdin.write(line)
            child_stdin.flush()
        child_stdin.close()

    threading.Thread(target=forward_input, daemon=True).start()
    out = sys.stdout.buffer
    out.write(b"garbage before the first message\n")
    out.flush()
    for line in child_stdout:
        out.write(line + GARBAGE)
        out.flush()
    child.wait()


def serve_status(code: int, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = f"status {code}\n".encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        anyio.run(serve_mcp, [meet], backend=sys.argv[2])
    elif sys.argv[1:2] == ["schema"]:
        anyio.run(serve_schema)
    elif sys.argv[1:2] == ["status"]:
        serve_status(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1:2] == ["quiet"]:
        server.run()
    else:
        relay_with_garbage()
