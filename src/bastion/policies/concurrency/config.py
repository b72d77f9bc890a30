"""Concurrency limits: how many requests of one caller (key) may be in progress at once (max)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from bastion.config.model import Model, Name

KEY_PARTS = frozenset({"ip", "consumer", "credential"})


class ConcurrencyLimit(Model):
    name: Name = Field(..., description="Unique within the policy; names the limit in logs and in the "
                       "problem's `detail`.")
    key: list[str] = Field(default_factory=lambda: ["ip"], min_length=1, max_length=3, description=(
        "Whose requests are counted together, combined: `ip` (the client address; IPv6 per /64), "
        "`consumer` and `credential` (the authenticated caller and the credential used). An anonymous "
        "request is counted by its address instead, so a key on the caller still caps unauthenticated "
        "clients."))
    max: int = Field(..., ge=1, le=1_000_000, description="Requests of one key that may be in progress at "
                     "once; one more is refused (429 `concurrency.exceeded`) until one of them ends.")

    @field_validator("key")
    @classmethod
    def _key_parts(cls, parts: list[str]) -> list[str]:
        for part in parts:
            if part not in KEY_PARTS:
                raise ValueError(f"unknown key part {part!r}: expected one of {', '.join(sorted(KEY_PARTS))}")
        if len(set(parts)) != len(parts):
            raise ValueError("a key part is listed twice")
        return parts


class ConcurrencyConfig(Model):
    limits: list[ConcurrencyLimit] = Field(default_factory=list, max_length=16, description="The limits. A "
                                           "request must get a slot under every one; the slots are given "
                                           "back when its exchange ends, whatever the outcome. Counted in "
                                           "the memory of each gateway node: with N nodes a caller may "
                                           "have up to N times `max` in flight.")

    @model_validator(mode="after")
    def _unique_names(self) -> ConcurrencyConfig:
        names = [limit.name for limit in self.limits]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"limit names must be unique: {', '.join(duplicated)}")
        return self
