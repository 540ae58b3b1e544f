"""``SQLiteStore``: the embedded default message store (standard-library ``sqlite3``)."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import attrs

from miniagents._messages import Message
from miniagents._records import CallOutcome, CallRecord
from miniagents.persistence._reader import CallRef, StoredCall, StoredRun, StoreReader
from miniagents.persistence._writer import CommitHook, Writer

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

T = TypeVar("T")


@attrs.frozen
class StoreStatistics:
    """A snapshot of a store's writer, from :meth:`SQLiteStore.statistics`."""

    queued: int
    commits: int
    stored_messages: int
    stored_calls: int
    failed_items: int
    #: How many times handing items over waited for the writer because ``max_queued`` items were waiting,
    #: and for how long in all (seconds).
    throttled: int = 0
    throttled_seconds: float = 0.0


class SQLiteStore:
    """Persist every message and the interaction graph of a run in one SQLite file.

    Use it as ``MiniAgents(store=SQLiteStore("run.db"))`` (the runtime then hands messages over in batches,
    through :meth:`on_persist_messages`), or pass ``store.on_persist_message`` (and
    ``store.on_call_finished``) as handlers and close the store yourself (``await store.aclose()``, or
    ``async with store:`` around the block).

    How it writes: the handlers only append to an in-memory queue (no I/O, no lock held; they block the event
    loop only while ``max_queued`` items wait, i.e. when the writer has fallen far behind).  A writer thread
    owns the only write connection (WAL mode) and commits the queue in batches:
    when ``batch_size`` items are waiting or ``flush_interval`` seconds after the first one, in one
    transaction per batch.  Messages are stored once per ``hash_key`` (also across runs and processes sharing
    the file); nested messages are stored as rows of their own and referenced.  Each finished call is stored
    with its alias, kwargs, parent, times, outcome and its input and reply messages in order.

    Guarantees:

    * When the ``MiniAgents`` block exits (normally, or because agents failed or were cancelled), the store
      is exited after the runtime handed it every message and call record, and exiting commits them all
      before it returns: everything a consumer received and every message an agent sent is in the file.
    * Exactly once: a message is one row whatever the number of times, calls, runs or processes that
      produced it; a call is one row per ``(run_id, call_id)``.
    * Crash safety: a commit is atomic and survives the process being killed (``durable=True`` also
      survives power loss); a killed run leaves a file that opens cleanly with every committed batch, and a
      new run appends to it without duplicates.
    * Errors are never swallowed: a failed write (the whole batch is retried item by item, so only failing
      items are lost) is raised from the next handler call (the runtime raises it when the block exits) or
      from closing the store.  A slow or failing store never changes what agents and consumers see.

    Reads (:meth:`get`, :meth:`calls`, :meth:`replies`, :meth:`conversation` ...) are awaitable: they first
    wait until everything queued so far is committed, then read in a worker thread.  :attr:`reader` gives the
    same queries synchronously (see :class:`StoreReader`, also used by ``python -m miniagents.persistence``).

    Memory stays bounded however many messages a long-lived context hands it: the queue holds what is not
    committed yet, at most ``max_queued`` items (beyond that, handing over waits for the writer), the writer
    remembers the row ids of at most ~131,000 recent messages (to record calls
    without a lookup; more only while a single batch has more), and SQLite's page cache is at most 64 MiB for
    the writer's connection (2 MiB for the reader's).  Because the store keeps each message once by itself, it declares
    :attr:`deduplicates_by_hash_key`, and a ``MiniAgents`` context whose only handlers are stores like it
    remembers a bounded number of recent keys instead of every key it has seen.
    """

    #: Part of the :class:`~miniagents.Store` protocol: a message handed over again (after the context dropped
    #: its key from its bounded cache, or in a later run) is found by its key and not stored twice.
    deduplicates_by_hash_key = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        batch_size: int = 20000,
        flush_interval: float = 0.05,
        durable: bool = False,
        timeout: float = 30.0,
        on_commit: CommitHook | None = None,
        max_queued: int | None = 100_000,
    ) -> None:
        """Create a store for the file *path* (created and migrated on first use).

        Args:
            path: the database file (``":memory:"`` is not supported: writer and readers need one file).
            batch_size: the most items per transaction; also commits early once this many are queued.
            flush_interval: how long (seconds) a batch may wait for more items before it is committed.
            durable: ``synchronous=FULL`` (commits survive power loss) instead of ``NORMAL``.
            timeout: how long to wait for another process's write lock before a write fails.
            on_commit: called in the writer thread after each commit with the hash keys of the messages that
                commit made durable (for monitoring and tests); its exceptions are raised like write errors.
            max_queued: the most items (messages and call records) waiting for the writer thread, give or take
                one ``batch_size`` (it is checked once per batch): handing over more blocks the calling thread
                (the event loop, through the ``MiniAgents`` persistence worker)
                until half of them are committed, so a store that falls behind for long holds bounded memory
                instead of a queue that grows until the process runs out of it.  Reached only under sustained
                overload, e.g. an event loop that never idles, which starves the writer thread of the GIL;
                :meth:`statistics` counts the waits.  ``None``: never wait (the queue is unbounded).

        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if flush_interval < 0:
            raise ValueError("flush_interval must not be negative")
        if max_queued is not None and max_queued < batch_size:
            raise ValueError(f"max_queued must be at least batch_size ({batch_size}), got {max_queued}")
        self.path = os.fspath(path)
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise ValueError("SQLiteStore needs a file path")
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.durable = durable
        self.timeout = timeout
        self.on_commit = on_commit
        self.max_queued = max_queued
        self._writer: Writer | None = None
        self._reader: StoreReader | None = None
        self._reported = 0
        self._depth = 0
        self._done_writers: list[Writer] = []

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- the persistence handlers (called by the MiniAgents persistence worker) ----------------------------
    def on_persist_message(self, message: Message) -> None:
        """Queue *message* for storage.  Raises an earlier write error (once) after queueing."""
        writer = self._writer
        if writer is None or writer.finished:
            writer = self._start()
        queue = writer.queue  # Writer.put, inlined: this runs on the event loop thread for every message
        queue.append(message)
        size = len(queue)
        if size == 1 or size % writer.batch_size == 0:
            writer.wake()
            if size > writer.max_queued:  # checked once per batch_size items: nothing added per message
                writer.throttle()
        if writer.errors or writer.open_error is not None:
            self._raise_new_errors(writer)

    def on_persist_messages(self, messages: list[Message]) -> None:
        """Queue *messages* for storage in one step (the batch form ``MiniAgents(store=...)`` uses).

        Raises an earlier write error (once) after queueing.
        """
        writer = self._writer
        if writer is None or writer.finished:
            writer = self._start()
        queue = writer.queue
        before = len(queue)
        queue.extend(messages)
        batch_size = writer.batch_size
        if before == 0 or (before + len(messages)) // batch_size != before // batch_size:
            writer.wake()
        if before + len(messages) > writer.max_queued:
            writer.throttle()
        if writer.errors or writer.open_error is not None:
            self._raise_new_errors(writer)

    def on_call_finished(self, record: CallRecord) -> None:
        """Queue a finished call's record for storage.  Raises an earlier write error (once) after queueing."""
        writer = self._writer
        if writer is None or writer.finished:
            writer = self._start()
        writer.put(record)
        if writer.errors or writer.open_error is not None:
            self._raise_new_errors(writer)

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def __aenter__(self) -> SQLiteStore:
        """Open the file (creating and migrating it) and start the writer; raises if the file cannot be used."""
        self._depth += 1
        try:
            writer = self._writer
            if writer is None or writer.finished:
                writer = self._start()
            await anyio.to_thread.run_sync(writer.ready.wait)
            if writer.open_error is not None:
                self._raise_new_errors(writer)
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(Exception):  # the error that stopped the entry is raised
                        await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Commit everything queued and stop the writer (when the outermost ``async with`` exits)."""
        self._depth -= 1
        if self._depth == 0:
            await self.aclose()

    async def aclose(self) -> None:
        """Commit everything queued, stop the writer thread and raise write errors not raised yet.

        Shielded from cancellation: a cancelled run still gets what it produced committed.
        """
        with anyio.CancelScope(shield=True):
            writer = self._writer
            if writer is not None:
                request = writer.request_flush(closing=True)
                await anyio.to_thread.run_sync(writer.wait, request)
                await anyio.to_thread.run_sync(writer.join)
            self._close_reader()
        if writer is not None:
            self._raise_new_errors(writer)

    def close(self) -> None:
        """Synchronous :meth:`aclose` (blocks the calling thread; not for use inside an event loop)."""
        writer = self._writer
        if writer is not None:
            request = writer.request_flush(closing=True)
            writer.wait(request)
            writer.join()
        self._close_reader()
        if writer is not None:
            self._raise_new_errors(writer)

    async def flush(self) -> None:
        """Wait until every item queued so far is committed; raise write errors not raised yet."""
        writer = self._writer
        if writer is None:
            return
        if not writer.finished:
            request = writer.request_flush()
            await anyio.to_thread.run_sync(writer.wait, request, abandon_on_cancel=True)
        self._raise_new_errors(writer)

    def statistics(self) -> StoreStatistics:
        """The writer's counters (of the current or last writer thread)."""
        writer = self._writer
        if writer is None:
            return StoreStatistics(0, 0, 0, 0, 0)
        queued = sum(1 for item in list(writer.queue) if isinstance(item, (Message, CallRecord)))
        return StoreStatistics(
            queued,
            writer.commits,
            writer.stored_messages,
            writer.stored_calls,
            writer.failed_items,
            writer.throttled,
            writer.throttled_seconds,
        )

    def _start(self) -> Writer:
        writer = Writer(
            self.path,
            batch_size=self.batch_size,
            flush_interval=self.flush_interval,
            durable=self.durable,
            timeout=self.timeout,
            on_commit=self.on_commit,
            max_queued=self.max_queued,
        )
        self._writer = writer
        self._reported = 0
        writer.start()
        atexit.register(_close_at_exit, weakref.ref(writer))
        return writer

    def _raise_new_errors(self, writer: Writer) -> None:
        errors = [writer.open_error] if writer.open_error is not None else []
        errors.extend(writer.errors)
        new = errors[self._reported :]
        if not new:
            return
        self._reported = len(errors)
        if len(new) == 1:
            raise new[0]
        raise ExceptionGroup(
            f"{len(new)} errors writing to {self.path!r}", [e for e in new if isinstance(e, Exception)]
        )

    # -- reading --------------------------------------------------------------------------------------------
    @property
    def reader(self) -> StoreReader:
        """Synchronous queries on the file (what is committed; see :meth:`flush`)."""
        reader = self._reader
        if reader is None:
            reader = self._reader = StoreReader(self.path)
        return reader

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        await self.flush()
        reader = self.reader
        return await anyio.to_thread.run_sync(lambda: fn(reader, *args, **kwargs))

    async def get(self, hash_key: str) -> Message | None:
        """The message stored under *hash_key*, as its own class, or ``None``."""
        return await self._read(StoreReader.get, hash_key)

    async def hash_keys(self) -> set[str]:
        """The hash key of every stored message."""
        return await self._read(StoreReader.hash_keys)

    async def runs(self) -> list[StoredRun]:
        """Every run that finished a call, oldest first."""
        return await self._read(StoreReader.runs)

    async def calls(
        self,
        *,
        run_id: str | None = None,
        agent_alias: str | None = None,
        outcome: CallOutcome | None = None,
        parent_call_id: int | Literal["any"] | None = "any",
    ) -> list[StoredCall]:
        """Stored calls matching the filters, in the order they started (see :meth:`StoreReader.calls`)."""
        return await self._read(
            StoreReader.calls,
            run_id=run_id,
            agent_alias=agent_alias,
            outcome=outcome,
            parent_call_id=parent_call_id,
        )

    async def call(self, ref: CallRef) -> StoredCall:
        """The call *ref* (``(run_id, call_id)``, a :class:`StoredCall` or a ``CallRecord``) names."""
        return await self._read(StoreReader.call, ref)

    async def children(self, ref: CallRef) -> list[StoredCall]:
        """The calls started by the call *ref* names."""
        return await self._read(StoreReader.children, ref)

    async def inputs(self, ref: CallRef) -> list[Message]:
        """The input messages of the call *ref* names, in order."""
        return await self._read(StoreReader.inputs, ref)

    async def replies(self, ref: CallRef) -> list[Message]:
        """The replies of the call *ref* names, in order."""
        return await self._read(StoreReader.replies, ref)

    async def conversation(
        self, agent_alias: str, *, run_id: str | None = None, completed_only: bool = False
    ) -> list[Message]:
        """The chat history of *agent_alias* across runs (see :meth:`StoreReader.conversation`)."""
        return await self._read(
            StoreReader.conversation, agent_alias, run_id=run_id, completed_only=completed_only
        )


def _close_at_exit(ref: weakref.ref[Writer]) -> None:
    """Commit what a store used without ``async with`` / ``aclose()`` still holds when the interpreter exits."""
    writer = ref()
    if writer is not None and writer.alive:
        writer.wait(writer.request_flush(closing=True))
