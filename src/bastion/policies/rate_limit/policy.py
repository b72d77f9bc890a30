"""The `rate-limit` policy: counts requests per key in a counter store and refuses over-limit ones (429).

Every response of a limited route carries the IETF headers of draft-ietf-httpapi-ratelimit-headers-11
(structured fields, unchanged since -08): `RateLimit-Policy: "name";q=<quota>;w=<window s>` and
`RateLimit: "name";r=<remaining>;t=<seconds>`, one list member per limit that applied to the request.
`t` is the seconds until the current window ends (sliding window) or the bucket is full again (GCRA); on a
refusal it is the Retry-After delay, so that Retry-After never points before the end of the window.

Counters live in `services.extras["counters"]` (a CounterStore shared by every policy instance and kept
across reloads: memory on one node, Redis for several) or, without it, in a memory store of this instance.
`services.extras["policy_site"]` names the declaration site, so that two sites with a same-named limit
never share a counter; without it the site is a digest of the configuration.

Outcomes worth counting are recorded with `ctx.record("rate-limit", <event>, <limit name>)` (the access
log's `events` and `bastion_policy_events_total`): `exceeded` (refused), `shadow_refused` (shadow mode:
would have been refused), and on a store failure `unavailable` (refused, 503), `unchecked` (admitted
unchecked) or `local` (decided by this node's share).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import ClassVar, Final

from pydantic import BaseModel

from bastion.errors.codes import RATE_LIMIT_EXCEEDED, RATE_LIMIT_UNAVAILABLE
from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import PENDING, BasePolicy, Pending, PolicyServices, PolicyType, Reject, Stage
from bastion.policies.counting import LogThrottle, StoreFailures, counter_store
from bastion.policies.rate_limit.config import (
    READ_METHODS,
    LimitConfig,
    MethodClass,
    Mode,
    PlanLimit,
    RateLimitConfig,
)
from bastion.policies.rate_limit.keys import KeyFunction, key_function
from bastion.ratelimit.algorithms import Decision, RuleSpec
from bastion.ratelimit.failover import UNAVAILABLE_RETRY_AFTER, FailureMode
from bastion.ratelimit.store import CounterStoreError

log = logging.getLogger("bastion.ratelimit")

POLICY = "rate-limit"

_METHODS: Final = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE")
_UNITS = ((86400.0, "day"), (3600.0, "hour"), (60.0, "minute"), (1.0, "second"))


def describe_period(seconds: float) -> str:
    """`second`, `5 minutes`, `500 ms`: for client-facing messages."""
    for size, unit in _UNITS:
        count = seconds / size
        if count >= 1 and count == int(count):
            return unit if count == 1 else f"{int(count)} {unit}s"
    if seconds < 1:
        return f"{round(seconds * 1000, 3):g} ms"
    return f"{seconds:g} seconds"


class _Variant:
    """One limit under one plan: its rule and the text it puts in headers and messages, built once."""

    __slots__ = ("detail", "item_prefix", "policy_item", "rule")

    def __init__(self, name: str, rule: RuleSpec) -> None:
        self.rule = rule
        window = max(1, math.ceil(rule.period))  # `w` is whole seconds: scale the quota to it
        quota = rule.limit if window == rule.period else int(rule.limit * window / rule.period)
        self.policy_item = f'"{name}";q={quota};w={window}'
        self.item_prefix = f'"{name}";r='
        self.detail = f"Limit of {rule.limit} requests per {describe_period(rule.period)} reached; retry after "


class _Limit:
    __slots__ = ("base", "costs", "key", "name", "plans")

    def __init__(self, config: LimitConfig, plans: dict[str, dict[str, PlanLimit]], site: str) -> None:
        self.name = config.name
        self.key: KeyFunction = key_function(f"{site}|{config.name}|", config.key)
        self.costs = {m: config.cost.get(m, 1) for m in _METHODS}
        base = RuleSpec(config.algorithm, config.rate, config.per, config.burst or 0)
        self.base = _Variant(config.name, base)
        self.plans: dict[str, _Variant] = {}
        for plan, overrides in plans.items():
            override = overrides.get(config.name)
            if override is not None:
                rule = RuleSpec(config.algorithm, override.rate, override.per or config.per, override.burst or 0)
                self.plans[plan] = _Variant(config.name, rule)


class _Fields:
    """The RateLimit-Policy and RateLimit header values, built as strings: with one limit (the usual
    case) no list and no join."""

    __slots__ = ("policy", "state")

    def __init__(self) -> None:
        self.policy = ""
        self.state = ""

    def add_policy(self, variant: _Variant) -> None:
        self.policy = f"{self.policy}, {variant.policy_item}" if self.policy else variant.policy_item

    def add_state(self, state: str) -> None:
        self.state = f"{self.state}, {state}" if self.state else state

    def apply(self, ctx: RequestContext) -> None:
        if self.policy:
            headers = ctx.response_headers
            headers["RateLimit-Policy"] = self.policy
            if self.state:
                headers["RateLimit"] = self.state


def _plan_of(ctx: RequestContext) -> str | None:
    identity = ctx.identity
    return None if identity is None else getattr(identity, "plan", None)


class RateLimitPolicy(BasePolicy):
    name: ClassVar[str] = "rate-limit"
    stage: ClassVar[Stage] = Stage.LIMIT
    Config: ClassVar[type[BaseModel]] = RateLimitConfig

    def __init__(self, config: RateLimitConfig, services: PolicyServices) -> None:
        self._clock = services.clock
        # The memory store answers synchronously: calling it directly saves a coroutine per limit.
        self._store, self._memory = counter_store(services)
        self._shadow = config.mode is Mode.SHADOW
        self._failures = StoreFailures(config.on_store_failure, config.nodes, "rate-limit")
        site = services.extras.get("policy_site")
        if not isinstance(site, str) or not site:
            site = "cfg-" + hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
        limits = [_Limit(limit, config.plans, site) for limit in config.limits]
        reads = tuple(x for x, c in zip(limits, config.limits, strict=True) if c.methods is not MethodClass.WRITE)
        writes = tuple(x for x, c in zip(limits, config.limits, strict=True) if c.methods is not MethodClass.READ)
        self._by_method = {m: reads if m in READ_METHODS else writes for m in _METHODS}
        self._writes = writes  # any other method is a write
        self._shadow_log = LogThrottle()

    def try_sync(self, ctx: RequestContext) -> Reject | Pending | None:
        """In memory the decision never waits: it is made here, without a coroutine."""
        memory = self._memory
        if memory is None:
            return PENDING
        method = ctx.method
        now = self._clock()
        fields = _Fields()
        for limit, key, variant in self._applicable(ctx):
            fields.add_policy(variant)  # limits after a refusal are not reported
            decision = memory.hit_now(key, variant.rule, limit.costs.get(method, 1), now)
            refusal = self._judge(ctx, limit, variant, decision, fields, now)
            if refusal is not None:
                return refusal
        fields.apply(ctx)
        return None

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        if self._memory is not None:
            outcome = self.try_sync(ctx)
            return None if isinstance(outcome, Pending) else outcome
        method = ctx.method
        now = self._clock()
        fields = _Fields()
        for limit, key, variant in self._applicable(ctx):
            fields.add_policy(variant)
            cost = limit.costs.get(method, 1)
            try:
                decision = await self._store.hit(key, variant.rule, cost, now)
            except CounterStoreError as exc:
                fallback = self._store_failed(ctx, exc, key, variant.rule, cost, now)
                if fallback is None:
                    if self._failures.mode is FailureMode.CLOSED and not self._shadow:
                        ctx.record(POLICY, "unavailable", limit.name)
                        return Reject(RATE_LIMIT_UNAVAILABLE, "Rate limits cannot be checked right now; "
                                      "retry shortly.", {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
                                      log_reason=f"rate-limit store failed ({limit.name}): {exc}")
                    ctx.record(POLICY, "unchecked", limit.name)
                    continue  # admitted unchecked: no state to report
                ctx.record(POLICY, "local", limit.name)
                decision = fallback
            refusal = self._judge(ctx, limit, variant, decision, fields, now)
            if refusal is not None:
                return refusal
        fields.apply(ctx)
        return None

    def _applicable(self, ctx: RequestContext) -> list[tuple[_Limit, str, _Variant]]:
        """The request's limits with their counter keys and the variant of its plan. A limit whose key is
        absent does not apply: an anonymous request on a consumer key, or a keyed header that is missing."""
        limits = self._by_method.get(ctx.method, self._writes)
        if not limits:
            return []
        plan = _plan_of(ctx)
        applicable = []
        for limit in limits:
            key = limit.key(ctx)
            if key is None:
                continue
            variant = limit.base if plan is None else limit.plans.get(plan, limit.base)
            applicable.append((limit, key, variant))
        return applicable

    def _judge(self, ctx: RequestContext, limit: _Limit, variant: _Variant, decision: Decision, fields: _Fields,
               now: float) -> Reject | None:
        """Record one limit's decision in the headers; the 429 when it refuses (never in shadow mode)."""
        if decision.allowed:
            fields.add_state(f"{variant.item_prefix}{decision.remaining};t={math.ceil(decision.reset_after)}")
            return None
        wait = math.ceil(decision.retry_after) or 1
        fields.add_state(f"{variant.item_prefix}{decision.remaining};t={wait}")
        if self._shadow:
            self._shadowed(ctx, limit.name, now)
            return None
        ctx.record(POLICY, "exceeded", limit.name)
        fields.apply(ctx)
        return Reject(RATE_LIMIT_EXCEEDED, f"{variant.detail}{wait} s.", {"Retry-After": str(wait)},
                      log_reason=f"rate limit {limit.name!r} exceeded; retry after {decision.retry_after:.3f} s")

    def _shadowed(self, ctx: RequestContext, name: str, now: float) -> None:
        ctx.scratch.setdefault("rate_limit_shadow", name)
        ctx.record(POLICY, "shadow_refused", name)
        throttle = self._shadow_log
        if throttle.ready(now):
            log.info("rate limit %r would refuse a request (shadow mode; %d similar not logged)", name,
                     throttle.suppressed)
            throttle.suppressed = 0

    def _store_failed(self, ctx: RequestContext, exc: CounterStoreError, key: str, rule: RuleSpec, cost: int,
                      now: float) -> Decision | None:
        """A decision from the fallback (`local`), or None: refuse (`closed`) or admit unchecked (`open`)."""
        ctx.scratch["rate_limit_store_failed"] = True
        fallback = self._failures.record(exc, now)
        if fallback is not None:
            ctx.scratch["rate_limit_local"] = True
            return fallback.hit(key, rule, cost, now)
        if self._failures.mode is FailureMode.OPEN or self._shadow:
            ctx.scratch["rate_limit_failed_open"] = True
        return None

    @property
    def store_failures(self) -> int:
        """Hits the store could not answer (each handled per on_store_failure)."""
        return self._failures.count


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    if not isinstance(config, RateLimitConfig):
        raise TypeError(f"rate-limit expects RateLimitConfig, got {type(config).__name__}")
    return RateLimitPolicy(config, services)


POLICY_TYPE = PolicyType(POLICY, Stage.LIMIT, RateLimitConfig, _build,
                         "Limit request rates per client, consumer, credential or header (429 with Retry-After).")
