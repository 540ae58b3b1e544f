"""Scaffolding shared by the LLM layer tests: provider options for FakeLLMServer, and awaiting what must fail.

Imported by its bare name: pytest (import mode ``prepend``) puts each test directory on
``sys.path``, the directories not being packages, so every helper module's name is unique in the suite.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from miniagents.testing import FakeLLMServer

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

KEY = "sk-test-0123456789"
DEADLINE = 30  # generous bound for waiting on events that must happen; never a timing assertion


def oai(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "base_url": server.openai_base_url, "api_key": KEY, **kwargs}


def ant(server: FakeLLMServer, **kwargs: Any) -> dict[str, Any]:
    return {"model": "claude-test", "base_url": server.anthropic_base_url, "api_key": KEY, **kwargs}


async def failure_of(awaitable: Any) -> BaseException:
    """Await something that must fail; return the exception (unwrapping a lone exception group)."""
    with anyio.fail_after(DEADLINE):
        try:
            await awaitable
        except BaseException as exc:
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            return exc
    raise AssertionError("it did not fail")


async def collect(promise: Any, into: list[str]) -> None:
    async for token in promise:
        into.append(token)
