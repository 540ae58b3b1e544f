"""MiniAgents agents (and typed async functions) served as the tools of an MCP server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import mcp.types as mcp_types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from miniagents import MiniAgent, MiniAgents, MiniAgentsError, NoActiveContextError
from miniagents.llms._tools import (
    Tool,
    _parameter_fields,
    _preset_kwargs,
    _validated,
    as_tools,
    tool_result_text,
)

#: ``await progress(token)`` for each token an agent streams (sent as an MCP progress notification).
Progress = Callable[[str], Awaitable[None]]
AgentRunner = Callable[[dict[str, Any], Progress], Awaitable[str]]

__all__ = ["mcp_server", "serve_mcp"]


def _agent_runner(agent: MiniAgent, tool: Tool) -> AgentRunner:
    """Run *agent* as :meth:`Tool.from_agent` does, reporting every token of its replies to ``progress``."""
    preset = set(_preset_kwargs(agent))
    fields, extra = _parameter_fields(agent.func, skip_first=True, exclude=preset)
    takes_input = not fields

    async def run(arguments: dict[str, Any], progress: Progress) -> str:
        if takes_input:
            replies = agent.inquire(str(arguments.get("input", "")))
        else:
            replies = agent.inquire(None, **_validated(tool.name, arguments, fields, extra))
        async for promise in replies.promises():
            async for token in promise:
                await progress(str(token))
        return await replies.as_single_text()

    return run


def _error_result(text: str) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)], is_error=True)


def mcp_server(
    tools: Iterable[Any],
    *,
    name: str = "miniagents",
    instructions: str | None = None,
    context: MiniAgents | None = None,
) -> Server[Any]:
    """An MCP server (the SDK's low-level ``Server``) whose tools are *tools*: agents, async functions, Tools.

    Each item becomes a tool as in ``tools=[...]`` of the LLM agents (an agent by its alias, description and
    declared keyword parameters, or one ``input`` string; a function by its name, docstring and typed
    parameters), with that JSON schema.  A call runs the agent or function in *context* (attached for the call,
    see :meth:`MiniAgents.attach`; it must be active then), or without one in the ``MiniAgents`` context that is
    current where the server runs its handlers (its arguments validated like an LLM's tool call); the result is the
    agent's replies joined as text (a function's value as text or JSON).  When the client asks for progress
    (a ``progressToken`` in the request's ``_meta``), every token an agent streams is sent as a progress
    notification: ``progress`` counts the tokens (1, 2, ...; no ``total``), ``message`` is the token.  Any failure (invalid arguments, an
    agent's error, an unknown tool) is an ``isError`` result with the error's type and text, never a protocol
    error; a call cancelled by the client (``notifications/cancelled``) cancels the agent call.

    Raises:
        TypeError, ValueError: as ``tools=[...]`` does (an unsupported item, two tools with the same name).

    """
    items = list(tools)
    listed = as_tools(items)
    by_name: Mapping[str, Tool] = {tool.name: tool for tool in listed}
    # agents stream: their tokens are sent as progress notifications when the client asks for progress
    runners: dict[str, AgentRunner] = {
        tool.name: _agent_runner(item, tool)
        for item, tool in zip(items, listed, strict=True)
        if isinstance(item, MiniAgent)
    }
    descriptions = [
        mcp_types.Tool(name=tool.name, description=tool.description, input_schema=dict(tool.parameters))
        for tool in listed
    ]

    async def on_list_tools(
        ctx: Any, params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        return mcp_types.ListToolsResult(tools=descriptions)

    async def on_call_tool(ctx: Any, params: mcp_types.CallToolRequestParams) -> mcp_types.CallToolResult:
        tool = by_name.get(params.name)
        if tool is None:
            return _error_result(
                f"unknown tool {params.name!r}; available: {', '.join(sorted(by_name)) or 'none'}"
            )
        if context is None:
            return await call(ctx, tool, params)
        try:
            with context.attach():
                return await call(ctx, tool, params)
        except MiniAgentsError as error:  # the context is not active, or runs in another event loop
            return _error_result(f"{type(error).__name__}: {error}")

    async def call(ctx: Any, tool: Tool, params: mcp_types.CallToolRequestParams) -> mcp_types.CallToolResult:
        arguments = dict(params.arguments or {})
        token = (ctx.meta or {}).get("progress_token")
        runner = runners.get(tool.name)
        try:
            if runner is not None and token is not None:
                sent = 0

                async def progress(text: str) -> None:
                    nonlocal sent
                    sent += 1
                    await ctx.session.send_progress_notification(
                        token, float(sent), message=text, related_request_id=ctx.request_id
                    )

                text = await runner(arguments, progress)
            else:
                text = tool_result_text(await tool.handler(arguments))
        except Exception as error:
            return _error_result(f"{type(error).__name__}: {error}")
        return mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)])

    def input_schema(tool: str) -> Mapping[str, Any] | None:
        found = by_name.get(tool)
        return None if found is None else found.parameters

    return Server(
        name,
        instructions=instructions,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        get_tool_input_schema=input_schema,
    )


async def serve_mcp(
    tools: Iterable[Any], *, name: str = "miniagents", instructions: str | None = None
) -> None:
    """Serve *tools* (agents, async functions, Tools; see :func:`mcp_server`) as an MCP server over stdio.

    Returns when the client closes the connection (stdin ends).  The calls run in the current ``MiniAgents``
    context when one is active, else in one entered here for the whole session (so every call of the session
    shares its resources, e.g. the pooled HTTP client); it exits, after every call finished, when this returns.
    """
    server = mcp_server(tools, name=name, instructions=instructions)

    async def run() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    try:
        MiniAgents.current()
    except NoActiveContextError:
        async with MiniAgents():
            await run()
    else:
        await run()
