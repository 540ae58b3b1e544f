"""Property tests of RateLimiter on both backends, with a controllable clock.

trio runs under ``trio.testing.MockClock(autojump_threshold=0)`` with the limiter on its default (anyio) clock;
asyncio runs with a :class:`ManualClock` whose autojump moves time when every task is blocked.  Random requests
(arrival, tokens, hold time, ok / failure / early settle, random cancellation deadlines) and random pauses run
against a random limit, and the recorded history must show:

* requests_per_minute and tokens_per_minute never exceeded in any 60 s window (half-open, over grant times);
* never more leases held than max_concurrent;
* strict FIFO: among granted requests, grant order is arrival order;
* nothing leaked: every request that was not cancelled is granted (a leak would deadlock: a watchdog fails the
  run), and at the end the limiter's counters equal what the history says is still in the window;
* a pause holds for every waiter: no grant made after ``pause()`` has a time before the pause's end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import pytest
from core_helpers import Boom
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from miniagents import RateLimit, RateLimiter
from miniagents.testing.limits import ManualClock

WINDOW = 60.0
WATCHDOG = 100_000.0


@attrs.frozen
class Req:
    arrive: float
    tokens: int
    hold: float
    outcome: str  # "ok" | "fail" | "settle"
    settle_to: int
    patience: int | None  # cancel the request this long after it arrives (waiting or holding)


@attrs.frozen
class Scenario:
    limit: RateLimit
    requests: tuple[Req, ...]
    pauses: tuple[tuple[float, float], ...]  # (at, seconds)


def _halves(top: int) -> st.SearchStrategy[float]:
    """Times in half seconds: exact in binary floating point, and finer than the limits' own steps."""
    return st.integers(0, 2 * top).map(lambda n: n / 2)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    rpm = draw(st.none() | st.integers(1, 4))
    tpm = draw(st.none() | st.integers(10, 60))
    concurrent = draw(st.none() | st.integers(1, 3))
    if rpm is None and tpm is None and concurrent is None:
        concurrent = 1
    requests = []
    for _ in range(draw(st.integers(1, 12))):
        tokens = draw(st.integers(0, tpm if tpm is not None else 30))
        requests.append(
            Req(
                arrive=draw(_halves(150)),
                tokens=tokens,
                hold=draw(_halves(40)),
                outcome=draw(st.sampled_from(["ok", "fail", "settle"])),
                settle_to=draw(st.integers(0, tokens)),
                patience=draw(st.none() | st.integers(0, 120)),
            )
        )
    pauses = draw(st.lists(st.tuples(_halves(150), _halves(50).filter(bool)), max_size=2))
    return Scenario(RateLimit(rpm, tpm, concurrent), tuple(requests), tuple(pauses))


@attrs.define
class Grant:
    index: int
    time: float
    order: int
    amount: int


class _TrioTime:
    now = staticmethod(anyio.current_time)
    sleep_until = staticmethod(anyio.sleep_until)


@asynccontextmanager
async def cancel_at(sleep_until: Callable[[float], Awaitable[None]], when: float) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await sleep_until(when)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        yield
        tg.cancel_scope.cancel()


async def run_scenario(scenario: Scenario, time: Any, limiter: RateLimiter) -> dict[str, Any]:
    base = time.now()
    arrivals: list[int] = []
    grants: list[Grant] = []
    cancelled: set[int] = set()
    pause_marks: list[tuple[int, float]] = []  # (grants made before the pause, its end)
    held = 0
    max_held = 0
    limit = scenario.limit

    async def request(i: int, req: Req) -> None:
        nonlocal held, max_held
        await time.sleep_until(base + req.arrive)
        arrivals.append(i)
        grant: Grant | None = None
        async with cancel_at(
            time.sleep_until, base + req.arrive + (req.patience if req.patience is not None else WATCHDOG)
        ):
            try:
                async with limiter.acquire("k", tokens=req.tokens) as lease:
                    assert lease.granted_at is not None and lease.order is not None
                    grant = Grant(i, lease.granted_at, lease.order, req.tokens)
                    grants.append(grant)
                    held += 1
                    max_held = max(max_held, held)
                    in_flight = limiter.statistics()["k"].in_flight
                    assert limit.max_concurrent is None or in_flight <= limit.max_concurrent
                    try:
                        if req.outcome == "settle":
                            lease.settle(req.settle_to)
                            grant.amount = req.settle_to
                        await time.sleep_until(time.now() + req.hold)
                        if req.outcome == "fail":
                            raise Boom
                    except BaseException:
                        if req.outcome != "settle":
                            grant.amount = 0  # a failed or cancelled request gives back what it did not use
                        raise
                    finally:
                        held -= 1
            except Boom:
                pass
        if grant is None or (req.patience is not None and time.now() >= base + req.arrive + req.patience):
            cancelled.add(i)

    async def pause(at: float, seconds: float) -> None:
        await time.sleep_until(base + at)
        pause_marks.append((limiter.statistics().get("k", _NO_STATS).granted, time.now() + seconds))
        limiter.pause("k", seconds)

    async def watchdog() -> None:
        await time.sleep_until(base + WATCHDOG)
        raise AssertionError("deadlock: requests still waiting at the watchdog time")

    async with anyio.create_task_group() as outer:
        outer.start_soon(watchdog)
        async with anyio.create_task_group() as tg:
            for i, req in enumerate(scenario.requests):
                tg.start_soon(request, i, req)
            for at, seconds in scenario.pauses:
                tg.start_soon(pause, at, seconds)
        outer.cancel_scope.cancel()
    stats = limiter.statistics().get("k")
    return {
        "base": base,
        "end": time.now(),
        "arrivals": arrivals,
        "grants": grants,
        "cancelled": cancelled,
        "pauses": pause_marks,
        "max_held": max_held,
        "stats": stats,
    }


@attrs.frozen
class _Stats:
    granted: int = 0


_NO_STATS = _Stats()


def check(scenario: Scenario, result: dict[str, Any]) -> None:
    limit = scenario.limit
    grants: list[Grant] = result["grants"]
    # Windows: every half-open 60 s interval ending at a grant holds at most the limit.
    for g in grants:
        window = [h for h in grants if h.time <= g.time and h.time + WINDOW > g.time]
        if limit.requests_per_minute is not None:
            assert len(window) <= limit.requests_per_minute, (g, window)
        if limit.tokens_per_minute is not None:
            assert sum(h.amount for h in window) <= limit.tokens_per_minute, (g, window)
    if limit.max_concurrent is not None:
        assert result["max_held"] <= limit.max_concurrent
    # FIFO: grant order follows arrival order.
    position = {index: n for n, index in enumerate(result["arrivals"])}
    by_arrival = sorted(grants, key=lambda g: position[g.index])
    assert [g.order for g in by_arrival] == sorted(g.order for g in grants)
    # Pauses hold for every waiter.
    for granted_before, until in result["pauses"]:
        for g in grants:
            if g.order >= granted_before:
                assert g.time >= until, (g, granted_before, until)
    # Nothing leaked: patient requests were all granted; the limiter's counters match the history.
    for i, req in enumerate(scenario.requests):
        if req.patience is None:
            assert any(g.index == i for g in grants), f"request {i} was never granted"
    stats = result["stats"]
    assert stats.in_flight == 0 and stats.waiting == 0
    end = result["end"]
    live = [g for g in grants if g.time + WINDOW > end]
    if limit.requests_per_minute is not None:
        assert stats.requests_in_window == len(live)
    if limit.tokens_per_minute is not None:
        assert stats.tokens_in_window == sum(g.amount for g in live)


def run_trio(scenario: Scenario) -> dict[str, Any]:
    limiter = RateLimiter(default=scenario.limit)

    async def main() -> dict[str, Any]:
        return await run_scenario(scenario, _TrioTime, limiter)

    result: dict[str, Any] = anyio.run(
        main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
    )
    return result


def run_asyncio(scenario: Scenario) -> dict[str, Any]:
    clock = ManualClock(1000.0)
    limiter = RateLimiter(default=scenario.limit, clock=clock)

    async def main() -> dict[str, Any]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.autojump)
            result = await run_scenario(scenario, clock, limiter)
            tg.cancel_scope.cancel()
        return result

    result: dict[str, Any] = anyio.run(main, backend="asyncio")
    return result


RUNNERS = {"trio": run_trio, "asyncio": run_asyncio}


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@settings(max_examples=150, deadline=None)
@given(scenario=scenarios())
def test_limits_fifo_no_leaks_and_pauses_hold(backend: str, scenario: Scenario) -> None:
    check(scenario, RUNNERS[backend](scenario))


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@settings(max_examples=40, deadline=None)
@given(
    limit=st.builds(
        RateLimit, st.integers(1, 5), st.none() | st.integers(5, 40), st.none() | st.integers(1, 4)
    ),
    count=st.integers(5, 40),
)
def test_a_burst_at_one_instant_is_spread_over_windows(backend: str, limit: RateLimit, count: int) -> None:
    """All requests arrive at once and hold for a second: every window respects the limit, order is kept."""
    tokens = 5 if limit.tokens_per_minute else 0
    scenario = Scenario(limit, tuple(Req(0, tokens, 1, "ok", 0, None) for _ in range(count)), ())
    result = RUNNERS[backend](scenario)
    check(scenario, result)
    rpm = limit.requests_per_minute
    assert rpm is not None
    # With only the request limit, served as fast as the window allows: rpm grants per 60 s.
    if limit.tokens_per_minute is None and limit.max_concurrent is None:
        last = max(g.time for g in result["grants"]) - result["base"]
        assert last == (count - 1) // rpm * WINDOW


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@settings(max_examples=60, deadline=None)
@given(
    limit=st.builds(RateLimit, st.none() | st.integers(1, 5), st.none(), st.none() | st.integers(1, 4)),
    seconds=_halves(20).filter(bool),
    arrivals=st.lists(_halves(25).map(lambda t: t + 0.5), min_size=1, max_size=10),
    holds=st.lists(_halves(3), min_size=10, max_size=10),
)
def test_a_pause_holds_for_every_waiter(
    backend: str, limit: RateLimit, seconds: float, arrivals: list[float], holds: list[float]
) -> None:
    """Requests arriving during and after a pause (made at time 0) are granted at its end or later."""
    requests = tuple(Req(at, 0, hold, "ok", 0, None) for at, hold in zip(arrivals, holds, strict=False))
    scenario = Scenario(limit, requests, ((0.0, seconds),))
    result = RUNNERS[backend](scenario)
    check(scenario, result)
    assert all(g.time - result["base"] >= seconds for g in result["grants"])
