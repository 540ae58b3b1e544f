"""Test helpers for rate limits: a manual clock for :class:`~miniagents.RateLimiter` and a provider that enforces limits.

* :class:`ManualClock` — a :class:`~miniagents.LimiterClock` whose time moves only when told (``advance``) or, with
  :meth:`ManualClock.autojump`, jumps to the next deadline whenever every task is blocked (like trio's
  ``MockClock(autojump_threshold=0)``, but for the limiter only, and on asyncio too).
* :class:`ProviderLimits` — a :class:`~miniagents.testing.fake_llm_server.FakeLLMServer` handler that enforces a
  request rate and a concurrency limit per model the way a provider does, answering ``429`` with ``retry-after``
  when a request exceeds them, and records what it saw (the most concurrent requests, the most requests in any
  window, how many it rejected).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import sniffio

from miniagents.testing.fake_llm_server import RecordedRequest, ScriptedResponse, openai_error

__all__ = ["ManualClock", "ProviderLimits", "ScaledClock", "wait_all_tasks_blocked"]


class ManualClock:
    """A limiter clock under the test's control (see :class:`~miniagents.LimiterClock`).

    Time starts at *start* and only moves with :meth:`advance` / :meth:`advance_to`, or with :meth:`autojump`
    running in a background task.  Use :meth:`sleep_until` in test code that must wait on the same time.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._sleepers: list[list[Any]] = []  # [deadline, seq, event, still waiting]
        self._seq = itertools.count()
        self._new_sleeper: anyio.Event | None = None

    def now(self) -> float:
        """The current manual time."""
        return self._now

    async def wait(self, event: anyio.Event, deadline: float) -> None:
        """Return when *event* is set or the manual time reaches *deadline*."""
        if deadline <= self._now or event.is_set():
            return
        entry = [deadline, next(self._seq), event, True]
        heapq.heappush(self._sleepers, entry)
        if self._new_sleeper is not None:
            self._new_sleeper.set()
        try:
            await event.wait()
        finally:
            entry[3] = False

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until the manual time reaches *deadline*."""
        await self.wait(anyio.Event(), deadline)

    def next_deadline(self) -> float | None:
        """The earliest deadline somebody still waits for, or ``None``."""
        sleepers = self._sleepers
        while sleepers and (not sleepers[0][3] or sleepers[0][2].is_set()):
            heapq.heappop(sleepers)
        return sleepers[0][0] if sleepers else None

    def advance(self, seconds: float) -> None:
        """Move the time forward by *seconds* and wake whoever's deadline has come."""
        self.advance_to(self._now + seconds)

    def advance_to(self, when: float) -> None:
        """Move the time forward to *when* (never backwards) and wake whoever's deadline has come."""
        self._now = max(self._now, when)
        sleepers = self._sleepers
        while sleepers and sleepers[0][0] <= self._now:
            entry = heapq.heappop(sleepers)
            if entry[3]:
                entry[2].set()

    async def autojump(self) -> None:
        """Run forever (cancel it): whenever every other task is blocked, jump to the next deadline.

        On trio this uses ``trio.testing.wait_all_tasks_blocked``; on asyncio it checks that every task waits
        on a pending future, yielding with ``sleep(0)`` in between (no real time passes).
        """
        while True:
            await wait_all_tasks_blocked()
            deadline = self.next_deadline()
            if deadline is None:
                self._new_sleeper = anyio.Event()
                await self._new_sleeper.wait()
                self._new_sleeper = None
            else:
                self.advance_to(deadline)


async def wait_all_tasks_blocked() -> None:
    """Return once every other task is blocked (trio: ``trio.testing.wait_all_tasks_blocked``).

    On asyncio: once no callback is ready to run and every other task waits on a pending future, checked after
    each ``sleep(0)`` (anyio's own version sleeps 0.1 s between checks).  Only for code that waits on events and
    this clock, not on I/O.
    """
    if sniffio.current_async_library() == "trio":
        import trio.testing

        await trio.testing.wait_all_tasks_blocked()
        return
    import asyncio

    this = asyncio.current_task()
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(0)
        if getattr(loop, "_ready", None):  # callbacks still scheduled (e.g. anyio delivering a cancellation)
            continue
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                break
        else:
            return


class ScaledClock:
    """anyio's clock running *scale* times faster: one limiter minute lasts ``60 / scale`` real seconds."""

    def __init__(self, scale: float) -> None:
        if not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        self.scale = float(scale)

    def now(self) -> float:
        """Anyio's current time, scaled."""
        return anyio.current_time() * self.scale

    async def wait(self, event: anyio.Event, deadline: float) -> None:
        """Wait for *event* until the scaled *deadline*."""
        with anyio.move_on_at(deadline / self.scale):
            await event.wait()


class ProviderLimits:
    """A ``FakeLLMServer.handler`` that enforces per-model limits like a provider and counts what it saw.

    Args:
        respond: builds the response to an accepted request.
        requests_per_minute: per model, at most this many accepted requests in any window of *window* seconds
            of *now* time.
        max_concurrent: per model, at most this many requests whose response is not finished.
        now: the time source (e.g. ``ScaledClock(20).now``); default ``anyio.current_time``.
        window: the window length, in *now* units (default 60).
        grace: how much shorter than *window* the enforced window is, in *now* units: it absorbs the network
            latency between the client's grant and the request's arrival (default 0).
        limited: which models are enforced (default: all).

    A request over a limit is answered ``429`` with ``retry-after-ms`` (the time until it would fit, in real
    milliseconds) and counted in :attr:`rejected`.
    """

    def __init__(
        self,
        respond: Callable[[RecordedRequest], ScriptedResponse],
        *,
        requests_per_minute: int | None = None,
        max_concurrent: int | None = None,
        now: Callable[[], float] = anyio.current_time,
        window: float = 60.0,
        grace: float = 0.0,
        time_scale: float = 1.0,
        limited: Callable[[str], bool] = lambda model: True,
    ) -> None:
        self.respond = respond
        self.requests_per_minute = requests_per_minute
        self.max_concurrent = max_concurrent
        self.now = now
        self.window = window - grace
        self.time_scale = time_scale
        self.limited = limited
        self.accepted = 0
        self.rejected = 0
        #: Rejections by reason: ``"rate"`` and ``"concurrency"``.
        self.rejections = {"rate": 0, "concurrency": 0}
        self.max_seen_concurrent = 0
        self.max_seen_in_window = 0
        self._arrivals: dict[str, deque[float]] = {}
        self._active: dict[str, list[RecordedRequest]] = {}

    def __call__(self, request: RecordedRequest) -> ScriptedResponse:
        """Accept *request* (answer it with ``respond``) or reject it with a 429."""
        body: Any = request.json
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        if not self.limited(model):
            return self.respond(request)
        now = self.now()
        arrivals = self._arrivals.setdefault(model, deque())
        while arrivals and arrivals[0] + self.window <= now:
            arrivals.popleft()
        active = [r for r in self._active.get(model, ()) if not r.finished]
        self._active[model] = active
        wait: float | None = None
        if self.requests_per_minute is not None and len(arrivals) >= self.requests_per_minute:
            wait = arrivals[len(arrivals) - self.requests_per_minute] + self.window - now
            self.rejections["rate"] += 1
        elif self.max_concurrent is not None and len(active) >= self.max_concurrent:
            wait = 0.001 * self.time_scale
            self.rejections["concurrency"] += 1
        if wait is not None:
            self.rejected += 1
            return openai_error(
                429,
                f"rate limit exceeded for {model}",
                retry_after_ms=max(1, round(wait / self.time_scale * 1000)),
            )
        arrivals.append(now)
        active.append(request)
        self.accepted += 1
        self.max_seen_in_window = max(self.max_seen_in_window, len(arrivals))
        self.max_seen_concurrent = max(self.max_seen_concurrent, len(active))
        return self.respond(request)
