"""Query parameter limits: per declared parameter (integer, min, max, clamp or reject) and for the whole
query (parameter count, value length)."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator, model_validator

from bastion.config.model import Model

MAX_BOUND = 10**18  # the policy compares longer integers by sign alone
# Parameter names are echoed in client-facing details: keep them to plain, printable names.
ParamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-\[\]]{1,128}$")]


class OnExceed(StrEnum):
    REJECT = "reject"
    CLAMP = "clamp"


class ParamLimit(Model):
    max: int | float | None = Field(None, description="Largest value allowed.")
    min: int | float | None = Field(None, description="Smallest value allowed.")
    integer: bool = Field(True, description="The value must be a decimal integer (`-?[0-9]+`); `false` also "
                          "allows a decimal fraction (`-?[0-9]+(.[0-9]+)?`). No exponent, `NaN`, `Infinity`, "
                          "spaces or `+`. Anything else is refused (400), whatever `on_exceed` says.")
    on_exceed: OnExceed = Field(OnExceed.REJECT, description="A value outside `min`..`max`: `reject` refuses "
                                "the request (400 `request.query_invalid`); `clamp` replaces the value by "
                                "the bound it crossed and forwards the request (counted as a `clamped` "
                                "policy event).")

    @field_validator("max", "min", mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, not true/false")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ParamLimit:
        for bound in (self.min, self.max):
            if bound is None:
                continue
            if not math.isfinite(bound):
                raise ValueError("min and max must be finite numbers")
            if abs(bound) > MAX_BOUND:
                raise ValueError("min and max must be between -10^18 and 10^18")
            if self.integer and bound != int(bound):
                raise ValueError("min and max of an integer parameter must be integers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self


class QueryLimitsConfig(Model):
    params: dict[ParamName, ParamLimit] = Field(default_factory=dict, max_length=256, description=(
        "Limits by parameter name, e.g. `{limit: {max: 100, on_exceed: clamp}}`. Names are matched after "
        "percent-decoding, and every occurrence of a repeated parameter is checked, so neither encoding nor "
        "repetition slips a value past a limit. Parameters are separated by `&` only."))
    max_params: int | None = Field(None, ge=0, le=10_000, description="Most query parameters a request may "
                                   "carry (all of them, declared or not).")
    max_value_length: int | None = Field(None, ge=0, le=1_000_000, description="Longest value of any query "
                                         "parameter, in characters as sent (still percent-encoded).")
