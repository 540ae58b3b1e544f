"""The database schema: versioned with ``PRAGMA user_version`` and upgraded by a list of migrations.

Migration *n* (1-based) takes a database at version ``n - 1`` to version ``n``; each runs in its own
transaction together with the version bump, so a crash leaves the database at a consistent version.  A database
written by a newer release (a version above :data:`SCHEMA_VERSION`) is refused rather than misread.

Tables (version 3):

``messages``
    one row per distinct message: ``id`` (integer, used by the other tables), ``key_prefix`` (the first 60
    bits of the hash key as an integer, see :func:`key_prefix`; unique; ``NULL`` for the rare message
    whose prefix another message holds already), ``hash_key`` (the full key; found through ``key_prefix``),
    ``class`` (``"module:QualName"``), ``content``, ``fields`` (JSON of the other fields as
    ``Message.to_dict()`` encodes them, ``NULL`` when there are none; a nested message is replaced by a
    reference ``{"$t": "ref", "k": <hash_key>}`` to its own row), ``nested`` (how many references) and
    ``stored_at`` (Unix time of the commit that first stored it).
``message_refs``
    ``(parent_id, position, child_id)``: the messages nested in a message, in encoding order.
``runs``
    one row per ``MiniAgents`` context that finished at least one call: ``run_id``, earliest call start and
    latest call end.
``calls``
    one row per finished agent call: ``(run_id, call_id)`` is unique (call ids are unique only within a run),
    ``parent_call_id`` (same run), ``agent_alias``, ``kwargs`` (JSON), ``started_at``, ``finished_at``,
    ``outcome`` (``completed``/``failed``/``cancelled``), ``error_type``, ``error``.
``call_messages``
    one row per call and direction (``input`` or ``reply``): ``count`` and ``message_ids``, the ``messages.id``
    of each message in order, packed as little-endian signed 64-bit integers (one row instead of one per
    message keeps a call with 100k messages cheap to store).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

#: How many leading hex digits of a hash key make ``messages.key_prefix`` (60 bits: always a positive SQLite
#: INTEGER, no sign handling on the writer's hot path).
KEY_PREFIX_DIGITS = 15

Migration = Callable[[sqlite3.Connection], None]


def _v1_base_tables(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            hash_key TEXT NOT NULL UNIQUE,
            class TEXT NOT NULL,
            content TEXT NOT NULL,
            fields TEXT,
            nested INTEGER NOT NULL DEFAULT 0,
            stored_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE message_refs (
            parent_id INTEGER NOT NULL REFERENCES messages(id),
            position INTEGER NOT NULL,
            child_id INTEGER NOT NULL REFERENCES messages(id),
            PRIMARY KEY (parent_id, position)
        ) WITHOUT ROWID"""
    )
    db.execute(
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            finished_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            call_id INTEGER NOT NULL,
            parent_call_id INTEGER,
            agent_alias TEXT NOT NULL,
            kwargs TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL NOT NULL,
            outcome TEXT NOT NULL,
            error_type TEXT,
            error TEXT,
            UNIQUE (run_id, call_id)
        )"""
    )
    db.execute(
        """CREATE TABLE call_messages (
            call INTEGER NOT NULL REFERENCES calls(id),
            direction TEXT NOT NULL CHECK (direction IN ('input', 'reply')),
            count INTEGER NOT NULL,
            message_ids BLOB NOT NULL,
            PRIMARY KEY (call, direction)
        ) WITHOUT ROWID"""
    )


def _v2_read_indexes(db: sqlite3.Connection) -> None:
    db.execute("CREATE INDEX calls_by_alias ON calls (agent_alias, started_at)")
    db.execute("CREATE INDEX calls_by_parent ON calls (run_id, parent_call_id)")
    db.execute("CREATE INDEX message_refs_by_child ON message_refs (child_id)")


def key_prefix(hash_key: str) -> int:
    """The first 15 hex digits (60 bits) of *hash_key* as an integer: the indexed ``messages.key_prefix``.

    A unique integer index costs about half as much per insert as one on the 64-character text key.  Two
    different keys share a prefix with probability about ``n**2 / 2**61`` for ``n`` stored messages (1e-6 for
    a million); when it happens, the later message is stored with ``key_prefix`` ``NULL`` and found by its
    full key.  Raises ``ValueError`` for a string that does not start with 15 hex digits.
    """
    return int(hash_key[:KEY_PREFIX_DIGITS], 16)


def _v3_integer_key_index(db: sqlite3.Connection) -> None:
    # SQLite cannot drop the UNIQUE constraint of a column: rebuild the table (ids unchanged, so message_refs
    # and call_messages stay valid), then fill key_prefix; UPDATE OR IGNORE leaves a colliding prefix NULL.
    db.create_function("miniagents_key_prefix", 1, key_prefix, deterministic=True)
    db.execute(
        """CREATE TABLE messages_v3 (
            id INTEGER PRIMARY KEY,
            key_prefix INTEGER UNIQUE,
            hash_key TEXT NOT NULL,
            class TEXT NOT NULL,
            content TEXT NOT NULL,
            fields TEXT,
            nested INTEGER NOT NULL DEFAULT 0,
            stored_at REAL NOT NULL
        )"""
    )
    db.execute(
        "INSERT INTO messages_v3 (id, hash_key, class, content, fields, nested, stored_at)"
        " SELECT id, hash_key, class, content, fields, nested, stored_at FROM messages ORDER BY id"
    )
    db.execute("UPDATE OR IGNORE messages_v3 SET key_prefix = miniagents_key_prefix(hash_key)")
    db.execute("DROP TABLE messages")
    db.execute("ALTER TABLE messages_v3 RENAME TO messages")


#: Every migration, in order; the schema version is the number applied.
MIGRATIONS: tuple[Migration, ...] = (_v1_base_tables, _v2_read_indexes, _v3_integer_key_index)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaVersionError(RuntimeError):
    """The database was written by a newer version of the schema than this code knows."""


def schema_version(db: sqlite3.Connection) -> int:
    """The version of the schema in *db* (``0`` for an empty database)."""
    row = db.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(db: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring *db* (opened with ``isolation_level=None``) up to schema version *target*; return the version.

    Each missing migration runs in an ``IMMEDIATE`` transaction that re-reads the version first, so two
    processes opening the same new database at once do not both apply it.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"no schema version {target}")
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(db)
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"the database has schema version {version}; this miniagents knows up to {SCHEMA_VERSION}"
                )
            if version >= target:
                db.execute("COMMIT")
                return version
            MIGRATIONS[version](db)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
