"""Rate limits: requests per minute, tokens per minute and concurrent requests, per key, FIFO-fair.

A :class:`RateLimiter` holds one queue per key (for LLM requests the key is ``(provider, model)`` by default).
``async with limiter.acquire(key, tokens=estimate) as lease:`` waits until the key's :class:`RateLimit` allows
one more request, then holds one concurrency slot until the block exits.

How the limits are counted (the window is a sliding 60 s over *grant* times):

* ``requests_per_minute``: a request counts from the moment it is granted for 60 s.  A request is granted only
  if fewer than ``requests_per_minute`` requests were granted in the 60 s before it (the half-open interval
  ``(now - 60, now]``), so no half-open 60 s interval ever holds more than that many grants.
* ``tokens_per_minute``: a request reserves ``tokens`` at its grant (an estimate: prompt plus the maximum
  output), counted like a request for 60 s.  It is granted only if the tokens counted in the window plus its
  reservation fit.  :meth:`RateLease.settle` replaces the reservation by the real usage (a smaller usage
  frees capacity at once; a larger one is charged and delays later requests).  A reservation larger than
  ``tokens_per_minute`` is capped to it (such a request needs a window of its own).
* ``max_concurrent``: a slot is held from the grant until the lease is released.

Waiters are served strictly first come, first served per key: a waiter at the head that does not fit yet
blocks the ones behind it, even smaller ones.  Only the head waiter ever sleeps on a deadline (one timer per
key at most); everyone else waits on an event set when they reach the head.  Nothing polls.

:meth:`RateLimiter.pause` (a provider's ``retry-after``) stops every grant on the key until the pause ends.
Then the head waiter goes alone as a *probe*; the others follow, in order, once the probe is confirmed
(:meth:`RateLease.confirm`) or released without an error.  A probe that fails hands the role to the next
waiter.  Requests already granted are not affected by a pause.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from contextlib import suppress
from types import TracebackType
from typing import Any, Protocol

import anyio
import attrs

from miniagents._frozen import share_by_reference

__all__ = [
    "LimiterClock",
    "RateKeyStatistics",
    "RateLease",
    "RateLimit",
    "RateLimiter",
    "RequestInfo",
    "default_key",
]

#: The length of the sliding window, in seconds, of ``requests_per_minute`` and ``tokens_per_minute``.
WINDOW_SECONDS = 60.0


def _positive_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"RateLimit.{attribute.name} must be a positive int or None, got {value!r}")


@attrs.frozen
class RateLimit:
    """The limits of one key; ``None`` means no limit of that kind.

    Attributes:
        requests_per_minute: at most this many requests granted in any 60 s (sliding window).
        tokens_per_minute: at most this many tokens reserved (then settled) in any 60 s (sliding window).
        max_concurrent: at most this many leases held at the same time.

    """

    requests_per_minute: int | None = attrs.field(default=None, validator=_positive_or_none)
    tokens_per_minute: int | None = attrs.field(default=None, validator=_positive_or_none)
    max_concurrent: int | None = attrs.field(default=None, validator=_positive_or_none)


class RequestInfo(Protocol):
    """What a request tells the limiter, to pick its key (see ``RateLimiter(key=...)``).

    The LLM agents pass a :class:`miniagents.llms.LLMRequestInfo`; anything else that uses the limiter passes
    its own.  The limiter itself only reads :attr:`default_key` (when no ``key`` function is given).
    """

    @property
    def default_key(self) -> Hashable:
        """The key of the request when the limiter has no ``key`` function."""


def default_key(info: RequestInfo) -> Hashable:
    """The default key function: the request's own :attr:`RequestInfo.default_key`."""
    return info.default_key


class LimiterClock(Protocol):
    """The time source of a :class:`RateLimiter` (default: anyio's clock, so trio's ``MockClock`` applies)."""

    def now(self) -> float:
        """The current time in seconds (monotonic)."""

    async def wait(self, event: anyio.Event, deadline: float) -> None:
        """Return when *event* is set or :meth:`now` reaches *deadline*, whichever comes first."""


class _AnyioClock:
    """Time as anyio sees it: ``anyio.current_time()`` and cancel-scope deadlines."""

    def now(self) -> float:
        return anyio.current_time()

    async def wait(self, event: anyio.Event, deadline: float) -> None:
        with anyio.move_on_at(deadline):
            await event.wait()


@attrs.frozen
class RateKeyStatistics:
    """A snapshot of one key of a :class:`RateLimiter` (from :meth:`RateLimiter.statistics`).

    Attributes:
        limit: the key's limit.
        waiting: waiters in the queue.
        in_flight: leases granted and not released.
        requests_in_window: requests granted in the last 60 s (counted when ``requests_per_minute`` is set).
        tokens_in_window: tokens counted in the last 60 s (when ``tokens_per_minute`` is set).
        paused_for: seconds until the current pause ends (0 when not paused).
        probing: after a pause, waiting for the first request to be confirmed.
        granted: leases granted so far.
        cancelled: waiters that left the queue (cancelled) so far.
        pauses: pauses so far.

    """

    limit: RateLimit
    waiting: int
    in_flight: int
    requests_in_window: int
    tokens_in_window: int
    paused_for: float
    probing: bool
    granted: int
    cancelled: int
    pauses: int


class _Tokens:
    """One reservation in the token window (its amount changes when the lease is settled)."""

    __slots__ = ("amount", "live", "time")

    def __init__(self, time: float, amount: int) -> None:
        self.time = time
        self.amount = amount
        self.live = True


class _Key:
    """The state of one key: its FIFO queue and its windows."""

    __slots__ = (
        "cancelled",
        "granted",
        "in_flight",
        "limit",
        "paused_until",
        "pauses",
        "probe",
        "probing",
        "queue",
        "starts",
        "token_sum",
        "tokens",
    )

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.queue: deque[RateLease] = deque()
        self.in_flight = 0
        self.starts: deque[float] = deque()
        self.tokens: deque[_Tokens] = deque()
        self.token_sum = 0
        self.paused_until = -math.inf
        self.probing = False
        self.probe: RateLease | None = None
        self.granted = 0
        self.cancelled = 0
        self.pauses = 0

    def expire(self, now: float) -> None:
        starts = self.starts
        while starts and starts[0] + WINDOW_SECONDS <= now:
            starts.popleft()
        tokens = self.tokens
        while tokens and tokens[0].time + WINDOW_SECONDS <= now:
            entry = tokens.popleft()
            entry.live = False
            self.token_sum -= entry.amount

    def blocked_until(self, need: int, now: float) -> float | None:
        """``None`` if a request of *need* tokens fits now; else the time it may fit (``inf``: on an event)."""
        if self.paused_until > now:
            return self.paused_until
        limit = self.limit
        if limit.max_concurrent is not None and self.in_flight >= limit.max_concurrent:
            return math.inf
        if self.probing and self.probe is not None:
            return math.inf
        self.expire(now)
        until: float | None = None
        rpm = limit.requests_per_minute
        if rpm is not None and len(self.starts) >= rpm:
            until = self.starts[len(self.starts) - rpm] + WINDOW_SECONDS
        tpm = limit.tokens_per_minute
        if tpm is not None and self.token_sum + need > tpm:
            remaining = self.token_sum
            for entry in self.tokens:
                remaining -= entry.amount
                if remaining + need <= tpm:
                    when = entry.time + WINDOW_SECONDS
                    until = when if until is None else max(until, when)
                    break
        return until

    def set_amount(self, entry: _Tokens, amount: int) -> bool:
        """Change a reservation; return whether capacity was freed."""
        delta = amount - entry.amount
        entry.amount = amount
        if entry.live:
            self.token_sum += delta
        return delta < 0


_NEW, _WAITING, _GRANTED, _RELEASED = range(4)


class RateLease:
    """One request's place in a :class:`RateLimiter`: ``async with limiter.acquire(key, tokens=n) as lease:``.

    Entering waits (first come, first served) until the key's limits allow the request, then holds one
    concurrency slot until the block exits.  Cancelled while waiting, it leaves the queue and takes nothing;
    cancelled right after being granted, it gives everything back (the request was never made).

    On exit the token reservation becomes the settled usage (:meth:`settle`) if there is one; otherwise it is
    kept whole when the block ends normally, and reduced to :meth:`note_used` (0 by default) when it ends with
    an exception — a failed or cancelled request gives back what it did not use.
    """

    __slots__ = (
        "_deadline",
        "_entry",
        "_event",
        "_key",
        "_limiter",
        "_settled",
        "_status",
        "_used",
        "granted_at",
        "key",
        "order",
        "tokens",
    )

    def __init__(self, limiter: RateLimiter, key: Hashable, state: _Key, tokens: int) -> None:
        self._limiter = limiter
        self._key = state
        self.key = key
        #: The reservation (capped to ``tokens_per_minute``).
        self.tokens = tokens
        #: The limiter's time of the grant (``None`` until granted).
        self.granted_at: float | None = None
        #: The position of the grant among the grants of its key (0-based; ``None`` until granted).
        self.order: int | None = None
        self._status = _NEW
        self._event: anyio.Event | None = None
        self._deadline = math.inf
        self._entry: _Tokens | None = None
        self._settled: int | None = None
        self._used = 0

    def __repr__(self) -> str:
        status = ("new", "waiting", "granted", "released")[self._status]
        return f"RateLease(key={self.key!r}, tokens={self.tokens}, {status})"

    @property
    def granted(self) -> bool:
        """Whether the lease was granted (and possibly released since)."""
        return self._status >= _GRANTED and self.granted_at is not None

    async def __aenter__(self) -> RateLease:
        if self._status != _NEW:
            raise RuntimeError("a RateLease is entered once; call limiter.acquire() for each request")
        state = self._key
        limiter = self._limiter
        self._status = _WAITING
        state.queue.append(self)
        if len(state.queue) == 1:
            limiter._dispatch(state)
            if self._status == _GRANTED:
                return self
        clock = limiter.clock
        try:
            while self._status == _WAITING:
                event = self._event = anyio.Event()
                if self._deadline == math.inf:
                    await event.wait()
                else:
                    await clock.wait(event, self._deadline)
                if self._status == _WAITING and state.queue[0] is self:
                    limiter._dispatch(state)
        except BaseException:
            if self._status == _GRANTED:
                self._release(failed=True, unused=True)
            elif self._status == _WAITING:
                head = state.queue[0] is self
                state.queue.remove(self)
                self._status = _RELEASED
                state.cancelled += 1
                if head:
                    limiter._dispatch(state)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release(failed=exc_type is not None)

    def release(self, *, failed: bool = False, unused: bool = False) -> None:
        """Release the lease now (the ``async with`` block does it on exit); later calls do nothing.

        With *failed*, the reservation shrinks to :meth:`note_used` unless the lease was settled.  With
        *unused*, the request was never sent: its place in the request window and all its tokens are given
        back (e.g. it was cancelled while waiting for another limiter).
        """
        if self._status == _GRANTED:
            self._release(failed=failed or unused, unused=unused)

    def _release(self, *, failed: bool, unused: bool) -> None:
        state = self._key
        self._status = _RELEASED
        state.in_flight -= 1
        if unused and self.granted_at is not None and state.limit.requests_per_minute is not None:
            with suppress(ValueError):  # the request was never made: its place in the window is given back
                state.starts.remove(self.granted_at)
        entry = self._entry
        if entry is not None:
            if unused:
                state.set_amount(entry, 0)
            elif self._settled is not None:
                state.set_amount(entry, self._settled)
            elif failed:
                state.set_amount(entry, self._used)
        if state.probe is self:
            state.probe = None
            if not failed:
                state.probing = False
        self._limiter._dispatch(state)

    def confirm(self) -> None:
        """Tell the limiter the provider accepted the request (e.g. a 2xx status arrived).

        After a pause, the key resumes at full rate once its probe request is confirmed (or released without
        an error); until then only the probe runs.
        """
        state = self._key
        if state.probe is self:
            state.probe = None
            state.probing = False
            self._limiter._dispatch(state)

    def note_used(self, tokens: int) -> None:
        """Record tokens known to be used so far (e.g. the prompt once the request was accepted).

        If the request then fails without :meth:`settle`, this much of the reservation is kept.
        """
        self._used = max(0, int(tokens))

    def settle(self, tokens: int) -> None:
        """Replace the reservation by the request's real usage, at once (while held or after the release).

        A smaller usage frees the difference for the waiters immediately; a larger one is charged.
        """
        if self.granted_at is None:
            raise RuntimeError("settle() needs a granted lease")
        tokens = max(0, int(tokens))
        self._settled = tokens
        entry = self._entry
        if entry is not None and self._key.set_amount(entry, tokens):
            self._limiter._dispatch(self._key)


@share_by_reference
class RateLimiter:
    """Rate limits per key, shared by every request that uses this object (concurrency-safe, fair).

    Args:
        limits: the :class:`RateLimit` of each key, e.g. ``{("openai", "gpt-4o-mini"): RateLimit(...)}``.
        default: the limit of keys not in *limits* (``None``: such keys are not limited, but can be paused).
        key: maps a request's info to its key; for LLM agents a :class:`~miniagents.llms.LLMRequestInfo`,
            whose default key is ``(provider, model)``; use
            ``lambda info: info.api_key_fingerprint`` to limit per API key.  Keys must be hashable; do not put
            raw API keys in them (keys appear in statistics and reprs).
        clock: the time source (:class:`LimiterClock`); default anyio's clock, so trio's ``MockClock`` works.

    ``async with limiter.acquire(key, tokens=n) as lease:`` makes one request (see :class:`RateLease`);
    :meth:`pause` stops a key for a while (a provider's ``retry-after``).  Give it to ``MiniAgents(rate_limiter=)``
    to limit every LLM agent call in the context, or to an LLM agent's ``rate_limiter=`` option.  It works on
    trio and asyncio; one limiter must only be used from one event loop.
    """

    def __init__(
        self,
        limits: Mapping[Hashable, RateLimit] | None = None,
        *,
        default: RateLimit | None = None,
        key: Callable[[Any], Hashable] = default_key,
        clock: LimiterClock | None = None,
    ) -> None:
        self._limits = dict(limits or {})
        for name, limit in self._limits.items():
            if not isinstance(limit, RateLimit):
                raise TypeError(
                    f"RateLimiter limits[{name!r}] must be a RateLimit, got {type(limit).__name__}"
                )
        if default is not None and not isinstance(default, RateLimit):
            raise TypeError(f"RateLimiter default must be a RateLimit or None, got {type(default).__name__}")
        if not callable(key):
            raise TypeError(f"RateLimiter key must be a function of a request's info, got {key!r}")
        self.default = default
        self.key = key
        self.clock: LimiterClock = clock if clock is not None else _AnyioClock()
        self._keys: dict[Hashable, _Key] = {}

    def __repr__(self) -> str:
        return f"RateLimiter(keys={len(self._limits)}, default={self.default!r})"

    def limit_for(self, key: Hashable) -> RateLimit:
        """The limit that applies to *key* (an empty :class:`RateLimit` when it is not limited)."""
        limit = self._limits.get(key, self.default)
        return limit if limit is not None else RateLimit()

    def _state(self, key: Hashable) -> _Key:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key(self.limit_for(key))
        return state

    def acquire(self, key: Hashable, *, tokens: int = 0) -> RateLease:
        """Return the lease of one request on *key* reserving *tokens*; enter it with ``async with``."""
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ValueError(f"tokens must be an int >= 0, got {tokens!r}")
        state = self._state(key)
        tpm = state.limit.tokens_per_minute
        if tpm is not None and tokens > tpm:
            tokens = tpm
        return RateLease(self, key, state, tokens)

    def pause(self, key: Hashable, seconds: float) -> None:
        """Grant nothing on *key* for *seconds* (extends a shorter pause, never shortens one).

        Every waiter, the ones queued later included, waits until the pause ends; then the head goes alone
        (see :meth:`RateLease.confirm`) and the rest follow in order.
        """
        if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"pause() needs a finite number of seconds >= 0, got {seconds!r}")
        state = self._state(key)
        until = self.clock.now() + seconds
        if until > state.paused_until:
            state.paused_until = until
            state.probing = True
            state.probe = None
            state.pauses += 1
            self._dispatch(state)

    def statistics(self) -> dict[Hashable, RateKeyStatistics]:
        """Return a snapshot per key used so far."""
        now = self.clock.now()
        result: dict[Hashable, RateKeyStatistics] = {}
        for key, state in self._keys.items():
            state.expire(now)
            result[key] = RateKeyStatistics(
                limit=state.limit,
                waiting=len(state.queue),
                in_flight=state.in_flight,
                requests_in_window=len(state.starts),
                tokens_in_window=state.token_sum,
                paused_for=max(0.0, state.paused_until - now),
                probing=state.probing,
                granted=state.granted,
                cancelled=state.cancelled,
                pauses=state.pauses,
            )
        return result

    def _dispatch(self, state: _Key) -> None:
        """Grant the head waiters that fit now; tell the new head when to look again."""
        queue = state.queue
        if not queue:
            return
        now = self.clock.now()
        limit = state.limit
        while queue:
            head = queue[0]
            until = state.blocked_until(head.tokens, now)
            if until is None:
                queue.popleft()
                state.in_flight += 1
                head.order = state.granted
                state.granted += 1
                head.granted_at = now
                head._status = _GRANTED
                if limit.requests_per_minute is not None:
                    state.starts.append(now)
                if limit.tokens_per_minute is not None:
                    entry = _Tokens(now, head.tokens)
                    state.tokens.append(entry)
                    state.token_sum += head.tokens
                    head._entry = entry
                if state.probing:
                    state.probe = head
                if head._event is not None:
                    head._event.set()
                continue
            if head._deadline != until:
                head._deadline = until
                if head._event is not None:
                    head._event.set()
            return
