"""Rate limits: who is counted (key), what counts (methods, cost), how (algorithm, rate, per, burst)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from bastion.config.model import Model, Name
from bastion.ratelimit.algorithms import Algorithm
from bastion.ratelimit.failover import FailureMode

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an HTTP field name (RFC 9110 token)
_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "TRACE"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KEY_PARTS = frozenset({"ip", "consumer", "credential", "route", "api", "method_class"})
MIN_PERIOD = 0.001  # the Redis scripts count in microseconds; below a millisecond a window means nothing
MAX_PERIOD = 366 * 86400.0


def _parse_duration(value: Any) -> Any:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use a number of seconds, or N followed by ms, s, m, h "
                             "or d, e.g. 1s, 5m, 1h)")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration), Field(ge=MIN_PERIOD, le=MAX_PERIOD)]


class Mode(StrEnum):
    ENFORCE = "enforce"
    SHADOW = "shadow"


class MethodClass(StrEnum):
    READ = "read"
    WRITE = "write"
    ALL = "all"


class PlanLimit(Model):
    rate: int = Field(..., ge=1, le=1_000_000_000, description="Requests (cost units) per `per` for consumers "
                      "on this plan.")
    per: Duration | None = Field(None, description="Window for this plan; default: the limit's `per`.")
    burst: int | None = Field(None, ge=1, le=1_000_000_000, description="GCRA bucket size for this plan; "
                              "default: this plan's `rate`. Only for `gcra` limits.")


class LimitConfig(Model):
    name: Name = Field(..., description="Unique within the policy; names the limit in the `RateLimit-Policy` "
                       "and `RateLimit` headers, in logs and in metrics.")
    key: list[str] = Field(default_factory=lambda: ["ip"], min_length=1, max_length=8, description=(
        "What is counted separately, combined: `ip` (the client address), `consumer` and `credential` (the "
        "authenticated caller and the credential used; the limit does not apply to anonymous requests), "
        "`route`, `api`, `method_class` (read or write), `header:<Name>` (the header's value, stored hashed; "
        "the limit does not apply when the header is absent)."))
    methods: MethodClass = Field(MethodClass.ALL, description="Which requests this limit counts: `read` (GET, "
                                 "HEAD, OPTIONS), `write` (every other method) or `all`.")
    algorithm: Algorithm = Field(Algorithm.SLIDING_WINDOW, description="`sliding-window`: at most `rate` per "
                                 "window, the previous window weighted in (smooth at window edges). `gcra`: a "
                                 "token bucket of `burst` refilled at `rate` per `per`.")
    rate: int = Field(..., ge=1, le=1_000_000_000, description="Requests (cost units) allowed per `per`.")
    per: Duration = Field(..., description="The window: seconds, or a duration such as `1s`, `5m`, `1h`, `1d`.")
    burst: int | None = Field(None, ge=1, le=1_000_000_000, description="`gcra` only: how many requests may "
                              "arrive at once after a quiet period. Default: `rate`.")
    cost: dict[str, int] = Field(default_factory=dict, description="Cost of one request by method, e.g. "
                                 "`{POST: 5}`; other methods cost 1. A cost above the limit's capacity is a "
                                 "configuration error (such a request could never pass).")

    @field_validator("key")
    @classmethod
    def _key_parts(cls, parts: list[str]) -> list[str]:
        for part in parts:
            if part.startswith("header:"):
                if not _TOKEN.match(part[7:]):
                    raise ValueError(f"{part!r}: expected header:<Field-Name>")
            elif part not in KEY_PARTS:
                raise ValueError(f"unknown key part {part!r}: expected one of {', '.join(sorted(KEY_PARTS))} "
                                 "or header:<Name>")
        if len(set(parts)) != len(parts):
            raise ValueError("a key part is listed twice")
        return parts

    @field_validator("cost", mode="before")
    @classmethod
    def _cost_methods(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        normalized: dict[Any, Any] = {}
        for method, weight in value.items():
            name = method.upper() if isinstance(method, str) else method
            if name not in _METHODS:
                raise ValueError(f"unknown method {method!r} in cost")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ValueError(f"cost of {name} must be an integer >= 1")
            normalized[name] = weight
        return normalized

    @model_validator(mode="after")
    def _consistent(self) -> LimitConfig:
        if self.burst is not None and self.algorithm is not Algorithm.GCRA:
            raise ValueError("burst applies to the gcra algorithm only")
        for method in self.cost:
            if self.methods is MethodClass.READ and method not in READ_METHODS:
                raise ValueError(f"cost for {method}, but this limit counts read methods only")
            if self.methods is MethodClass.WRITE and method in READ_METHODS:
                raise ValueError(f"cost for {method}, but this limit counts write methods only")
        check_cost(self.name, self.cost, self.capacity(self.rate, self.burst))
        return self

    def capacity(self, rate: int, burst: int | None) -> int:
        """The most one request may cost: the bucket (gcra) or the window (sliding window)."""
        if self.algorithm is Algorithm.GCRA and burst is not None:
            return burst
        return rate


def check_cost(name: str, cost: dict[str, int], capacity: int) -> None:
    for method, weight in cost.items():
        if weight > capacity:
            raise ValueError(f"limit {name!r}: {method} costs {weight}, more than the capacity {capacity}: "
                             "such a request could never pass")


class RateLimitConfig(Model):
    mode: Mode = Field(Mode.ENFORCE, description="`enforce` refuses over-limit requests (429). `shadow` refuses "
                       "nothing: it counts, sets the headers and logs what would have been refused, to try "
                       "limits on real traffic first.")
    on_store_failure: FailureMode = Field(FailureMode.CLOSED, description="When the shared counter store "
                                          "(Redis) fails: `closed` refuses with 503 and Retry-After, `open` "
                                          "admits unchecked (logged and counted), `local` counts in this "
                                          "node's memory with each limit divided by `nodes`.")
    nodes: int = Field(1, ge=1, le=10_000, description="Gateway nodes sharing these limits; with "
                       "`on_store_failure: local` each node then allows `rate / nodes` on its own.")
    limits: list[LimitConfig] = Field(default_factory=list, max_length=32, description="The limits. Each "
                                      "applies independently; a request must pass all that apply, checked in "
                                      "order (a refusal stops the check, so later limits are not charged).")
    plans: dict[Name, dict[Name, PlanLimit]] = Field(default_factory=dict, description="Per consumer plan "
                                                     "(the authenticated consumer's `plan`): overrides of "
                                                     "`rate`/`per`/`burst` by limit name.")

    @model_validator(mode="after")
    def _consistent(self) -> RateLimitConfig:
        names = [limit.name for limit in self.limits]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"limit names must be unique: {', '.join(duplicated)}")
        by_name = {limit.name: limit for limit in self.limits}
        for plan, overrides in self.plans.items():
            for name, override in overrides.items():
                limit = by_name.get(name)
                if limit is None:
                    raise ValueError(f"plan {plan!r} overrides unknown limit {name!r}")
                if override.burst is not None and limit.algorithm is not Algorithm.GCRA:
                    raise ValueError(f"plan {plan!r}: burst applies to gcra limits only ({name!r})")
                check_cost(name, limit.cost, limit.capacity(override.rate, override.burst))
        return self
