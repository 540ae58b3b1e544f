"""The real-model lane: tests against real local model servers (Gemma 3 270M under llama.cpp on 127.0.0.1).

Every test here is marked ``real_llm`` and skipped when ``MINIAGENTS_SKIP_REAL_LLM=1``.  The servers are
module-scoped (started once per module and backend, built and cached on first use): ``anyio_backend`` is
module-scoped here, so each module runs all its tests on trio, then on asyncio.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from miniagents.llms._local_server import LocalLLMServer

API_KEY = "test-key-not-secret"  # the key llama_server is started with
_SKIP = pytest.mark.skipif(
    os.environ.get("MINIAGENTS_SKIP_REAL_LLM") == "1",
    reason="MINIAGENTS_SKIP_REAL_LLM=1: real local LLM servers are not started",
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
async def llama_cpp_python(anyio_backend: str) -> AsyncIterator[LocalLLMServer]:
    async with LocalLLMServer("llama-cpp-python", chat_format="gemma") as server:
        yield server


@pytest.fixture(scope="module")
async def llama_cpp_python_tools(anyio_backend: str) -> AsyncIterator[LocalLLMServer]:
    async with LocalLLMServer("llama-cpp-python", chat_format="chatml-function-calling") as server:
        yield server


@pytest.fixture(scope="module")
async def llama_server(anyio_backend: str) -> AsyncIterator[LocalLLMServer]:
    async with LocalLLMServer("llama-server", api_key=API_KEY) as server:
        yield server
