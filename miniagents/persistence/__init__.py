"""Persistence for MiniAgents: :class:`SQLiteStore`, the embedded message store and interaction graph.

``MiniAgents(store=SQLiteStore("run.db"))`` stores every message (once per ``hash_key``) and every finished
agent call with its input and reply messages in order; read it back with the store's awaitable queries, with
:class:`StoreReader`, or with ``python -m miniagents.persistence inspect run.db``.
"""

from miniagents._publish import publish
from miniagents.persistence._reader import CallRef, StoredCall, StoredRun, StoreReader
from miniagents.persistence._schema import SCHEMA_VERSION, SchemaVersionError
from miniagents.persistence._store import SQLiteStore, StoreStatistics

__all__ = [
    "CallRef",
    "SCHEMA_VERSION",
    "SQLiteStore",
    "SchemaVersionError",
    "StoreReader",
    "StoreStatistics",
    "StoredCall",
    "StoredRun",
]

publish(globals())  # the public names report this module (see miniagents._publish)
