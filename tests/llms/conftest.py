"""Fixtures for the LLM layer tests: a fake provider server on 127.0.0.1 and a clean provider environment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from miniagents.testing.fake_llm_server import FakeLLMServer


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer.serve() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
