"""The real-model lane: tests against the real local model server (Gemma 3 270M under llama.cpp on 127.0.0.1).

The server is llama.cpp's own, from the prebuilt ``xllamacpp`` wheel (the ``local`` extra; nothing is built),
and one server speaks both OpenAI ``/v1/chat/completions`` and Anthropic ``/v1/messages``.  Every test here is
marked ``real_llm`` and skipped when ``MINIAGENTS_SKIP_REAL_LLM=1``.  The server is module-scoped (started once
per module and backend, about a second): ``anyio_backend`` is module-scoped here, so each module runs all its
tests on trio, then on asyncio.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from miniagents.llms._local_server import LocalLLMServer

API_KEY = "test-key-not-secret"  # the key the local_llm server is started with
_SKIP = pytest.mark.skipif(
    os.environ.get("MINIAGENTS_SKIP_REAL_LLM") == "1",
    reason="MINIAGENTS_SKIP_REAL_LLM=1: the real local LLM server is not started",
)
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.anyio)
            item.add_marker(pytest.mark.real_llm)
            item.add_marker(_SKIP)


@pytest.fixture(scope="module", params=["trio", "asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
async def local_llm(anyio_backend: str) -> AsyncIterator[LocalLLMServer]:
    """The real server, requiring :data:`API_KEY` on both protocols."""
    async with LocalLLMServer(api_key=API_KEY) as server:
        yield server
