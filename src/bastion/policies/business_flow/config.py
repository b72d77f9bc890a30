"""A sensitive business flow: its name, its velocity limits and who may enter it."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from bastion.config.model import Model, Name
from bastion.policies.rate_limit.config import Duration
from bastion.ratelimit.failover import FailureMode


class VelocityLimit(Model):
    rate: int = Field(..., ge=1, le=1_000_000_000, description="Attempts allowed per `per`.")
    per: Duration = Field(..., description="The window: seconds, or a duration such as `30s`, `1m`, `1h`, `1d`.")


class Requirement(StrEnum):
    """Conditions a caller must meet to enter a flow. Declared now so that configurations can name them;
    each is refused at load until the capability that checks it exists."""

    RECENT_PASSKEY = "recent_passkey"  # a passkey verification within the last minutes
    VERIFIED_CONSUMER = "verified_consumer"  # a consumer whose contact details were verified


class BusinessFlowConfig(Model):
    name: Name = Field(..., description="The flow's name (e.g. `checkout`): in the refusal's detail, in the "
                       "`bastion_policy_events_total` metric and in the access log. Routes that declare the "
                       "same flow name count together (for example the checkout of two API versions).")
    per_consumer: VelocityLimit | None = Field(None, description="Attempts per authenticated consumer. "
                                               "Does not apply to anonymous requests.")
    per_address: VelocityLimit | None = Field(None, description="Attempts per client address (IPv6 per "
                                              "/64), whoever the caller is.")
    global_: VelocityLimit | None = Field(None, alias="global", description="Attempts by all callers "
                                          "together: a ceiling on the flow, e.g. for a limited stock.")
    require_consumer: bool = Field(False, description="Refuse anonymous callers (403 "
                                   "`flow.consumer_required`) before counting anything.")
    require: list[Requirement] = Field(default_factory=list, max_length=4, description="Further conditions "
                                       "on the caller (`recent_passkey`, `verified_consumer`). Reserved: none "
                                       "is available yet, and naming one is a configuration error rather than "
                                       "a condition silently not checked.")
    on_store_failure: FailureMode = Field(FailureMode.CLOSED, description="When the shared counter store "
                                          "(Redis) fails: `closed` refuses with 503 and Retry-After, `open` "
                                          "admits unchecked (logged and counted), `local` counts in this "
                                          "node's memory with each limit divided by `nodes`.")
    nodes: int = Field(1, ge=1, le=10_000, description="Gateway nodes sharing these limits; with "
                       "`on_store_failure: local` each node then allows `rate / nodes` on its own.")

    @field_validator("require")
    @classmethod
    def _not_available_yet(cls, requirements: list[Requirement]) -> list[Requirement]:
        if requirements:
            names = ", ".join(r.value for r in requirements)
            raise ValueError(f"{names}: not available yet in this version of Bastion; remove `require` (a flow "
                             "requirement is never ignored silently)")
        return requirements

    @model_validator(mode="after")
    def _limited(self) -> BusinessFlowConfig:
        if self.per_consumer is None and self.per_address is None and self.global_ is None:
            raise ValueError("a business flow needs at least one of per_consumer, per_address or global")
        return self
