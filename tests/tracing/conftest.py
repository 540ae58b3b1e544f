"""Fixtures for the tracing tests: a private SDK tracer provider exporting to memory (the global one is untouched)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tracing_helpers import Traces


@pytest.fixture
def traces() -> Iterator[Traces]:
    result = Traces()
    yield result
    result.provider.shutdown()
