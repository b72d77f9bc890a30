"""What a limit does when its counter store fails: refuse, admit, or count locally."""

from __future__ import annotations

from enum import StrEnum

from bastion.ratelimit.algorithms import Decision, FixedWindow, RuleSpec
from bastion.ratelimit.memory import MemoryCounterStore


class FailureMode(StrEnum):
    CLOSED = "closed"  # refuse (503 + Retry-After): a store outage never lifts the limits
    OPEN = "open"  # admit, and count the request as admitted unchecked
    LOCAL = "local"  # count in this process, each node allowing its share (limit / nodes)


# Seconds a client is told to wait when the store is down and the policy fails closed. The breaker's
# cool-down is about as long: by then the store has either been probed back or still refuses fast.
UNAVAILABLE_RETRY_AFTER = 1


class LocalFallback:
    """In-memory limiting while the shared store is down.

    With `nodes` gateways behind one load balancer, each one enforcing `limit / nodes` keeps the cluster
    near the configured limit without any coordination. The state is kept apart from a primary memory store
    and survives between outages (a flapping store does not reset it).
    """

    def __init__(self, nodes: int, store: MemoryCounterStore | None = None) -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self._nodes = nodes
        self._store = store if store is not None else MemoryCounterStore()
        self._rules: dict[RuleSpec, RuleSpec] = {}

    @property
    def nodes(self) -> int:
        return self._nodes

    def share(self, rule: RuleSpec) -> RuleSpec:
        """This node's share of `rule`."""
        divided = self._rules.get(rule)
        if divided is None:
            divided = rule.divided(self._nodes)
            if len(self._rules) < 4096:  # rules come from configuration: a handful
                self._rules[rule] = divided
        return divided

    def hit(self, key: str, rule: RuleSpec, cost: int, now: float) -> Decision:
        return self._store.hit_now(key, self.share(rule), cost, now)

    def hit_fixed(self, key: str, window: FixedWindow, cost: int, now: float) -> Decision:
        return self._store.hit_fixed_now(key, window.divided(self._nodes), cost, now)
