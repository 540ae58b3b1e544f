"""Hand work between the application's event loop (trio or asyncio) and the asyncio loop DBOS runs on.

DBOS runs its async workflows on the asyncio loop that launched it: here an asyncio loop in a helper thread
(:class:`DBOSLoop`), whichever backend the application uses.  Neither side ever blocks the other: work is
scheduled with the loops' thread-safe ``call soon`` (``TrioToken.run_sync_soon``,
``loop.call_soon_threadsafe``) and results come back the same way.  A cancelled waiter cancels the work it
waits for, on the other loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import sniffio

__all__ = ["Bridge", "DBOSLoop"]

T = TypeVar("T")

#: What :meth:`Bridge.to_dbos` receives for a task the DBOS loop cancelled.
_CANCELLED = object()


class DBOSLoop:
    """An asyncio event loop running in a daemon thread of its own, until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="miniagents-durable-dbos", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def stop(self) -> None:
        """Cancel the tasks still on the loop, stop it and wait for its thread (blocking: call it in a thread)."""

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(shutdown()))
        self._thread.join()


class Bridge:
    """The two loops of one durable runtime and the way work and results cross between them.

    *spawn_app* starts a task on the application's loop (called on that loop).
    """

    def __init__(self, dbos_loop: asyncio.AbstractEventLoop, spawn_app: Callable[..., None]) -> None:
        self.dbos_loop = dbos_loop
        self._spawn_app = spawn_app
        if sniffio.current_async_library() == "trio":
            import trio

            token = trio.lowlevel.current_trio_token()

            def app_soon(fn: Callable[[], object]) -> None:
                token.run_sync_soon(fn)

        else:
            app_loop = asyncio.get_running_loop()
            app_context = contextvars.copy_context()

            async def in_task(fn: Callable[[], object]) -> None:
                fn()  # in a task: anyio (sniffio) tells the backend by the current task

            def start(fn: Callable[[], object]) -> None:
                app_context.copy().run(app_loop.create_task, in_task(fn))

            def app_soon(fn: Callable[[], object]) -> None:
                app_loop.call_soon_threadsafe(start, fn, context=app_context.copy())

        self.app_soon = app_soon

    def dbos_soon(self, fn: Callable[[], object]) -> None:
        """Run *fn* soon on the DBOS loop, in an empty context (callable from any thread).

        Once the DBOS loop is closed (the runtime was left) *fn* is dropped: nothing waits on that loop any more,
        and a cancellation or error being handled on the application's side must not turn into another error.
        """
        try:
            self.dbos_loop.call_soon_threadsafe(fn, context=contextvars.Context())
        except RuntimeError:
            if not self.dbos_loop.is_closed():
                raise

    def spawn_dbos(
        self, factory: Callable[[], Coroutine[Any, Any, Any]], context: contextvars.Context | None = None
    ) -> None:
        """Start ``factory()`` as a task on the DBOS loop, in *context* (default: an empty one)."""
        run_in = context if context is not None else contextvars.Context()
        self.dbos_soon(lambda: run_in.run(lambda: self.dbos_loop.create_task(factory())))

    async def to_dbos(
        self, factory: Callable[[], Coroutine[Any, Any, T]], context: contextvars.Context | None = None
    ) -> T:
        """From the application's loop: run ``factory()`` on the DBOS loop and return its result.

        Cancelling the caller cancels the task on the DBOS loop (without waiting for it).
        """
        done = anyio.Event()
        outcome: list[tuple[bool, Any]] = []
        tasks: list[asyncio.Task[T]] = []
        run_in = context if context is not None else contextvars.Context()

        def report(task: asyncio.Task[T]) -> None:
            # A done callback runs outside any task: no anyio call here (it cannot tell the backend).
            if task.cancelled():
                result: tuple[bool, Any] = (False, _CANCELLED)
            elif task.exception() is not None:
                result = (False, task.exception())
            else:
                result = (True, task.result())

            def deliver() -> None:
                outcome.append(result)
                done.set()

            self.app_soon(deliver)

        def start() -> None:
            # A task runs in a copy of the context it is created in (create_task(context=) needs 3.11).
            task = run_in.run(lambda: self.dbos_loop.create_task(factory()))
            tasks.append(task)
            task.add_done_callback(report)

        self.dbos_soon(start)
        try:
            await done.wait()
        except BaseException:
            self.dbos_soon(lambda: [task.cancel() for task in tasks])
            raise
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        if value is _CANCELLED:
            raise RuntimeError(
                "the durable runtime's DBOS loop cancelled the operation (is it shutting down?)"
            )
        raise value

    async def to_app(self, fn: Callable[[], Awaitable[T]]) -> T:
        """From the DBOS loop: run ``await fn()`` in a task on the application's loop and return its result.

        Cancelling the caller cancels that task.
        """
        future: asyncio.Future[T] = self.dbos_loop.create_future()
        scopes: list[anyio.CancelScope] = []
        stopped = [False]

        def settle(ok: bool, value: Any) -> None:
            if future.done():
                return
            if ok:
                future.set_result(value)
            elif value is None:
                future.cancel()
            else:
                future.set_exception(value)

        async def runner() -> None:
            if stopped[0]:
                return
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                try:
                    value = await fn()
                except anyio.get_cancelled_exc_class():
                    self.dbos_soon(lambda: settle(False, None))
                    raise
                except Exception as error:
                    failure = error
                    self.dbos_soon(lambda: settle(False, failure))
                    return
                self.dbos_soon(lambda: settle(True, value))
            if scope.cancelled_caught:
                self.dbos_soon(lambda: settle(False, None))

        def cancel() -> None:
            stopped[0] = True
            for scope in scopes:
                scope.cancel()

        self.app_soon(lambda: self._spawn_app(runner))
        try:
            return await future
        except asyncio.CancelledError:
            self.app_soon(cancel)
            raise
