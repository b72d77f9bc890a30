"""The `query-limits` policy: bounds on query parameters (page sizes, counts) and on the query's shape.

A declared parameter's value must be a plain decimal number; out of range it is refused (400) or clamped.
Clamping rewrites ``ctx.query``, which is what the upstream receives: every other byte of the query stays
as sent, in order, and only the clamped value changes. Names are percent-decoded before matching (the
upstream decodes them too: ``li%6Dit`` is ``limit``) and every occurrence of a repeated parameter is
checked, so whichever occurrence the upstream picks is within bounds. Problem details only ever name a
parameter declared in the configuration, never one (or a value) taken from the request.
"""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import unquote_plus

from pydantic import BaseModel

from bastion.errors.codes import REQUEST_QUERY_INVALID
from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import BasePolicy, PolicyServices, PolicyType, Reject, Stage
from bastion.policies.query_limits.config import OnExceed, ParamLimit, QueryLimitsConfig

_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: int() would also take spaces, '_' and other scripts
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_MAX_DIGITS = 30  # longer integers are beyond any bound: compared by sign, never converted (int() is quadratic)


class _Param:
    """One declared parameter, with its refusals built once."""

    __slots__ = ("clamp", "high", "high_text", "low", "low_text", "name", "pattern", "reject_format",
                 "reject_high", "reject_length", "reject_low")

    def __init__(self, name: str, config: ParamLimit, max_value_length: int | None) -> None:
        self.name = name
        self.pattern = _INTEGER if config.integer else _DECIMAL
        self.clamp = config.on_exceed is OnExceed.CLAMP
        self.high = config.max
        self.low = config.min
        # The text a clamped value is replaced by: what the configuration says, as a plain number.
        self.high_text = _number_text(config.max, config.integer)
        self.low_text = _number_text(config.min, config.integer)
        kind = "an integer" if config.integer else "a number"
        self.reject_format = _reject(f"Query parameter '{name}' must be {kind}.",
                                     f"query parameter {name!r} is not {kind}")
        self.reject_high = _reject(f"Query parameter '{name}' must be at most {self.high_text}.",
                                   f"query parameter {name!r} above {self.high_text}")
        self.reject_low = _reject(f"Query parameter '{name}' must be at least {self.low_text}.",
                                  f"query parameter {name!r} below {self.low_text}")
        self.reject_length = _reject(
            f"Query parameter '{name}' is too long (at most {max_value_length} characters).",
            f"query parameter {name!r} longer than {max_value_length}")

    def check(self, raw: str) -> Reject | str | None:
        """None: the value is fine; a string: the value to forward instead (clamped); or a refusal."""
        value = unquote_plus(raw) if "%" in raw or "+" in raw else raw
        if not self.pattern.fullmatch(value):
            return self.reject_format
        number: int | float
        if self.pattern is not _INTEGER:
            number = float(value)  # linear in the length, whatever it is
        elif len(value) > _MAX_DIGITS:
            number = float("-inf") if value[0] == "-" else float("inf")
        else:
            number = int(value)
        high = self.high
        if high is not None and number > high:
            return self.high_text if self.clamp else self.reject_high
        low = self.low
        if low is not None and number < low:
            return self.low_text if self.clamp else self.reject_low
        return None


def _number_text(bound: int | float | None, integer: bool) -> str:
    if bound is None:
        return ""
    if integer or bound == int(bound):
        return str(int(bound))
    return repr(float(bound))


def _reject(detail: str, log_reason: str) -> Reject:
    return Reject(REQUEST_QUERY_INVALID, detail, log_reason=log_reason)


class QueryLimitsPolicy(BasePolicy):
    name: ClassVar[str] = "query-limits"
    stage: ClassVar[Stage] = Stage.VALIDATE
    Config: ClassVar[type[BaseModel]] = QueryLimitsConfig

    def __init__(self, config: QueryLimitsConfig) -> None:
        self._params = {name: _Param(name, limit, config.max_value_length) for name, limit in config.params.items()}
        self._max_params = config.max_params
        self._max_length = config.max_value_length
        self._too_many = _reject(f"Too many query parameters (at most {config.max_params}).",
                                 f"more than {config.max_params} query parameters")
        self._too_long = _reject(
            f"A query parameter value is too long (at most {config.max_value_length} characters).",
            f"an undeclared query parameter's value is longer than {config.max_value_length}")

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        return self.try_sync(ctx)

    def try_sync(self, ctx: RequestContext) -> Reject | None:
        query = ctx.query
        if not query:
            return None
        pieces = query.split("&")
        max_params = self._max_params
        if max_params is not None and len(pieces) > max_params and sum(1 for p in pieces if p) > max_params:
            return self._too_many  # empty pieces (`a=1&&b=2`) are no parameters to any parser
        params = self._params
        max_length = self._max_length
        clamped: list[tuple[int, str, str]] | None = None  # (piece index, name, new value)
        for index, piece in enumerate(pieces):
            name, _, raw = piece.partition("=")
            if "%" in name or "+" in name:
                name = unquote_plus(name)
            param = params.get(name)
            if max_length is not None and len(raw) > max_length:
                return self._too_long if param is None else param.reject_length
            if param is None:
                continue
            outcome = param.check(raw)
            if outcome is None:
                continue
            if isinstance(outcome, Reject):
                return outcome
            if clamped is None:
                clamped = []
            clamped.append((index, param.name, outcome))
        if clamped is not None:
            recorded = set()
            for index, name, value in clamped:
                raw_name = pieces[index].partition("=")[0]  # the name exactly as sent
                pieces[index] = f"{raw_name}={value}"
                if name not in recorded:
                    recorded.add(name)
                    ctx.record("query-limits", "clamped", name)
            ctx.query = "&".join(pieces)
        return None


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    if not isinstance(config, QueryLimitsConfig):
        raise TypeError(f"query-limits expects QueryLimitsConfig, got {type(config).__name__}")
    return QueryLimitsPolicy(config)


POLICY_TYPE = PolicyType("query-limits", Stage.VALIDATE, QueryLimitsConfig, _build,
                         "Bound query parameters (page sizes: reject or clamp), their count and length (400).")
