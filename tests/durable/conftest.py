"""Fixtures for the durable tests: ``postgres_url``, a fresh PostgreSQL database per test (see postgres_helpers),
``database``, the DBOS database URL of a test run once on SQLite and once on PostgreSQL, and ``reference``, an
uninterrupted run of the graph of ``graph_app.py`` (once per session).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from durable_helpers import fake_server, run_app, store_keys
from postgres_helpers import postgres_server, postgres_url

__all__ = ["database", "postgres_server", "postgres_url", "reference"]

MODELS = ("planner", "worker1", "worker2", "worker3", "reducer")


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An uninterrupted run (trio): its replies, its store's keys and the requests it made."""
    directory = tmp_path_factory.mktemp("reference")
    with fake_server(directory) as server:
        result = anyio.run(run_app, "trio", directory, "reference-run", server)
        counts = server.counts()
    assert counts == dict.fromkeys(MODELS, 1)
    return {"replies": result["replies"], "store": sorted(store_keys(directory / "store.db"))}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A DBOS database URL: a SQLite file in the test's directory, or a fresh PostgreSQL database (skipped without
    ``MINIAGENTS_POSTGRES_URL``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dbos.db'}"
    else:
        yield request.getfixturevalue("postgres_url")
