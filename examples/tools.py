"""An LLM agent using other agents as tools: a calculator agent and a file-search agent.

`tools=[calculator, file_search]` turns each agent into a tool the model can call: its alias is the name, its
description and typed keyword parameters are the JSON schema.  The tool calls of one turn run concurrently,
and every turn, tool call and tool result is a message that streams to us.

With a real provider the two questions below are asked at the same time and the model decides which tool to
call (`tool_choice="auto"`).  The small local model would rather not call any, so there we force the tool meant
for each question, at temperature 0 and one question after the other (two requests batched together on the
local server do not give the same tokens twice); it then keeps calling tools forever, so `max_tool_rounds=1`
stops it after one round (the example reports that instead of crashing).

Run it:  python examples/tools.py [--root DIR] [--provider local|openai|anthropic]
"""

from __future__ import annotations

import argparse
import ast
import operator
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
from _providers import add_provider_arguments, llm_agent

from miniagents import InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.llms import LLMError, ToolRoundsExceededError

OPERATORS: dict[type[ast.AST], Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.USub: operator.neg,
}


def evaluate(node: ast.AST) -> float:
    """Evaluate an arithmetic expression tree (numbers and + - * / ** % only: no names, no calls)."""
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        if isinstance(node.op, ast.Pow) and abs(evaluate(node.right)) > 100:
            raise ValueError("exponent too large")  # 9**9**9 would keep the CPU busy for ever
        return OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](evaluate(node.operand))
    raise ValueError(f"unsupported expression: {ast.unparse(node)!r}")


@miniagent(description="Evaluates an arithmetic expression such as '12 * (3 + 4)'.")
async def calculator(ctx: InteractionContext, expression: str) -> None:
    """A tool: the model's arguments arrive as keyword arguments."""
    try:
        ctx.reply(f"{expression} = {evaluate(ast.parse(expression, mode='eval'))}")
    except (SyntaxError, ValueError, ArithmeticError) as error:  # the model's input may be anything
        ctx.reply(f"cannot evaluate {expression!r}: {error}")


def search_files(root: Path, text: str) -> list[str]:
    """The Python files under *root* whose name or content contains *text*."""
    return [
        str(path.relative_to(root))
        for path in sorted(root.rglob("*.py"))
        if text in path.name or text in path.read_text(errors="replace")
    ]


@miniagent(description="Lists the files whose name or content contains a text.")
async def file_search(ctx: InteractionContext, text: str, root: str) -> None:
    """A tool whose `root` is set by `fork()`: the model only sees (and fills in) `text`."""
    if not text.strip():
        ctx.reply("give a non-empty text to search for")
        return
    hits = await anyio.to_thread.run_sync(search_files, Path(root), text)  # file I/O off the event loop
    ctx.reply(
        f"{len(hits)} files contain {text!r}: {', '.join(hits[:10])}"
        if hits
        else f"no file contains {text!r}"
    )


async def ask(assistant: MiniAgent, question: str, tool: str, local: bool) -> list[str]:
    """Ask one question; return the transcript lines (printed together, as the two questions run at once)."""
    lines = [f"Q: {question}"]
    # temperature 0 for the local model: sampled freely, it may write an argument string longer than the token limit
    options = (
        {"tool_choice": tool, "max_tool_rounds": 1, "temperature": 0} if local else {"tool_choice": "auto"}
    )
    try:
        async for message in assistant.inquire(question, **options):
            if message.get("tool_calls"):
                calls = ", ".join(f"{c['name']}({c['arguments']})" for c in message.get("tool_calls"))
                lines.append(f"  model calls: {calls}")
            elif message.get("role") == "tool":
                lines.append(f"  {message.get('tool_name')} answers: {message}")
            else:
                lines.append(f"  model says: {message}")
    except ToolRoundsExceededError:
        lines.append("  (the model asked for tools again after its round: stopped there)")
    except LLMError as error:
        lines.append(f"  (the model call failed: {error})")
    if not any("answers:" in line for line in lines):
        lines.append("  (the model answered without calling a tool)")
    return lines


async def main(args: argparse.Namespace) -> None:
    tools = [calculator, file_search.fork(root=str(args.root))]
    assistant = llm_agent(args, alias="assistant", tool_calling=True, tools=tools, system="Use the tools.")
    questions = [
        ("What is 12 * (3 + 4) - 5?", "calculator"),
        ("Which files mention achain_loop?", "file_search"),
    ]
    transcripts: dict[str, list[str]] = {}

    async def run(question: str, tool: str) -> None:
        transcripts[question] = await ask(assistant, question, tool, local=args.provider == "local")

    async with MiniAgents():
        if args.provider == "local":
            # One at a time: at temperature 0 a request alone on the server is deterministic, two batched
            # together are not (the tiny model's tool arguments then vary, and may outgrow --max-tokens).
            for question, tool in questions:
                await run(question, tool)
        else:
            async with anyio.create_task_group() as tg:  # both questions at once
                for question, tool in questions:
                    tg.start_soon(run, question, tool)
    for question, _ in questions:
        print("\n".join(transcripts[question]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).parent.parent / "miniagents",
        help="where file_search looks",
    )
    add_provider_arguments(parser)
    anyio.run(main, parser.parse_args(), backend="trio")
