"""RateLimiter examples: each limit, FIFO order, give-backs, cancellation, pauses and the probe after a pause.

Time is a ManualClock (moved by the test or by its autojump) on both backends; one test uses trio's own MockClock
through the default clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
import trio

from miniagents import RateLease, RateLimit, RateLimiter
from miniagents.llms import api_key_fingerprint
from miniagents.testing.limits import ManualClock, wait_all_tasks_blocked

pytestmark = pytest.mark.anyio


async def with_autojump(clock: ManualClock, body: Callable[[], Awaitable[None]]) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.autojump)
        await body()
        tg.cancel_scope.cancel()


def stats(limiter: RateLimiter, key: object = "k"):  # type: ignore[no-untyped-def]
    return limiter.statistics()[key]


# -- configuration ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["requests_per_minute", "tokens_per_minute", "max_concurrent"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
def test_rate_limit_rejects_values_that_are_not_positive_ints(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        RateLimit(**{field: value})  # type: ignore[arg-type]


def test_limiter_validates_its_arguments() -> None:
    with pytest.raises(TypeError, match=r"limits\['a'\] must be a RateLimit"):
        RateLimiter({"a": 5})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="default must be a RateLimit"):
        RateLimiter(default=5)  # type: ignore[arg-type]
    limiter = RateLimiter(default=RateLimit(max_concurrent=1))
    with pytest.raises(ValueError, match="tokens must be an int >= 0"):
        limiter.acquire("k", tokens=-1)
    with pytest.raises(ValueError, match="finite number of seconds"):
        limiter.pause("k", float("inf"))


def test_limit_lookup_and_an_unlimited_key() -> None:
    special = RateLimit(requests_per_minute=5)
    limiter = RateLimiter({"a": special}, default=RateLimit(max_concurrent=2))
    assert limiter.limit_for("a") is special
    assert limiter.limit_for("b") == RateLimit(max_concurrent=2)
    assert RateLimiter().limit_for("x") == RateLimit()


def test_api_key_fingerprint_is_stable_and_hides_the_key() -> None:
    key = "sk-secret-1234567890"
    fingerprint = api_key_fingerprint(key)
    assert fingerprint == api_key_fingerprint(key) != api_key_fingerprint(key + "x")
    assert len(fingerprint) == 16 and key not in fingerprint and "secret" not in fingerprint


# -- grants -----------------------------------------------------------------------------------------------------
async def test_an_uncontended_acquire_is_granted_at_once_and_counted() -> None:
    clock = ManualClock(100.0)
    limiter = RateLimiter(default=RateLimit(requests_per_minute=10, tokens_per_minute=100), clock=clock)
    async with limiter.acquire("k", tokens=30) as lease:
        assert lease.granted and lease.granted_at == 100.0 and lease.order == 0
        s = stats(limiter)
        assert (s.in_flight, s.requests_in_window, s.tokens_in_window, s.granted) == (1, 1, 30, 1)
    s = stats(limiter)
    assert (s.in_flight, s.requests_in_window, s.tokens_in_window) == (0, 1, 30)  # kept: block ended normally
    clock.advance(60)
    s = stats(limiter)
    assert (s.requests_in_window, s.tokens_in_window) == (0, 0)


async def test_max_concurrent_queues_the_rest_in_arrival_order() -> None:
    limiter = RateLimiter(default=RateLimit(max_concurrent=2), clock=ManualClock())
    order: list[int] = []
    release = [anyio.Event() for _ in range(5)]

    async def request(i: int) -> None:
        async with limiter.acquire("k"):
            order.append(i)
            await release[i].wait()

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(request, i)
            await wait_all_tasks_blocked()  # arrival order 0, 1, 2, 3, 4
        assert order == [0, 1] and stats(limiter).waiting == 3
        release[1].set()
        await wait_all_tasks_blocked()
        assert order == [0, 1, 2]
        release[0].set()
        await wait_all_tasks_blocked()
        assert order == [0, 1, 2, 3]
        for event in release:
            event.set()
    assert order == [0, 1, 2, 3, 4]
    assert stats(limiter).in_flight == 0


async def test_requests_per_minute_is_a_sliding_window_over_grants() -> None:
    clock = ManualClock()
    limiter = RateLimiter(default=RateLimit(requests_per_minute=2), clock=clock)
    granted: list[float] = []

    async def request(at: float) -> None:
        await clock.sleep_until(at)
        async with limiter.acquire("k") as lease:
            assert lease.granted_at is not None
            granted.append(lease.granted_at)

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            for at in (0.0, 10.0, 20.0, 30.0, 65.0):
                tg.start_soon(request, at)

    await with_autojump(clock, body)
    # 20 s waits for the grant at 0 to leave the window (60); 30 s for the one at 10 (70); 65 s for 20's (120).
    assert granted == [0.0, 10.0, 60.0, 70.0, 120.0]


async def test_tokens_per_minute_reserves_then_settles() -> None:
    clock = ManualClock()
    limiter = RateLimiter(default=RateLimit(tokens_per_minute=100), clock=clock)
    granted: list[tuple[str, float]] = []
    settle_first, release_first = anyio.Event(), anyio.Event()

    async def first() -> None:
        async with limiter.acquire("k", tokens=80) as lease:
            granted.append(("first", clock.now()))
            await settle_first.wait()
            lease.settle(30)  # the usage is known while the response is still being drained
            await release_first.wait()

    async def second() -> None:
        async with limiter.acquire("k", tokens=60):
            granted.append(("second", clock.now()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await wait_all_tasks_blocked()
        tg.start_soon(second)
        await wait_all_tasks_blocked()
        assert granted == [("first", 0.0)] and stats(limiter).waiting == 1
        settle_first.set()
        await wait_all_tasks_blocked()
        # settle() frees 50 at once: 30 settled + 60 reserved fit in 100 while the first lease is still held.
        assert granted == [("first", 0.0), ("second", 0.0)]
        assert stats(limiter).in_flight == 1
        release_first.set()
    assert stats(limiter).tokens_in_window == 90


async def test_a_reservation_above_tokens_per_minute_is_capped() -> None:
    limiter = RateLimiter(default=RateLimit(tokens_per_minute=50), clock=ManualClock())
    async with limiter.acquire("k", tokens=500) as lease:
        assert lease.tokens == 50
    assert stats(limiter).tokens_in_window == 50


async def test_a_failed_request_gives_back_what_it_did_not_use() -> None:
    limiter = RateLimiter(default=RateLimit(tokens_per_minute=100), clock=ManualClock())
    with pytest.raises(RuntimeError):
        async with limiter.acquire("k", tokens=70):
            raise RuntimeError("provider error")
    assert stats(limiter).tokens_in_window == 0
    with pytest.raises(RuntimeError):  # noqa: PT012 - the lease block is what is tested
        async with limiter.acquire("k", tokens=70) as lease:
            lease.note_used(20)
            raise RuntimeError("stream cut")
    assert stats(limiter).tokens_in_window == 20
    with pytest.raises(RuntimeError):  # noqa: PT012 - the lease block is what is tested
        async with limiter.acquire("k", tokens=70) as lease:
            lease.settle(45)
            raise RuntimeError("after the usage was known")
    assert stats(limiter).tokens_in_window == 65


async def test_settle_after_release_frees_capacity_for_the_waiters() -> None:
    clock = ManualClock()
    limiter = RateLimiter(default=RateLimit(tokens_per_minute=100), clock=clock)
    async with limiter.acquire("k", tokens=100) as lease:
        pass
    got: list[float] = []

    async def waiter() -> None:
        async with limiter.acquire("k", tokens=50):
            got.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_all_tasks_blocked()
        assert got == []
        lease.settle(10)
    assert got == [0.0]
    with pytest.raises(RuntimeError, match="granted lease"):
        limiter.acquire("k").settle(1)


async def test_a_lease_is_entered_once() -> None:
    limiter = RateLimiter(clock=ManualClock())
    lease = limiter.acquire("k")
    async with lease:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with lease:
            pass


# -- cancellation -----------------------------------------------------------------------------------------------
async def test_a_cancelled_waiter_leaves_the_queue_without_taking_capacity() -> None:
    limiter = RateLimiter(default=RateLimit(max_concurrent=1, tokens_per_minute=100), clock=ManualClock())
    order: list[str] = []
    hold = anyio.Event()

    async def request(name: str, tokens: int) -> None:
        async with limiter.acquire("k", tokens=tokens):
            order.append(name)
            await hold.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(request, "a", 10)
        await wait_all_tasks_blocked()
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(request, "cancelled", 80)
            await wait_all_tasks_blocked()
            tg.start_soon(request, "b", 10)
            await wait_all_tasks_blocked()
            assert stats(limiter).waiting == 2
            doomed.cancel_scope.cancel()
        assert stats(limiter).waiting == 1 and stats(limiter).cancelled == 1
        hold.set()
    assert order == ["a", "b"]
    s = stats(limiter)
    assert (s.in_flight, s.waiting, s.tokens_in_window) == (0, 0, 20)


async def test_a_waiter_cancelled_at_the_head_lets_the_next_one_through() -> None:
    clock = ManualClock()
    limiter = RateLimiter(default=RateLimit(requests_per_minute=1), clock=clock)
    async with limiter.acquire("k"):
        pass
    got: list[str] = []

    async def request(name: str) -> None:
        async with limiter.acquire("k"):
            got.append(name)

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as head_scope:
            async with anyio.create_task_group() as heads:
                heads.start_soon(request, "head")
                await wait_all_tasks_blocked()
                tg.start_soon(request, "next")
                await wait_all_tasks_blocked()
                head_scope.cancel()
        clock.advance(60)
    assert got == ["next"]
    assert stats(limiter).cancelled == 1


# -- pauses -----------------------------------------------------------------------------------------------------
async def test_a_pause_holds_every_waiter_then_a_probe_goes_alone() -> None:
    clock = ManualClock()
    limiter = RateLimiter(default=RateLimit(max_concurrent=10), clock=clock)
    events: list[tuple[str, float]] = []
    confirm = anyio.Event()
    orders: dict[str, int | None] = {}

    async def request(name: str) -> None:
        async with limiter.acquire("k") as lease:
            orders[name] = lease.order
            events.append((name, clock.now()))
            if name == "a":
                await confirm.wait()
                lease.confirm()
                events.append(("a confirmed", clock.now()))

    async with anyio.create_task_group() as tg:
        limiter.pause("k", 5.0)
        limiter.pause("k", 2.0)  # never shortens a pause
        assert stats(limiter).paused_for == 5.0
        for name in "abc":
            tg.start_soon(request, name)
            await wait_all_tasks_blocked()
        clock.advance(4.9)
        await wait_all_tasks_blocked()
        assert events == [] and stats(limiter).waiting == 3
        clock.advance(0.1)
        await wait_all_tasks_blocked()
        assert events == [("a", 5.0)]  # the probe, alone although 10 could run
        assert stats(limiter).probing
        confirm.set()
    # b and c are granted together once the probe is confirmed (they wake in any order: check grant order)
    assert events[:2] == [("a", 5.0), ("a confirmed", 5.0)]
    assert sorted(events[2:]) == [("b", 5.0), ("c", 5.0)]
    assert orders == {"a": 0, "b": 1, "c": 2}
    assert not stats(limiter).probing and stats(limiter).pauses == 1


async def test_a_failed_probe_hands_the_role_to_the_next_waiter() -> None:
    clock = ManualClock()
    limiter = RateLimiter(clock=clock)
    granted: list[str] = []
    fail = anyio.Event()

    async def request(name: str) -> None:
        with pytest.raises(RuntimeError) if name == "a" else _nothing():
            async with limiter.acquire("k"):
                granted.append(name)
                if name == "a":
                    await fail.wait()
                    raise RuntimeError("429 again")
                await anyio.sleep_forever() if name == "b" else None

    async with anyio.create_task_group() as tg:
        limiter.pause("k", 1.0)
        for name in "abc":
            tg.start_soon(request, name)
            await wait_all_tasks_blocked()
        clock.advance(1.0)
        await wait_all_tasks_blocked()
        assert granted == ["a"]
        fail.set()
        await wait_all_tasks_blocked()
        assert granted == ["a", "b"]  # b is the new probe: c still waits
        assert stats(limiter).waiting == 1
        tg.cancel_scope.cancel()
    assert stats(limiter).in_flight == 0 and stats(limiter).waiting == 0


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_a_pause_does_not_touch_requests_already_running() -> None:
    clock = ManualClock()
    limiter = RateLimiter(default=RateLimit(max_concurrent=2), clock=clock)
    async with limiter.acquire("k") as running:
        limiter.pause("k", 3.0)
        assert running.granted and stats(limiter).in_flight == 1


# -- the default clock is anyio's: trio's MockClock drives it ------------------------------------------------
@pytest.mark.trio
async def test_default_clock_follows_trio_mock_clock(autojump_clock: trio.abc.Clock) -> None:
    limiter = RateLimiter(default=RateLimit(requests_per_minute=3))
    start = trio.current_time()
    times: list[float] = []

    async def request() -> None:
        async with limiter.acquire("k"):
            times.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for _ in range(7):
            nursery.start_soon(request)
    assert times == pytest.approx([0, 0, 0, 60, 60, 60, 120])
    assert isinstance(RateLease, type)
