"""Fixtures for the durable tests: ``postgres_url``, a fresh PostgreSQL database per test (see postgres_helpers)."""

from __future__ import annotations

from postgres_helpers import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]
