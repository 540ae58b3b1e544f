"""Reading a store: :class:`StoreReader` (synchronous, thread-safe), :class:`StoredCall`, :class:`StoredRun`."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, Protocol

import attrs

from miniagents._messages import Message
from miniagents._records import CallFields, CallOutcome
from miniagents.persistence._codec import decode_kwargs, decode_row, unpack_ids
from miniagents.persistence._schema import SCHEMA_VERSION, SchemaVersionError, key_prefix, schema_version

Direction = Literal["input", "reply"]
_CHUNK = 500
# A message by its key, parameters (key_prefix, hash_key): through the integer key index (version 3; a
# message whose prefix another one holds has key_prefix NULL), or the unique text index of older files.
_BY_KEY = (
    "SELECT class, content, fields, nested FROM messages WHERE key_prefix = ?1 AND hash_key = ?2"
    " UNION ALL SELECT class, content, fields, nested FROM messages WHERE key_prefix IS NULL AND hash_key = ?2"
)
_BY_KEY_BEFORE_V3 = "SELECT class, content, fields, nested FROM messages WHERE hash_key = ?2"
_CALL_COLUMNS = "id, run_id, call_id, parent_call_id, agent_alias, kwargs, started_at, finished_at, outcome, error_type, error"


class CallAddress(Protocol):
    """Anything that names a call: a :class:`StoredCall` or a :class:`~miniagents.CallRecord`."""

    @property
    def run_id(self) -> str: ...

    @property
    def call_id(self) -> int: ...


#: How a call is addressed: call ids are unique only within a run, so always together with the run id.
CallRef = tuple[str, int] | CallAddress


@attrs.frozen(kw_only=True)
class StoredCall(CallFields):
    """A finished agent call as stored: the :class:`~miniagents.CallRecord` fields without the messages.

    ``key`` (``(run_id, call_id)``) addresses it in :meth:`StoreReader.replies`, :meth:`StoreReader.inputs`
    and :meth:`StoreReader.children`; ``parent_call_id`` is a call id of the same run.
    """

    # Always read from the store, so without the defaults CallFields gives them.
    error_type: str | None
    error: str | None

    @property
    def key(self) -> tuple[str, int]:
        """``(run_id, call_id)``."""
        return (self.run_id, self.call_id)


@attrs.frozen(kw_only=True)
class StoredRun:
    """One ``MiniAgents`` context that finished at least one call: first start, last end, number of calls."""

    run_id: str
    started_at: float
    finished_at: float
    calls: int


class StoreReader:
    """Synchronous, read-only access to a store file; safe to share between threads (one lock).

    Every method reads one consistent snapshot (a read transaction); in WAL mode it never blocks the writer
    and sees exactly what was committed when it started.  Raises ``FileNotFoundError`` for a missing file
    (no empty database is created) and :class:`SchemaVersionError` for one written by a newer schema.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if self.path != ":memory:" and not os.path.exists(self.path):
            raise FileNotFoundError(f"no store at {self.path!r}")
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        version = schema_version(self._db)
        if version > SCHEMA_VERSION:
            self._db.close()
            raise SchemaVersionError(
                f"{self.path!r} has schema version {version}; this miniagents knows up to {SCHEMA_VERSION}"
            )
        if version == 0:
            self._db.close()
            raise ValueError(f"{self.path!r} is not a miniagents store (schema version 0)")
        self._by_key = _BY_KEY if version >= 3 else _BY_KEY_BEFORE_V3  # files are migrated by writers only

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    # -- messages -------------------------------------------------------------------------------------------
    def get(self, hash_key: str) -> Message | None:
        """The message stored under *hash_key* (its own class, nested messages included), or ``None``."""
        data = self.get_dict(hash_key)
        return None if data is None else Message.from_dict(data)

    def get_dict(self, hash_key: str) -> dict[str, Any] | None:
        """The ``to_dict()`` form of the message stored under *hash_key* (no class import needed), or ``None``."""
        with self._snapshot() as db:
            return _load_dict(db, self._by_key, hash_key)

    def hash_keys(self) -> set[str]:
        """The hash key of every stored message."""
        with self._snapshot() as db:
            return {row[0] for row in db.execute("SELECT hash_key FROM messages")}

    def message_count(self) -> int:
        """How many distinct messages are stored."""
        with self._snapshot() as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])

    # -- the interaction graph ------------------------------------------------------------------------------
    def runs(self) -> list[StoredRun]:
        """Every run, oldest first."""
        with self._snapshot() as db:
            rows = db.execute(
                "SELECT r.run_id, r.started_at, r.finished_at, (SELECT count(*) FROM calls c"
                " WHERE c.run_id = r.run_id) FROM runs r ORDER BY r.started_at, r.run_id"
            ).fetchall()
        return [StoredRun(run_id=r[0], started_at=r[1], finished_at=r[2], calls=r[3]) for r in rows]

    def calls(
        self,
        *,
        run_id: str | None = None,
        agent_alias: str | None = None,
        outcome: CallOutcome | None = None,
        parent_call_id: int | Literal["any"] | None = "any",
    ) -> list[StoredCall]:
        """Stored calls matching every filter given, in the order they started (across runs).

        ``parent_call_id=None`` selects the calls started outside any agent; an int selects the children of
        that call (give ``run_id`` too, since call ids repeat across runs).
        """
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("run_id", run_id), ("agent_alias", agent_alias), ("outcome", outcome)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if parent_call_id is None:
            where.append("parent_call_id IS NULL")
        elif parent_call_id != "any":
            where.append("parent_call_id = ?")
            args.append(parent_call_id)
        sql = f"SELECT {_CALL_COLUMNS} FROM calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at, id"
        with self._snapshot() as db:
            rows = db.execute(sql, args).fetchall()
        return [_call(row) for row in rows]

    def call(self, ref: CallRef) -> StoredCall:
        """The call *ref* names (``(run_id, call_id)``, a :class:`StoredCall` or a ``CallRecord``).

        Raises ``KeyError`` if it is not stored.
        """
        with self._snapshot() as db:
            return _call(_call_row(db, ref))

    def children(self, ref: CallRef) -> list[StoredCall]:
        """The calls started by the call *ref* names, in the order they started."""
        run_id, call_id = _address(ref)
        return self.calls(run_id=run_id, parent_call_id=call_id)

    def inputs(self, ref: CallRef) -> list[Message]:
        """The messages the call received, in order (those that had resolved when it ended)."""
        return [message for _, message in self._call_messages(ref, "input")]

    def replies(self, ref: CallRef) -> list[Message]:
        """The messages the call replied, in order (those that had resolved when it ended)."""
        return [message for _, message in self._call_messages(ref, "reply")]

    def conversation(
        self, agent_alias: str, *, run_id: str | None = None, completed_only: bool = False
    ) -> list[Message]:
        """Rebuild the chat history of *agent_alias*, e.g. to resume a conversation in a new run.

        For each of its calls in the order they started (across runs, or in one run): its input messages,
        then its replies.

        Chat agents are often called with the whole history so far plus the new message; when a call's input
        starts with exactly the history rebuilt so far, that prefix is not repeated.  ``completed_only`` skips
        calls that failed or were cancelled.  The result is ready to send to the agent in a resumed run.
        """
        history: list[Message] = []
        keys: list[str] = []
        for call in self.calls(agent_alias=agent_alias, run_id=run_id):
            if completed_only and call.outcome != "completed":
                continue
            inputs = self._call_messages(call, "input")
            if len(inputs) >= len(keys) and [k for k, _ in inputs[: len(keys)]] == keys:
                inputs = inputs[len(keys) :]
            for key, message in (*inputs, *self._call_messages(call, "reply")):
                keys.append(key)
                history.append(message)
        return history

    # -- raw access for previews (the inspect command) -------------------------------------------------------
    def call_message_rows(
        self, ref: CallRef, direction: Direction, limit: int | None = None
    ) -> tuple[int, list[tuple[str, str, str]]]:
        """``(count, [(hash_key, class, content), ...])`` of a call's messages, at most *limit* rows."""
        with self._snapshot() as db:
            pk = _call_row(db, ref)[0]
            count, ids = _ids(db, pk, direction)
            if limit is not None:
                ids = ids[:limit]
            rows = _rows_by_id(db, ids)
        return count, [(rows[i][0], rows[i][1], rows[i][2]) for i in ids if i in rows]

    def _call_messages(self, ref: CallRef, direction: Direction) -> list[tuple[str, Message]]:
        with self._snapshot() as db:
            pk = _call_row(db, ref)[0]
            _, ids = _ids(db, pk, direction)
            rows = _rows_by_id(db, ids)
            decoded: dict[int, tuple[str, Message]] = {}
            result: list[tuple[str, Message]] = []
            for message_id in ids:
                entry = decoded.get(message_id)
                if entry is None:
                    key, cls, content, fields, nested = rows[message_id]
                    data = decode_row(
                        cls, content, fields, nested, lambda k: _require_dict(db, self._by_key, k)
                    )
                    entry = decoded[message_id] = (key, Message.from_dict(data))
                result.append(entry)
        return result


def _address(ref: CallRef) -> tuple[str, int]:
    if isinstance(ref, tuple):
        run_id, call_id = ref
        return str(run_id), int(call_id)
    return ref.run_id, ref.call_id


def _call_row(db: sqlite3.Connection, ref: CallRef) -> tuple[Any, ...]:
    run_id, call_id = _address(ref)
    row = db.execute(
        f"SELECT {_CALL_COLUMNS} FROM calls WHERE run_id = ? AND call_id = ?", (run_id, call_id)
    ).fetchone()
    if row is None:
        raise KeyError(f"no call #{call_id} in run {run_id!r}")
    return tuple(row)


def _call(row: Sequence[Any]) -> StoredCall:
    return StoredCall(
        run_id=row[1],
        call_id=row[2],
        parent_call_id=row[3],
        agent_alias=row[4],
        kwargs=decode_kwargs(row[5]),
        started_at=row[6],
        finished_at=row[7],
        outcome=row[8],
        error_type=row[9],
        error=row[10],
    )


def _ids(db: sqlite3.Connection, call_pk: int, direction: Direction) -> tuple[int, list[int]]:
    row = db.execute(
        "SELECT count, message_ids FROM call_messages WHERE call = ? AND direction = ?", (call_pk, direction)
    ).fetchone()
    if row is None:
        return 0, []
    return int(row[0]), unpack_ids(row[1])


def _rows_by_id(
    db: sqlite3.Connection, ids: Sequence[int]
) -> dict[int, tuple[str, str, str, str | None, int]]:
    rows: dict[int, tuple[str, str, str, str | None, int]] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in db.execute(
            f"SELECT id, hash_key, class, content, fields, nested FROM messages WHERE id IN ({marks})", chunk
        ):
            rows[row[0]] = (row[1], row[2], row[3], row[4], row[5])
    return rows


def _load_dict(db: sqlite3.Connection, by_key: str, hash_key: str) -> dict[str, Any] | None:
    try:
        prefix = key_prefix(hash_key)
    except ValueError:  # not a hash key: nothing is stored under it
        return None
    row = db.execute(by_key, (prefix, hash_key)).fetchone()
    if row is None:
        return None
    return decode_row(row[0], row[1], row[2], row[3], lambda k: _require_dict(db, by_key, k))


def _require_dict(db: sqlite3.Connection, by_key: str, hash_key: str) -> dict[str, Any]:
    data = _load_dict(db, by_key, hash_key)
    if data is None:
        raise LookupError(f"the store references message {hash_key[:12]}, which it does not hold")
    return data
