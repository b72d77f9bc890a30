"""The `business-flow` policy (OWASP API6): a route, or a whole API, declared as a sensitive business flow
(checkout, sign-up, password reset, ...) gets velocity limits of its own, checked narrowest first: per
consumer, per client address, then for all callers together. A refusal stops the check, so attempts that one
caller has already used up never spend the shared budgets of the address or of the flow.

Counters are sliding windows in the shared counter store (`services.extras["counters"]`: memory on one node,
Redis for several), keyed by the flow's name rather than by the declaration site: routes that declare the
same flow count together, as the metrics (labelled by flow name) already do. The window is part of the key,
so two declarations with different windows never read each other's state.

Every outcome is recorded with `ctx.record("business-flow", <event>, <flow name>)` — `admitted`, `refused`,
`unavailable` (store down, failing closed), `unchecked` (store down, failing open), and also `local` when this
node's share decided (store down, `local`) — so operators see the automated abuse of each flow in
`bastion_policy_events_total`. Flows are few and named by configuration, so
the label set stays small. No RateLimit headers are sent: a remaining budget would help a bot pace itself
just under the limit.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar

from pydantic import BaseModel

from bastion.errors.codes import FLOW_CONSUMER_REQUIRED, FLOW_LIMIT_EXCEEDED, RATE_LIMIT_UNAVAILABLE
from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import PENDING, BasePolicy, Pending, PolicyServices, PolicyType, Reject, Stage
from bastion.policies.business_flow.config import BusinessFlowConfig, VelocityLimit
from bastion.policies.counting import StoreFailures, counter_store, run_sync
from bastion.policies.rate_limit.keys import KeyFunction, key_function
from bastion.policies.rate_limit.policy import describe_period
from bastion.ratelimit.algorithms import Algorithm, Decision, RuleSpec
from bastion.ratelimit.failover import UNAVAILABLE_RETRY_AFTER, FailureMode
from bastion.ratelimit.store import CounterStoreError

log = logging.getLogger("bastion.ratelimit")

POLICY = "business-flow"


def _global_key(key: str) -> KeyFunction:
    def constant(ctx: RequestContext) -> str | None:
        return key

    return constant


class _Limit:
    """One velocity limit of the flow: its key, its rule and the reason logged when it refuses."""

    __slots__ = ("key", "reason", "rule")

    def __init__(self, flow: str, scope: str, limit: VelocityLimit) -> None:
        self.rule = RuleSpec(Algorithm.SLIDING_WINDOW, limit.rate, limit.per)
        prefix = f"flow:{flow}:{scope}:{limit.per!r}|"
        if scope == "consumer":
            self.key: KeyFunction = key_function(prefix, ["consumer"])  # None when anonymous: skipped
        elif scope == "address":
            self.key = key_function(prefix, ["ip"])
        else:
            self.key = _global_key(prefix)
        self.reason = f"{scope} limit of {limit.rate} per {describe_period(limit.per)}"


class BusinessFlowPolicy(BasePolicy):
    name: ClassVar[str] = POLICY
    stage: ClassVar[Stage] = Stage.LIMIT
    Config: ClassVar[type[BaseModel]] = BusinessFlowConfig

    def __init__(self, config: BusinessFlowConfig, services: PolicyServices) -> None:
        self._clock = services.clock
        self._store, self._memory = counter_store(services)
        self._flow = flow = config.name
        self._require_consumer = config.require_consumer
        declared = (("consumer", config.per_consumer), ("address", config.per_address),
                    ("global", config.global_))
        self._limits = tuple(_Limit(flow, scope, limit) for scope, limit in declared if limit is not None)
        self._failures = StoreFailures(config.on_store_failure, config.nodes, f"business flow {flow!r}")
        # Client-facing texts name the flow (configuration), never anything from the request.
        self._refused = f"Too many attempts at the business flow '{flow}'; retry after "
        self._consumer_required = (f"The business flow '{flow}' is open to identified consumers only: "
                                   "authenticate and retry.")

    def try_sync(self, ctx: RequestContext) -> Reject | Pending | None:
        if self._memory is None:
            return PENDING
        return run_sync(self.on_request(ctx))

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        flow = self._flow
        identity = ctx.identity
        if self._require_consumer and getattr(identity, "consumer_id", None) is None:
            ctx.record(POLICY, "refused", flow)
            return Reject(FLOW_CONSUMER_REQUIRED, self._consumer_required,
                          log_reason=f"business flow {flow!r}: anonymous caller")
        now = self._clock()
        memory = self._memory
        checked = True
        local = False
        for limit in self._limits:
            key = limit.key(ctx)
            if key is None:
                continue  # per-consumer limit, anonymous caller
            decision: Decision | None
            if memory is not None:
                decision = memory.hit_now(key, limit.rule, 1, now)
            else:
                try:
                    # One round trip per limit, in order: checking them together would charge the shared
                    # budgets for attempts the narrower limit refuses.
                    decision = await self._store.hit(key, limit.rule, 1, now)
                except CounterStoreError as exc:
                    fallback = self._failures.record(exc, now)
                    decision = fallback.hit(key, limit.rule, 1, now) if fallback is not None else None
                    if decision is None:
                        if self._failures.mode is FailureMode.CLOSED:
                            ctx.record(POLICY, "unavailable", flow)
                            return Reject(RATE_LIMIT_UNAVAILABLE, "Limits cannot be checked right now; retry "
                                          "shortly.", {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
                                          log_reason=f"business flow {flow!r}: counter store failed: {exc}")
                        checked = False
                        continue  # failing open: admitted unchecked
                    local = True
            if not decision.allowed:
                wait = math.ceil(decision.retry_after) or 1
                ctx.record(POLICY, "refused", flow)
                return Reject(FLOW_LIMIT_EXCEEDED, f"{self._refused}{wait} s.", {"Retry-After": str(wait)},
                              log_reason=f"business flow {flow!r}: {limit.reason} reached; retry after "
                                         f"{decision.retry_after:.3f} s")
        if local:
            ctx.record(POLICY, "local", flow)
        ctx.record(POLICY, "admitted" if checked else "unchecked", flow)
        return None

    @property
    def store_failures(self) -> int:
        return self._failures.count


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    if not isinstance(config, BusinessFlowConfig):
        raise TypeError(f"business-flow expects BusinessFlowConfig, got {type(config).__name__}")
    return BusinessFlowPolicy(config, services)


POLICY_TYPE = PolicyType(POLICY, Stage.LIMIT, BusinessFlowConfig, _build,
                         "Velocity limits for a sensitive business flow per consumer, address and overall "
                         "(OWASP API6).")
