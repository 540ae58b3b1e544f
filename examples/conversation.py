"""A console chat: a user agent and an LLM agent taking turns in `achain_loop`, with a persisted history.

- The assistant's tokens print as they stream.
- Every message goes to a SQLite file (`--history`, default `conversation.db`); `--resume` reloads the last
  conversation from it and continues it.
- Type `exit` (or press Ctrl-D) to end.  Ctrl-C while an answer streams cancels just that answer.
- Scriptable: with `--input-file FILE`, or when stdin is not a terminal, the user's lines are read from there.

Run it:  python examples/conversation.py [--resume] [--input-file FILE] [--provider local|openai|anthropic]
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
from _providers import add_provider_arguments, llm_agent

from miniagents import (
    AgentCall,
    AgentCallCancelledError,
    InteractionContext,
    Message,
    MiniAgent,
    MiniAgents,
    StopLoop,
    TextMessage,
    achain_loop,
    miniagent,
    share_by_reference,
)
from miniagents.persistence import SQLiteStore

ASSISTANT = "assistant"  # the alias of the LLM agent: the history is rebuilt from its calls
SYSTEM = "You are a friendly assistant. Answer briefly."


class Chat:
    """The conversation so far and the LLM agent to continue it (shared by reference with the agents)."""

    def __init__(
        self, llm: MiniAgent, history: list[Message], read_line: Callable[[], Awaitable[str | None]]
    ):
        self.llm = llm
        self.history = history
        self.read_line = read_line


share_by_reference(Chat)  # agent kwargs are frozen unless their type is declared shareable


@miniagent
async def user_agent(ctx: InteractionContext, chat: Chat) -> None:
    """Reply the user's next line as a user message; end the loop on `exit` or end of input."""
    line = await chat.read_line()
    if line is None or line.strip().lower() in ("exit", "quit"):
        raise StopLoop  # achain_loop stops wherever this surfaces
    ctx.reply(TextMessage(content=line, role="user"))


@miniagent
async def assistant_turn(ctx: InteractionContext, chat: Chat) -> None:
    """Ask the LLM with the whole history; print its tokens as they stream; Ctrl-C cancels this answer."""
    chat.history.extend(await ctx.messages)
    call = chat.llm.initiate_call()  # a call we can cancel on its own
    call.send(chat.history)
    answers: list[Message] = []
    print(f"{ASSISTANT}> ", end="", flush=True)
    async with ctrl_c_cancels(call):
        try:
            async for promise in call.reply_sequence().promises():
                async for token in promise:  # printed while the model is still generating
                    print(token, end="", flush=True)
                answers.append(await promise)
        except AgentCallCancelledError:  # caught inside: the watcher's task group would wrap it
            print("\n[answer cancelled]", flush=True)
            return
    print()
    chat.history.extend(answers)  # only complete answers become history
    ctx.reply(answers)


@asynccontextmanager
async def ctrl_c_cancels(call: AgentCall) -> AsyncIterator[None]:
    """Within the block, Ctrl-C (SIGINT) cancels *call* instead of interrupting the program."""

    async def watch(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                call.cancel()
                return

    async with anyio.create_task_group() as tg:
        await tg.start(watch)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()  # stop watching: Ctrl-C at the prompt ends the program again


def line_reader(input_file: Path | None) -> Callable[[], Awaitable[str | None]]:
    """Return an async function giving the user's next line (`None` at the end of input)."""
    scripted = input_file is not None or not sys.stdin.isatty()
    if scripted:
        text = input_file.read_text() if input_file is not None else sys.stdin.read()
        lines: Iterator[str] = iter(text.splitlines())

        async def next_scripted() -> str | None:
            line = next(lines, None)
            if line is not None:
                print(f"you> {line}")  # echo, so the transcript reads like a chat
            return line

        return next_scripted

    def prompt() -> str | None:
        try:
            return input("you> ")
        except EOFError:  # Ctrl-D
            print()
            return None

    async def next_typed() -> str | None:
        # a worker thread keeps the event loop free while waiting; abandoned if the program is interrupted
        return await anyio.to_thread.run_sync(prompt, abandon_on_cancel=True)

    return next_typed


async def last_conversation(store: SQLiteStore) -> list[Message]:
    """The history of the most recent run that talked to the assistant (empty if there is none)."""
    calls = await store.calls(agent_alias=ASSISTANT)
    if not calls:
        return []
    return await store.conversation(ASSISTANT, run_id=calls[-1].run_id, completed_only=True)


async def main(args: argparse.Namespace) -> None:
    store = SQLiteStore(args.history)
    async with MiniAgents(store=store):  # every message and call goes to the SQLite file
        history = await last_conversation(store) if args.resume else []
        if args.resume:
            print(f"(resumed {len(history)} messages from {args.history})")
            for message in history:
                print(f"{message.get('role', 'user')}> {message}")
        chat = Chat(llm_agent(args, alias=ASSISTANT, system=SYSTEM), history, line_reader(args.input_file))
        print("(type 'exit' or press Ctrl-D to end; Ctrl-C cancels an answer while it streams)")
        # Each round: the user's line, then the assistant's answer.  StopLoop ends it.
        await achain_loop([user_agent.fork(chat=chat), assistant_turn.fork(chat=chat)])
    print(f"(history saved in {args.history}; continue with --resume)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--history", type=Path, default=Path("conversation.db"), help="the SQLite history file"
    )
    parser.add_argument("--resume", action="store_true", help="continue the last conversation in --history")
    parser.add_argument("--input-file", type=Path, help="read the user's lines from this file")
    add_provider_arguments(parser)
    try:
        anyio.run(main, parser.parse_args(), backend="trio")
    except KeyboardInterrupt:  # Ctrl-C at the prompt
        print("\n(interrupted)")
