"""The writer thread: owns the only write connection and commits queued items in batches.

The event loop never touches SQLite.  :meth:`Writer.put` appends to a ``deque`` (atomic under the GIL) and,
on the first item after the queue was empty and on every ``batch_size``-th item, sets a ``threading.Event``;
nothing else happens on the caller's thread.  The thread sleeps until woken, then gives a batch up to
``flush_interval`` seconds to fill (less when ``batch_size`` items are queued or a flush is requested), and
commits up to ``batch_size`` items per ``BEGIN IMMEDIATE`` transaction.

A batch that fails is rolled back and its items are retried one per transaction, so one bad item (a constraint,
an unencodable value) loses only itself; every failure is kept in :attr:`Writer.errors` for the store to raise.
Committed data survives a crash of the process (WAL with ``synchronous=NORMAL``); ``durable=True`` selects
``synchronous=FULL``, which also survives power loss.
"""

from __future__ import annotations

import functools
import itertools
import operator
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from miniagents._encoding import class_path
from miniagents._frozen import EMPTY
from miniagents._messages import Message
from miniagents._records import CallRecord
from miniagents.persistence._codec import encode_kwargs, encode_message, is_simple, pack_ids
from miniagents.persistence._schema import key_prefix, migrate

Item = Message | CallRecord
CommitHook = Callable[[Sequence[str]], None]
_MAX_KEPT_ERRORS = 20
# The row ids of recent messages (the writer's only per-message memory, ~80-190 bytes each): lets a call record
# and a message handed over again skip a lookup.  Cleared when a commit would take it past the limit, then
# refilled with that commit's messages, so it holds max(limit, one batch's messages) at most; a miss costs an
# INSERT OR IGNORE and a SELECT by key prefix, never a wrong id.  Large enough for a call of 100k messages.
_ID_CACHE_LIMIT = 1 << 17
_SELECT_CHUNK = 500
# The message tuples of recent call records and their ids (see Writer._ids_of): a call's replies are most often
# the next call's input (a pipeline, a forwarding agent), so its ids are looked up once, not once per record.
_RECENT_SEQUENCES = 4
# Shorter tuples are looked up each time: comparing them with the recent ones would cost as much.
_MIN_REMEMBERED_SEQUENCE = 16
# The cached key (set by the runtime, which computes every key before handing a message over); ``None`` when
# it was not computed, which fails the id lookup and takes the slow path through the ``hash_key`` property.
_cached_key = operator.attrgetter("_hash_key_cache")
_INSERT_HEAD = (
    "INSERT OR IGNORE INTO messages (id, key_prefix, hash_key, class, content, fields, nested, stored_at)"
)
_INSERT_ROW = _INSERT_HEAD + " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# Content-only messages: fields and nested take their defaults, and class and stored_at are bound once per
# statement (constants, after the row columns): four values to bind per row instead of six.
_INSERT_SIMPLE_HEAD = "INSERT OR IGNORE INTO messages (id, key_prefix, hash_key, content, class, stored_at)"
_SIMPLE_WIDTH = 4
_INSERT_CALL_HEAD = (
    "INSERT OR IGNORE INTO calls (id, run_id, call_id, parent_call_id, agent_alias, kwargs, started_at,"
    " finished_at, outcome, error_type, error)"
)
_CALL_WIDTH = 11
_INSERT_CALL_MESSAGES_HEAD = "INSERT INTO call_messages (call, direction, count, message_ids)"
_CALL_MESSAGES_WIDTH = 4
#: Bound values per statement when SQLite cannot tell (its limit before 3.32, and on Python 3.10).
_MIN_VARIABLES = 999
#: Rows per multi-row INSERT at most (a power of two; larger statements gain nothing measurable).
_MAX_ROWS_PER_INSERT = 4096


@functools.lru_cache(maxsize=64)
def _values_sql(head: str, width: int, rows: int, constants: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    values = ",".join([row] * rows)
    if not constants:
        return f"{head} VALUES {values}"
    columns = ", ".join(f"column{i + 1}" for i in range(width))
    return f"{head} SELECT {columns}, {','.join('?' * constants)} FROM (VALUES {values})"


def insert_flat(
    db: sqlite3.Connection,
    head: str,
    width: int,
    values: Sequence[Any],
    max_variables: int,
    constants: Sequence[Any] = (),
) -> None:
    """``INSERT`` the rows laid end to end in *values* (*width* values each) with multi-row statements.

    ``executemany`` runs one SQLite step per row and releases and re-takes the GIL around each: with the
    event loop busy in the other thread, every re-take waits for it.  One statement of up to 4096 rows binds
    all of them (with the GIL, as ``executemany`` does) and then inserts them in one step without it: about a
    quarter less CPU, and the insert proper runs in parallel with the event loop.  *constants* are values the
    same in every row (the last columns of *head*): bound once per statement, not once per row.  Statement
    sizes are powers of two, so a handful of prepared statements (cached by ``sqlite3``) serve every batch.
    """
    count = len(values) // width
    if not count:
        return
    size = _MAX_ROWS_PER_INSERT
    while size > 1 and size * width + len(constants) > max_variables:
        size >>= 1
    start = 0
    while start < count:
        while size > count - start:
            size >>= 1
        chunk = values[start * width : (start + size) * width]
        db.execute(
            _values_sql(head, width, size, len(constants)),
            [*constants, *chunk] if constants else chunk,
        )
        start += size


def insert_rows(
    db: sqlite3.Connection, head: str, rows: Sequence[tuple[Any, ...]], max_variables: int
) -> None:
    """``INSERT`` *rows* (tuples of one width) with multi-row ``VALUES`` statements (see :func:`insert_flat`)."""
    if rows:
        insert_flat(db, head, len(rows[0]), list(itertools.chain.from_iterable(rows)), max_variables)


def max_variables(db: sqlite3.Connection) -> int:
    """How many values one statement may bind on *db*."""
    getlimit = getattr(db, "getlimit", None)  # Python 3.11+
    category = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", None)
    if getlimit is None or category is None:  # pragma: no cover - Python 3.10
        return _MIN_VARIABLES
    return int(getlimit(category))


class _SimpleClasses(dict[type, "str | None"]):
    """``type -> "module:QualName"`` for message classes with no fields but ``content``, else ``None``."""

    def __missing__(self, cls: type) -> str | None:
        name = class_path(cls) if is_simple(cls) else None
        self[cls] = name
        return name


_SIMPLE_CLASS = _SimpleClasses()


class FlushRequest:
    """A marker in the queue: set once every item queued before it is committed (or failed)."""

    __slots__ = ("closing", "done")

    def __init__(self, *, closing: bool = False) -> None:
        self.closing = closing
        self.done = threading.Event()


def connect(path: str, *, timeout: float, durable: bool) -> sqlite3.Connection:
    """Open *path* in autocommit mode (transactions are explicit), WAL, and migrate the schema."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal" and path != ":memory:":
            raise sqlite3.OperationalError(f"could not switch {path!r} to WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("PRAGMA cache_size=-65536")  # 64 MiB: the key index stays in memory
        db.execute("PRAGMA wal_autocheckpoint=10000")  # checkpoint (and fsync) every ~40 MB of WAL, not 4 MB
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


class Writer:
    """One writer thread and its queue (see the module docstring)."""

    def __init__(
        self,
        path: str,
        *,
        batch_size: int,
        flush_interval: float,
        durable: bool,
        timeout: float,
        on_commit: CommitHook | None,
        max_queued: int | None = None,
    ) -> None:
        self.path = path
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.durable = durable
        self.timeout = timeout
        self.on_commit = on_commit
        #: Above this many queued items, handing over more waits (see :meth:`throttle`); never when ``None``.
        self.max_queued = sys.maxsize if max_queued is None else max_queued
        self.queue: deque[Item | FlushRequest] = deque()
        self.errors: list[BaseException] = []
        self.failed_items = 0
        self.commits = 0
        self.stored_messages = 0
        self.stored_calls = 0
        self.throttled = 0
        self.throttled_seconds = 0.0
        self.ready = threading.Event()
        self.open_error: BaseException | None = None
        self.finished = False
        self._wake = threading.Event()
        self._committed_one = threading.Event()  # set after every commit, for throttle()
        self._urgent = False
        self._ids: dict[str, int] = {}
        self._recent_sequences: list[tuple[tuple[Message, ...], list[int]]] = []
        self._db: sqlite3.Connection | None = None
        self._max_variables = _MIN_VARIABLES
        self._thread = threading.Thread(
            target=self._run, name=f"miniagents-sqlite-writer {path}", daemon=True
        )

    # -- caller side (any thread; the event loop in practice) ---------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def put(self, item: Item) -> None:
        """Queue *item*; blocks only when more than :attr:`max_queued` items wait (see :meth:`throttle`)."""
        queue = self.queue
        queue.append(item)
        size = len(queue)
        if size == 1 or size % self.batch_size == 0:
            self._wake.set()
            if size > self.max_queued:
                self.throttle()

    def throttle(self) -> None:
        """Block the calling thread until at most half of :attr:`max_queued` items wait (or the thread ended).

        The bound on the queue's memory when items come faster than they are committed for long.  That
        happens without any slow disk: while the event loop never idles, CPython hardly ever hands the GIL
        to a waiting thread (the loop releases and re-takes it all the time, so no switch is forced), and the
        writer thread, which needs the GIL for its Python work, starves.  Blocking here releases the GIL
        until the writer has caught up.
        """
        started = time.perf_counter()
        self.throttled += 1
        self._urgent = True
        self._wake.set()
        low = self.max_queued // 2
        committed = self._committed_one
        while len(self.queue) > low and not self.finished:
            committed.clear()
            if len(self.queue) <= low or self.finished:
                break
            committed.wait(0.05)
        self.throttled_seconds += time.perf_counter() - started

    def wake(self) -> None:
        """Wake the thread (after appending to :attr:`queue` directly, as :meth:`put` does)."""
        self._wake.set()

    def request_flush(self, *, closing: bool = False) -> FlushRequest:
        """Ask the thread to commit everything queued so far now (and to stop afterwards if *closing*)."""
        request = FlushRequest(closing=closing)
        self.queue.append(request)
        self._urgent = True
        self._wake.set()
        return request

    def wait(self, request: FlushRequest) -> None:
        """Block until *request* is done (or the thread died)."""
        while not request.done.wait(0.05):
            if not self._thread.is_alive():
                return

    def join(self) -> None:
        self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._db = connect(self.path, timeout=self.timeout, durable=self.durable)
            self._max_variables = max_variables(self._db)
        except BaseException as exc:  # reported by the store
            self.open_error = exc
            self.finished = True
            self.ready.set()
            return
        self.ready.set()
        try:
            self._loop()
        finally:
            self.finished = True
            self._committed_one.set()
            self._db.close()

    def _loop(self) -> None:
        queue = self.queue
        wake = self._wake
        while True:
            if not queue:
                # Idle: let go of the recent calls' messages (kept only to serve the next records of a burst).
                self._recent_sequences = []
                wake.wait()
                wake.clear()
                continue
            if not self._urgent and len(queue) < self.batch_size:
                wake.wait(self.flush_interval)
                wake.clear()
            self._urgent = False
            closing = False
            while queue and not closing:
                batch: list[Item] = []
                request: FlushRequest | None = None
                while queue and len(batch) < self.batch_size:
                    item = queue.popleft()
                    if isinstance(item, FlushRequest):
                        request = item
                        break
                    batch.append(item)
                if batch:
                    self._commit(batch)
                    self._committed_one.set()
                if request is not None:
                    request.done.set()
                    closing = request.closing
            if closing:
                for item in queue:  # a store that is closed takes nothing more; late flushes return
                    if isinstance(item, FlushRequest):
                        item.done.set()
                return

    def _commit(self, batch: list[Item]) -> None:
        try:
            keys = self._write(batch)
        except Exception as exc:
            if len(batch) == 1:
                self._failed(exc, batch[0])
                return
            for item in batch:  # isolate the item(s) that fail
                try:
                    keys = self._write([item])
                except Exception as item_exc:
                    self._failed(item_exc, item)
                else:
                    self._committed(keys)
            return
        self._committed(keys)

    def _committed(self, keys: Sequence[str]) -> None:
        self.commits += 1
        hook = self.on_commit
        if hook is not None:
            try:
                hook(keys)
            except Exception as exc:
                self._keep(exc)

    def _failed(self, exc: Exception, item: Item) -> None:
        self.failed_items += 1
        what = (
            f"message {item.hash_key[:12]}"
            if isinstance(item, Message)
            else f"call #{item.call_id} of {item.agent_alias!r} (run {item.run_id[:8]})"
        )
        note = f"miniagents.persistence: could not store {what} in {self.path!r}"
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:  # pragma: no cover - Python 3.10: the exceptiongroup backport prints __notes__ too
            exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]
        self._keep(exc)

    def _keep(self, exc: BaseException) -> None:
        if len(self.errors) < _MAX_KEPT_ERRORS:
            self.errors.append(exc)

    def _write(self, batch: list[Item]) -> list[str]:
        """Store *batch* in one transaction; return the keys of the messages it stored or found stored."""
        db = self._db
        assert db is not None
        ids = self._ids
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            next_id: int = db.execute("SELECT coalesce(max(id), 0) + 1 FROM messages").fetchone()[0]
            new: dict[str, int] = {}
            rows: list[tuple[Any, ...]] = []  # full rows (_INSERT_HEAD)
            # Content-only rows by class, laid end to end: id, key_prefix, hash_key, content (_INSERT_SIMPLE_HEAD).
            simple_rows: dict[str, list[Any]] = {}
            refs: list[tuple[int, int, int]] = []

            def ensure(message: Message) -> int:
                nonlocal next_id
                key = message.hash_key
                known = ids.get(key)
                if known is None:
                    known = new.get(key)
                if known is not None:
                    return known
                cls, content, fields, nested = encode_message(message)
                children = [ensure(child) for child in nested]
                message_id = next_id
                next_id += 1
                new[key] = message_id
                rows.append((message_id, key_prefix(key), key, cls, content, fields, len(children), now))
                if children:
                    refs.extend((message_id, position, child) for position, child in enumerate(children))
                return message_id

            calls: list[tuple[CallRecord, list[int], list[int]]] = []
            mapped: list[tuple[tuple[Message, ...], list[int]]] = []  # this batch's, for _ids_of
            simple = _SIMPLE_CLASS
            prefix_of = key_prefix
            # The last content-only class seen and its rows: a batch mostly holds one class.
            last_type: type | None = None
            flat: list[Any] = []
            for item in batch:
                if isinstance(item, Message):
                    key = _cached_key(item) or item.hash_key
                    if key in ids or key in new:
                        continue
                    extra = item._extra
                    if type(item) is last_type and (extra is EMPTY or not extra):
                        new[key] = next_id
                        flat += (next_id, prefix_of(key), key, item.content)
                        next_id += 1
                        continue
                    cls = simple[type(item)]
                    if cls is not None and (extra is EMPTY or not extra):  # content only: no encoding at all
                        last_type = type(item)
                        flat = simple_rows.setdefault(cls, [])
                        new[key] = next_id
                        flat += (next_id, prefix_of(key), key, item.content)
                        next_id += 1
                    else:
                        ensure(item)
                else:
                    inputs = self._ids_of(item.input_messages, ensure, mapped)
                    calls.append((item, inputs, self._ids_of(item.reply_messages, ensure, mapped)))
            if rows or simple_rows:
                before = db.total_changes
                for cls, flat in simple_rows.items():
                    insert_flat(db, _INSERT_SIMPLE_HEAD, _SIMPLE_WIDTH, flat, self._max_variables, (cls, now))
                insert_rows(db, _INSERT_HEAD, rows, self._max_variables)
                inserted = db.total_changes - before
                if inserted != len(new):
                    # Some were stored already (an earlier run, another process), or share a key prefix.
                    remap, collided = self._existing(db, new)
                    if collided:
                        inserted += self._store_collided(db, collided, rows, simple_rows, now, new, remap)
                    if remap:
                        refs = [(remap.get(p, p), pos, remap.get(c, c)) for p, pos, c in refs]
                        remapped: dict[int, list[int]] = {}  # by id(): a list may serve several calls

                        def fix(old: list[int]) -> list[int]:
                            fixed = remapped.get(id(old))
                            if fixed is None:
                                fixed = remapped[id(old)] = [remap.get(i, i) for i in old]
                            return fixed

                        calls = [(r, fix(ins), fix(outs)) for r, ins, outs in calls]
                        mapped = [(messages, fix(message_ids)) for messages, message_ids in mapped]
                inserted_messages = inserted
            else:
                inserted_messages = 0
            if refs:
                db.executemany("INSERT OR IGNORE INTO message_refs VALUES (?, ?, ?)", refs)
            inserted_calls = self._write_calls(db, calls, self._max_variables) if calls else 0
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self.stored_messages += inserted_messages
        self.stored_calls += inserted_calls
        if len(ids) + len(new) > _ID_CACHE_LIMIT:
            ids.clear()
        ids.update(new)
        if mapped:  # committed: their ids are real now
            self._recent_sequences = (mapped[::-1] + self._recent_sequences)[:_RECENT_SEQUENCES]
        if self.on_commit is None:
            return []
        keys = list(new)
        keys.extend(item.hash_key for item in batch if isinstance(item, Message) and item.hash_key not in new)
        return keys

    def _ids_of(
        self,
        messages: tuple[Message, ...],
        ensure: Callable[[Message], int],
        mapped: list[tuple[tuple[Message, ...], list[int]]],
    ) -> list[int]:
        """The message ids of *messages* (a call's inputs or replies), storing those not stored yet.

        A tuple equal to one mapped in this batch (*mapped*) or in a recent commit gets that one's ids (the same
        list: the caller only reads it).  Equal tuples hold equal messages, so equal keys: the comparison
        (identity first, element by element, in C) is what makes a pipeline's records cheap.
        """
        long = len(messages) >= _MIN_REMEMBERED_SEQUENCE
        if long:
            for known in (mapped, self._recent_sequences):
                for seen, seen_ids in known:
                    if seen is messages or (len(seen) == len(messages) and seen == messages):
                        return seen_ids
        ids = self._ids
        try:  # the common case: every message was persisted (by an earlier item or batch) already
            found = list(map(ids.__getitem__, map(_cached_key, messages)))
        except KeyError:
            found = [ids[k] if (k := m.hash_key) in ids else ensure(m) for m in messages]
        if long:
            mapped.append((messages, found))
        return found

    @staticmethod
    def _existing(db: sqlite3.Connection, new: dict[str, int]) -> tuple[dict[int, int], list[str]]:
        """Point *new* at the ids the rows really have.

        Returns the provisional-to-real id remapping and the keys that were not stored because another
        message holds their key prefix.
        """
        remap: dict[int, int] = {}
        collided: list[str] = []
        keys = list(new)
        for start in range(0, len(keys), _SELECT_CHUNK):
            chunk: dict[int, list[str]] = {}
            for key in keys[start : start + _SELECT_CHUNK]:
                chunk.setdefault(key_prefix(key), []).append(key)
            marks = ",".join("?" * len(chunk))
            for real, prefix, stored_key in db.execute(
                f"SELECT id, key_prefix, hash_key FROM messages WHERE key_prefix IN ({marks})", list(chunk)
            ):
                for key in chunk[prefix]:
                    if stored_key != key:
                        collided.append(key)
                        continue
                    provisional = new[key]
                    if provisional != real:
                        remap[provisional] = real
                        new[key] = real
        return remap, collided

    @staticmethod
    def _store_collided(
        db: sqlite3.Connection,
        collided: list[str],
        rows: list[tuple[Any, ...]],
        simple_rows: dict[str, list[Any]],
        now: float,
        new: dict[str, int],
        remap: dict[int, int],
    ) -> int:
        """Store the messages whose key prefix another message holds, with ``key_prefix`` ``NULL``.

        A message stored that way by an earlier batch is found (by its full key), not stored again.  Returns
        how many rows were added.
        """
        by_key = {row[2]: row for row in rows}
        for cls, flat in simple_rows.items():
            for i in range(0, len(flat), _SIMPLE_WIDTH):
                message_id, prefix, key, content = flat[i : i + _SIMPLE_WIDTH]
                by_key[key] = (message_id, prefix, key, cls, content, None, 0, now)
        added = 0
        for key in collided:
            found = db.execute(
                "SELECT id FROM messages WHERE key_prefix IS NULL AND hash_key = ?", (key,)
            ).fetchone()
            if found is not None:
                if new[key] != found[0]:
                    remap[new[key]] = found[0]
                    new[key] = found[0]
                continue
            row = by_key[key]
            db.execute(_INSERT_ROW, (row[0], None, *row[2:]))
            added += 1
        return added

    @staticmethod
    def _write_calls(
        db: sqlite3.Connection, calls: list[tuple[CallRecord, list[int], list[int]]], max_variables: int
    ) -> int:
        """Store the records of *calls* (each with its input and reply message ids); return how many were new.

        A few multi-row statements for the whole batch, not four statements per call: each statement releases
        and re-takes the GIL, and with the event loop busy every re-take waits for it (one statement per call
        left the writer thread far behind a service making thousands of calls per second).  Calls get ids
        after the largest one (the transaction holds the write lock); a call stored already (same ``run_id``
        and ``call_id``) is ignored, with its messages, and leaves its run's times as they are.
        """
        first: int = db.execute("SELECT coalesce(max(id), 0) + 1 FROM calls").fetchone()[0]
        values: list[Any] = []
        for offset, (record, _, _) in enumerate(calls):
            values += (
                first + offset,
                record.run_id,
                record.call_id,
                record.parent_call_id,
                record.agent_alias,
                encode_kwargs(record.kwargs),
                record.started_at,
                record.finished_at,
                record.outcome,
                record.error_type,
                record.error,
            )
        before = db.total_changes
        insert_flat(db, _INSERT_CALL_HEAD, _CALL_WIDTH, values, max_variables)
        inserted = db.total_changes - before
        new_calls: Sequence[int] = range(len(calls))
        if inserted != len(calls):
            stored = {row[0] for row in db.execute("SELECT id FROM calls WHERE id >= ?", (first,))}
            new_calls = [offset for offset in new_calls if first + offset in stored]
        links: list[Any] = []
        runs: dict[str, tuple[float, float]] = {}
        packed: dict[int, bytes] = {}  # by id(): one list of ids often serves several calls (see _ids_of)

        def pack(message_ids: list[int]) -> bytes:
            blob = packed.get(id(message_ids))
            if blob is None:
                blob = packed[id(message_ids)] = pack_ids(message_ids)
            return blob

        for offset in new_calls:
            record, input_ids, reply_ids = calls[offset]
            call = first + offset
            links += (call, "input", len(input_ids), pack(input_ids))
            links += (call, "reply", len(reply_ids), pack(reply_ids))
            span = runs.get(record.run_id)
            runs[record.run_id] = (
                (record.started_at, record.finished_at)
                if span is None
                else (min(span[0], record.started_at), max(span[1], record.finished_at))
            )
        insert_flat(db, _INSERT_CALL_MESSAGES_HEAD, _CALL_MESSAGES_WIDTH, links, max_variables)
        for run_id, (started_at, finished_at) in runs.items():
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET"
                " started_at = min(started_at, excluded.started_at),"
                " finished_at = max(finished_at, excluded.finished_at)",
                (run_id, started_at, finished_at),
            )
        return inserted
