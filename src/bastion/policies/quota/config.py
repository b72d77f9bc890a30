"""A quota: how many requests a consumer (or one of its credentials) may make per calendar day or month."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from bastion.config.model import Model, Name
from bastion.ratelimit.failover import FailureMode

MAX_QUOTA = 1_000_000_000_000
QuotaLimit = Annotated[int, Field(ge=1, le=MAX_QUOTA)]


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"


class QuotaKey(StrEnum):
    CONSUMER = "consumer"
    CREDENTIAL = "credential"


class QuotaConfig(Model):
    period: Period = Field(..., description="The calendar period, in UTC: `day` (resets at midnight UTC) or "
                           "`month` (resets at midnight UTC on the first of the month).")
    limit: QuotaLimit = Field(..., description="Requests per period, for consumers whose plan is not listed "
                              "in `plans` (or who have none).")
    key: QuotaKey = Field(QuotaKey.CONSUMER, description="Who has a quota: each `consumer` (all its "
                          "credentials together) or each `credential` (API key) separately. Anonymous requests "
                          "are not counted.")
    plans: dict[Name, QuotaLimit] = Field(default_factory=dict, description="Requests per period by "
                                          "consumer plan (the consumer's `plan`), e.g. `{free: 1000, pro: "
                                          "100000}`.")
    on_store_failure: FailureMode = Field(FailureMode.CLOSED, description="When the shared counter store "
                                          "(Redis) fails: `closed` refuses with 503 and Retry-After, `open` "
                                          "admits uncounted (logged and counted), `local` counts in this "
                                          "node's memory with the quota divided by `nodes`.")
    nodes: int = Field(1, ge=1, le=10_000, description="Gateway nodes sharing this quota; with "
                       "`on_store_failure: local` each node then allows `limit / nodes` on its own.")
