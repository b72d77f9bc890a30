"""The `concurrency` policy: caps the requests of one caller that are in progress at once (429 over it).

A request takes one slot per limit when it passes this policy and gives them back when its exchange ends,
whatever the outcome: answered, refused by a later policy, failed upstream, or abandoned by the client
(``ctx.on_finish``). Rate limits bound how often a caller may start requests; this bounds how much of the
gateway and the upstream it holds at one time, which is what slow or expensive requests exhaust.

Counts live in this node's memory: with N nodes a caller may have N times `max` in flight. They are exact
(no window, no store round trip), so ``try_sync`` always decides. With
``services.extras["concurrency_slots"]`` (a :class:`SlotTables` kept by the runtime across reloads) a
reloaded policy keeps counting the requests admitted under the previous configuration; without it each
instance counts on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar

from pydantic import BaseModel

from bastion.errors.codes import CONCURRENCY_EXCEEDED
from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import BasePolicy, PolicyServices, PolicyType, Reject, Stage
from bastion.policies.concurrency.config import ConcurrencyConfig, ConcurrencyLimit
from bastion.policies.rate_limit.keys import part_function

Counts = dict[str, int]
KeyFunction = Callable[[RequestContext], str]
_RETRY_AFTER = {"Retry-After": "1"}  # a slot frees when any request of the key ends: usually soon


class SlotTables:
    """In-flight counts by declaration site and limit, shared by successive policy instances (reloads).

    Grows with the configuration only (one table per site and limit name); a table holds a key only while
    that key has requests in flight."""

    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: dict[str, Counts] = {}

    def table(self, name: str) -> Counts:
        return self._tables.setdefault(name, {})


def _release(counts: Counts, key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)  # idle keys take no memory


def _release_all(held: list[tuple[Counts, str]]) -> None:
    for counts, key in held:
        _release(counts, key)


def key_function(parts: list[str]) -> KeyFunction:
    """The caller a request is counted as. Parts are length-prefixed so that values cannot collide; an
    anonymous request on a consumer/credential key is counted by address, in its own namespace."""
    ip = part_function("ip")
    if parts == ["ip"]:
        def by_ip(ctx: RequestContext) -> str:
            return ip(ctx) or ""
        return by_ip
    functions = [part_function(p) for p in parts]

    def combined(ctx: RequestContext) -> str:
        values = []
        for function in functions:
            value = function(ctx)
            if value is None:
                return "anonymous|" + (ip(ctx) or "")
            values.append(f"{len(value)}:{value}")
        return "|".join(values)

    return combined


class _Limit:
    __slots__ = ("counts", "key", "max", "name", "reject")

    def __init__(self, config: ConcurrencyLimit, counts: Counts) -> None:
        self.name = config.name
        self.max = config.max
        self.key = key_function(config.key)
        self.counts = counts
        noun = "request" if config.max == 1 else "requests"
        self.reject = Reject(CONCURRENCY_EXCEEDED, f"At most {config.max} {noun} may be in progress at once "
                             f"({config.name}); retry when one has finished.", _RETRY_AFTER,
                             log_reason=f"concurrency limit {config.name!r} reached ({config.max} in flight)")


class ConcurrencyPolicy(BasePolicy):
    name: ClassVar[str] = "concurrency"
    stage: ClassVar[Stage] = Stage.LIMIT
    Config: ClassVar[type[BaseModel]] = ConcurrencyConfig

    def __init__(self, config: ConcurrencyConfig, services: PolicyServices) -> None:
        tables = services.extras.get("concurrency_slots")
        site = services.extras.get("policy_site")
        if not isinstance(tables, SlotTables) or not isinstance(site, str) or not site:
            tables, site = SlotTables(), "local"  # counts of this instance only
        self._limits = tuple(_Limit(limit, tables.table(f"{site}|{limit.name}")) for limit in config.limits)
        self._single = self._limits[0] if len(self._limits) == 1 else None

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        return self.try_sync(ctx)

    def try_sync(self, ctx: RequestContext) -> Reject | None:
        single = self._single
        if single is not None:  # the usual case: no list, one partial
            counts = single.counts
            key = single.key(ctx)
            held = counts.get(key, 0)
            if held >= single.max:
                return single.reject
            counts[key] = held + 1
            ctx.on_finish(partial(_release, counts, key))
            return None
        if not self._limits:
            return None
        taken: list[tuple[Counts, str]] = []
        for limit in self._limits:
            counts = limit.counts
            key = limit.key(ctx)
            held = counts.get(key, 0)
            if held >= limit.max:
                _release_all(taken)  # refused: what this request took so far goes back now
                return limit.reject
            counts[key] = held + 1
            taken.append((counts, key))
        ctx.on_finish(partial(_release_all, taken))
        return None

    def in_flight(self, name: str) -> int:
        """Requests holding a slot of limit `name` (for tests and diagnostics)."""
        return sum(next(x for x in self._limits if x.name == name).counts.values())


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    if not isinstance(config, ConcurrencyConfig):
        raise TypeError(f"concurrency expects ConcurrencyConfig, got {type(config).__name__}")
    return ConcurrencyPolicy(config, services)


POLICY_TYPE = PolicyType("concurrency", Stage.LIMIT, ConcurrencyConfig, _build,
                         "Cap the requests in progress per client, consumer or credential (429 with Retry-After).")
