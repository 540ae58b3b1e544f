"""An LLM agent using the tools of an MCP server (Model Context Protocol), and the server itself.

`python examples/mcp_tools.py --serve` is a small MCP server written with the official SDK (`mcp`): two text
tools, spoken to over stdin/stdout.  Without `--serve` the example starts that server as a subprocess
(`StdioServer`), lists its tools with `mcp_tools()` — names, descriptions and JSON schemas come from the server —
and gives them to an LLM agent as `tools=[...]`: each tool call the model makes is a call to the MCP server, whose
result goes back to the model.  The server runs as long as the `MiniAgents` block and is stopped when it exits.

As in `tools.py`, the small local model is made to call the tool meant for each question (`tool_choice`), at
temperature 0, with `max_tool_rounds=1`; a real provider chooses for itself.

Run it:  python examples/mcp_tools.py [--provider local|openai|anthropic]   (needs the `mcp` extra)
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
from _providers import add_provider_arguments, llm_agent

from miniagents import MiniAgents
from miniagents.llms import LLMError, ToolRoundsExceededError
from miniagents.mcp import StdioServer, mcp_tools


def serve() -> None:
    """The MCP server: two tools, over stdio."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("text-tools")

    @server.tool()
    async def count_words(text: str) -> int:
        """Count the words of a text."""
        return len(text.split())

    @server.tool()
    async def reverse_text(text: str) -> str:
        """Reverse a text, character by character."""
        return text[::-1]

    server.run()


async def main(args: argparse.Namespace) -> None:
    # The SDK passes the subprocess only a safe part of the environment (HOME, PATH, ...): add PYTHONPATH, so
    # that the server imports what this process imports.
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else None
    text_tools = StdioServer(sys.executable, [__file__, "--serve"], env=env, name="text-tools")
    assistant = llm_agent(args, alias="assistant", tool_calling=True, system="Use the tools.")
    local = args.provider == "local"
    questions = [
        ("Count the words of 'hello big world'.", "count_words"),
        ("Reverse the text 'miniagents'.", "reverse_text"),
    ]
    async with MiniAgents():
        tools = await mcp_tools(text_tools)  # starts the server (stopped when the block exits)
        print("MCP tools:", ", ".join(f"{tool.name} ({tool.description})" for tool in tools))
        for question, tool in questions:
            options = (
                {"tool_choice": tool, "max_tool_rounds": 1, "temperature": 0}
                if local
                else {"tool_choice": "auto"}
            )
            print(f"Q: {question}")
            try:
                async for message in assistant.inquire(question, tools=tools, **options):
                    if message.get("tool_calls"):
                        calls = ", ".join(f"{c['name']}({c['arguments']})" for c in message.get("tool_calls"))
                        print(f"  model calls: {calls}")
                    elif message.get("role") == "tool":
                        print(f"  {message.get('tool_name')} answers: {message}")
                    else:
                        print(f"  model says: {message}")
            except ToolRoundsExceededError:
                print("  (the model asked for tools again after its round: stopped there)")
            except LLMError as error:
                print(f"  (the model call failed: {error})")


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_provider_arguments(parser)
        anyio.run(main, parser.parse_args(), backend="trio")
