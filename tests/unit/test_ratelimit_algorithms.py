"""The rate-limiting algorithms, the memory store's bounds and the circuit breaker, on injected time."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.ratelimit.algorithms import Algorithm, Decision, RuleSpec, WindowState, gcra, sliding_window
from bastion.ratelimit.breaker import CircuitBreaker
from bastion.ratelimit.failover import LocalFallback
from bastion.ratelimit.memory import MemoryCounterStore

SW = Algorithm.SLIDING_WINDOW
GCRA = Algorithm.GCRA


class Bucket:
    """One GCRA key, for tests: holds the TAT between hits."""

    def __init__(self, rule: RuleSpec) -> None:
        self.rule = rule
        self.tat: float | None = None

    def hit(self, now: float, cost: int = 1) -> Decision:
        self.tat, decision = gcra(self.tat, now, self.rule, cost)
        return decision


class Window:
    """One sliding-window key, for tests."""

    def __init__(self, rule: RuleSpec) -> None:
        self.rule = rule
        self.state: WindowState | None = None

    def hit(self, now: float, cost: int = 1) -> Decision:
        self.state, decision = sliding_window(self.state, now, self.rule, cost)
        return decision


# -- sliding window ------------------------------------------------------------------------------------------
def test_sliding_window_admits_exactly_the_limit_in_a_window() -> None:
    window = Window(RuleSpec(SW, 10, 1.0))
    decisions = [window.hit(100.0 + i * 0.05) for i in range(12)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 2
    assert [d.remaining for d in decisions[:10]] == list(range(9, -1, -1))
    assert all(d.limit == 10 for d in decisions)
    assert decisions[0].reset_after == pytest.approx(1.0)
    assert decisions[9].reset_after == pytest.approx(0.55)
    assert decisions[0].retry_after == 0.0


def test_sliding_window_weights_the_previous_window() -> None:
    window = Window(RuleSpec(SW, 10, 1.0))
    for i in range(10):
        assert window.hit(100.0 + i * 0.01).allowed
    # Just after the edge the previous window still weighs ~10: nothing passes.
    assert not window.hit(101.01).allowed
    # Half-way through the next window it weighs 5: exactly 5 more pass.
    admitted = [window.hit(101.5).allowed for _ in range(8)]
    assert admitted == [True] * 5 + [False] * 3
    # Two windows later everything has decayed.
    assert window.hit(103.0).remaining == 9


def test_sliding_window_retry_after_is_exact() -> None:
    window = Window(RuleSpec(SW, 10, 1.0))
    for _ in range(10):
        window.hit(100.5)
    refused = window.hit(100.95)
    assert not refused.allowed and refused.remaining == 0
    # Next window: 10 * (1 - x) + 1 <= 10  =>  x >= 0.1, i.e. 101.1.
    assert refused.retry_after == pytest.approx(0.15)
    assert not window.hit(101.09).allowed
    assert window.hit(101.1 + 1e-9).allowed


def test_sliding_window_retry_after_within_the_window() -> None:
    window = Window(RuleSpec(SW, 10, 1.0))
    for _ in range(8):
        window.hit(100.5)  # previous window: 8
    for _ in range(6):
        assert window.hit(101.5).allowed  # 8 * 0.5 + 6 = 10: full
    refused = window.hit(101.5)
    assert not refused.allowed
    # 8 * (1 - x) + 6 + 1 <= 10  =>  x >= 0.625
    assert refused.retry_after == pytest.approx(0.125)
    assert window.hit(101.625 + 1e-9).allowed


def test_sliding_window_costs() -> None:
    window = Window(RuleSpec(SW, 10, 1.0))
    assert window.hit(0.0, cost=4).remaining == 6
    assert window.hit(0.1, cost=4).remaining == 2
    refused = window.hit(0.2, cost=4)
    assert not refused.allowed and refused.remaining == 2
    assert window.hit(0.3, cost=2).allowed  # refused hits cost nothing
    over = window.hit(5.0, cost=11)  # more than the whole limit: never passes
    assert not over.allowed and over.retry_after == 1.0


# -- GCRA ----------------------------------------------------------------------------------------------------
def test_gcra_burst_then_steady_rate() -> None:
    bucket = Bucket(RuleSpec(GCRA, 10, 1.0, burst=5))  # one per 0.1 s, five at once
    burst = [bucket.hit(0.0) for _ in range(6)]
    assert [d.allowed for d in burst] == [True] * 5 + [False]
    assert [d.remaining for d in burst[:5]] == [4, 3, 2, 1, 0]
    assert burst[0].limit == 5
    assert burst[5].retry_after == pytest.approx(0.1)
    assert burst[4].reset_after == pytest.approx(0.5)  # the bucket is full again after 5 intervals
    # Steady rate: one every interval passes, nothing in between.
    for step in range(1, 50):
        now = step * 0.1
        assert bucket.hit(now).allowed, step
        assert not bucket.hit(now + 0.01).allowed


def test_gcra_retry_after_is_exact() -> None:
    bucket = Bucket(RuleSpec(GCRA, 2, 1.0))  # one per 0.5 s, burst 2
    bucket.hit(10.0)
    bucket.hit(10.0)
    refused = bucket.hit(10.2)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.3)
    assert refused.reset_after == pytest.approx(0.8)
    assert not bucket.hit(10.49).allowed
    assert bucket.hit(10.5).allowed


def test_gcra_costs() -> None:
    bucket = Bucket(RuleSpec(GCRA, 10, 1.0, burst=5))
    first = bucket.hit(0.0, cost=3)
    assert first.allowed and first.remaining == 2
    refused = bucket.hit(0.0, cost=3)
    assert not refused.allowed and refused.remaining == 2
    assert refused.retry_after == pytest.approx(0.1)
    assert bucket.hit(0.1, cost=3).allowed
    assert not bucket.hit(100.0, cost=6).allowed  # above the bucket: never


def test_gcra_idle_bucket_refills_to_burst_only() -> None:
    bucket = Bucket(RuleSpec(GCRA, 10, 1.0, burst=3))
    bucket.hit(0.0)
    later = [bucket.hit(1000.0).allowed for _ in range(4)]
    assert later == [True, True, True, False]


def test_rule_validation_and_division() -> None:
    with pytest.raises(ValueError):
        RuleSpec(SW, 0, 1.0)
    with pytest.raises(ValueError):
        RuleSpec(GCRA, 1, 0.0)
    rule = RuleSpec(GCRA, 100, 1.0, burst=40)
    assert rule.capacity == 40 and rule.interval == pytest.approx(0.01)
    share = rule.divided(3)
    assert (share.limit, share.burst, share.period) == (33, 13, 1.0)
    assert rule.divided(1) is rule
    assert RuleSpec(SW, 2, 1.0).divided(5).limit == 1


# -- properties ----------------------------------------------------------------------------------------------
hits = st.lists(st.tuples(st.floats(min_value=0.0, max_value=0.5), st.integers(min_value=1, max_value=3)),
                min_size=1, max_size=300)


@settings(max_examples=300, deadline=None)
@given(rate=st.integers(1, 50), per=st.sampled_from([0.1, 0.5, 1.0, 3.0, 60.0]), burst=st.integers(0, 20),
       start=st.floats(min_value=0.0, max_value=1e6), steps=hits)
def test_gcra_never_admits_more_than_burst_plus_rate(rate: int, per: float, burst: int, start: float,
                                                     steps: list[tuple[float, int]]) -> None:
    rule = RuleSpec(GCRA, rate, per, burst=burst)
    bucket = Bucket(rule)
    now = start
    first: float | None = None
    admitted = 0
    for gap, cost in steps:
        now += gap
        decision = bucket.hit(now, cost)
        if decision.allowed:
            first = now if first is None else first
            admitted += cost
        if first is not None:
            assert admitted <= rule.capacity + rate * (now - first) / per + 1e-6


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(1, 30), steps=hits)
def test_sliding_window_never_admits_more_than_the_limit_per_fixed_window(rate: int,
                                                                         steps: list[tuple[float, int]]) -> None:
    window = Window(RuleSpec(SW, rate, 1.0))
    now = 0.0
    per_window: dict[int, int] = {}
    for gap, cost in steps:
        now += gap
        if window.hit(now, cost).allowed:
            per_window[int(now // 1.0)] = per_window.get(int(now // 1.0), 0) + cost
    assert all(count <= rate for count in per_window.values())


@settings(max_examples=300, deadline=None)
@given(algorithm=st.sampled_from([SW, GCRA]), rate=st.integers(1, 20), steps=hits)
def test_retry_after_is_when_the_same_request_passes(algorithm: Algorithm, rate: int,
                                                     steps: list[tuple[float, int]]) -> None:
    rule = RuleSpec(algorithm, rate, 1.0)
    limiter = _limiter(rule)
    now = 0.0
    for index, (gap, cost) in enumerate(steps):
        now += gap
        decision = limiter.hit(now, cost)
        if decision.allowed or cost > rule.capacity:
            continue
        # Replay the history before the refusal, then retry at exactly retry_after: it passes; earlier: not.
        if decision.retry_after > 1e-3:
            assert not _replayed(rule, steps[:index], now + decision.retry_after - 1e-3, cost).allowed
        assert _replayed(rule, steps[:index], now + decision.retry_after + 1e-6, cost).allowed
        return


def _limiter(rule: RuleSpec) -> Bucket | Window:
    return Bucket(rule) if rule.algorithm is GCRA else Window(rule)


def _replayed(rule: RuleSpec, history: list[tuple[float, int]], at: float, cost: int) -> Decision:
    limiter = _limiter(rule)
    now = 0.0
    for gap, step_cost in history:
        now += gap
        limiter.hit(now, step_cost)
    return limiter.hit(at, cost)


# -- memory store bounds -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix", ["gcra", "sliding-window", "both"])
def test_memory_store_drops_idle_keys(mix: str) -> None:
    store = MemoryCounterStore(sweep_threshold=1000)
    rules = {"gcra": [RuleSpec(GCRA, 10, 1.0)], "sliding-window": [RuleSpec(SW, 10, 1.0)],
             "both": [RuleSpec(GCRA, 10, 1.0), RuleSpec(SW, 10, 1.0)]}[mix]
    now = 0.0
    peak = 0
    for i in range(50_000):
        now += 0.001  # 1000 new keys per second, each idle after at most 2 s
        store.hit_now(f"k{i}", rules[i % len(rules)], 1, now)
        peak = max(peak, len(store))
    # Live keys: at most ~2000 (windows live two periods); sweeps keep about twice that.
    assert peak <= 6000
    assert store.evicted == 0


def test_memory_store_caps_live_keys() -> None:
    store = MemoryCounterStore(max_keys=1000, sweep_threshold=100)
    rule = RuleSpec(SW, 10, 3600.0)  # nothing expires during the test
    for i in range(5000):
        store.hit_now(f"k{i}", rule, 1, float(i) / 1000)
    assert len(store) <= 1000 + 1000 // 16  # a sweep under way may overshoot by 1/16 at most
    assert store.evicted >= 3900
    # The newest keys are kept: their state is intact.
    assert store.hit_now("k4999", rule, 1, 5.0).remaining == 8


def test_memory_store_separates_algorithms_and_refused_first_hits_leave_nothing() -> None:
    store = MemoryCounterStore()
    assert store.hit_now("k", RuleSpec(GCRA, 5, 1.0), 1, 0.0).remaining == 4
    assert store.hit_now("k", RuleSpec(SW, 5, 1.0), 1, 0.0).remaining == 4
    store.hit_now("other", RuleSpec(GCRA, 5, 1.0), 9, 0.0)
    assert len(store) == 2


def test_local_fallback_divides_limits_by_nodes() -> None:
    fallback = LocalFallback(nodes=4)
    rule = RuleSpec(SW, 10, 1.0)
    admitted = sum(fallback.hit("k", rule, 1, 0.5).allowed for _ in range(10))
    assert admitted == 2  # 10 // 4
    assert fallback.share(rule) is fallback.share(rule)


# -- circuit breaker -----------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker("test", threshold=3, cooldown=1.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.allow()
    breaker.success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 0.99
    assert not breaker.allow()
    clock.now = 1.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now = 2.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_breaker_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker("test", threshold=1, cooldown=1.0, clock=clock)
    breaker.failure()
    clock.now = 1.0
    assert breaker.allow()
    breaker.abandon()
    assert breaker.allow()


def test_ceil_headers_never_round_a_wait_to_zero() -> None:
    from bastion.ratelimit.algorithms import ceil_seconds

    assert ceil_seconds(0.001) == 1
    assert ceil_seconds(1.0) == 1
    assert ceil_seconds(1.0000000001) == 1
    assert ceil_seconds(0.0) == 0
    assert math.isclose(ceil_seconds(59.2), 60)
