"""Fixtures for the tracing tests: a private SDK tracer provider exporting to memory (the global one is untouched),
and no provider settings or content-capture switch from the environment."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tracing_helpers import Traces

from miniagents.tracing import CAPTURE_CONTENT_ENV


@pytest.fixture
def traces() -> Iterator[Traces]:
    result = Traces()
    yield result
    result.provider.shutdown()


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        CAPTURE_CONTENT_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
