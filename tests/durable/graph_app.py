"""The durable graph of the crash tests: a planner fanning out to 3 LLM workers and a reducer.

Every LLM agent is an ``openai_agent`` pointing at the fake server of ``MINIAGENTS_DURABLE_LLM`` with the API key
:data:`API_KEY` in its default kwargs (the tests check that it never reaches the DBOS database).
"""

from __future__ import annotations

import os

from miniagents import InteractionContext, miniagent
from miniagents.durable import durable
from miniagents.llms import openai_agent

API_KEY = "sk-durable-test-0123456789abcdef-SECRET"
BASE_URL = os.environ.get("MINIAGENTS_DURABLE_LLM", "http://127.0.0.1:9/v1")
QUEUE = os.environ.get("MINIAGENTS_DURABLE_QUEUE") or None


def _llm(alias: str) -> object:
    return durable(
        openai_agent.fork(
            alias=alias, model=alias, base_url=BASE_URL, api_key=API_KEY, system=f"You are {alias}."
        ),
        queue=QUEUE,
    )


planner = _llm("planner")
workers = [_llm(f"worker{n}") for n in (1, 2, 3)]
reducer = _llm("reducer")


@miniagent
async def _graph(ctx: InteractionContext) -> None:
    question = await ctx.messages
    plan = planner.inquire(question)  # type: ignore[attr-defined]
    results = [worker.inquire([*question, plan], temperature=0.0) for worker in workers]  # type: ignore[attr-defined]
    ctx.reply(reducer.inquire(results))  # type: ignore[attr-defined]


graph = durable(_graph)
