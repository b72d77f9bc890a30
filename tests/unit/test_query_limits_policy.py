"""The query-limits policy with injected request contexts: reject, clamp (byte-exact rewrite), counts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import ValidationError

from bastion.pipeline.context import Headers, RequestContext
from bastion.pipeline.policy import PolicyServices, Reject, Stage
from bastion.policies import builtin_policy_types
from bastion.policies.query_limits.config import QueryLimitsConfig
from bastion.policies.query_limits.policy import QueryLimitsPolicy

PAGING = {
    "params": {
        "limit": {"max": 100, "min": 1, "on_exceed": "clamp"},
        "page_size": {"max": 50},
        "ratio": {"max": 1.5, "min": 0, "integer": False, "on_exceed": "clamp"},
    },
    "max_params": 6,
    "max_value_length": 24,
}


def policy(config: dict[str, Any] | None = None) -> QueryLimitsPolicy:
    return QueryLimitsPolicy(QueryLimitsConfig.model_validate(PAGING if config is None else config))


def request(query: str) -> RequestContext:
    return RequestContext(request_id="r1", client_ip="203.0.113.9", method="GET", path="/items", query=query,
                          host="api", headers=Headers(), tls=True, started=0.0)


def run(query: str, config: dict[str, Any] | None = None) -> tuple[Reject | None, RequestContext]:
    ctx = request(query)
    outcome = policy(config).try_sync(ctx)
    assert not isinstance(outcome, Reject) or ctx.query == query  # a refusal leaves the query alone
    return outcome, ctx


@pytest.mark.parametrize("query", ["", "limit=1", "limit=100", "page_size=50&limit=20", "other=9999999&x",
                                   "ratio=1.5", "ratio=0.25", "limit=007", "a=1&&b=2"])
def test_values_within_limits_pass_untouched(query: str) -> None:
    outcome, ctx = run(query)
    assert outcome is None and ctx.query == query and ctx.events is None


@pytest.mark.parametrize(("query", "expected"), [
    ("limit=500", "limit=100"),
    ("a=1&limit=500&b=%20x+y&c", "a=1&limit=100&b=%20x+y&c"),  # every other byte kept, in order
    ("limit=0", "limit=1"),
    ("limit=-7", "limit=1"),
    ("li%6Dit=101&z=%E2%9C%93", "li%6Dit=100&z=%E2%9C%93"),  # matched decoded, name kept as sent
    ("limit=5&limit=5000", "limit=5&limit=100"),  # every occurrence: whichever the upstream reads is bounded
    ("limit=99999999999999999999", "limit=100"),  # huge, compared without converting
    ("ratio=2.75", "ratio=1.5"),
    ("ratio=%2D3", "ratio=0"),
])
def test_clamp_rewrites_only_the_value_and_records_it(query: str, expected: str) -> None:
    outcome, ctx = run(query)
    assert outcome is None
    assert ctx.query == expected
    assert ctx.events is not None and set(ctx.events) <= {("query-limits", "clamped", "limit"),
                                                           ("query-limits", "clamped", "ratio")}
    assert len(ctx.events) == 1  # once per parameter, however often it was clamped


@pytest.mark.parametrize(("query", "detail"), [
    ("page_size=51", "Query parameter 'page_size' must be at most 50."),
    ("limit=abc", "Query parameter 'limit' must be an integer."),
    ("limit=", "Query parameter 'limit' must be an integer."),
    ("limit", "Query parameter 'limit' must be an integer."),
    ("limit=1.5", "Query parameter 'limit' must be an integer."),
    ("limit=1e3", "Query parameter 'limit' must be an integer."),
    ("limit=+5", "Query parameter 'limit' must be an integer."),  # '+' is a space in a query
    ("limit=%205", "Query parameter 'limit' must be an integer."),
    ("limit=0x10", "Query parameter 'limit' must be an integer."),
    ("limit=%D9%A3", "Query parameter 'limit' must be an integer."),  # an Arabic-Indic digit: int() takes it
    ("limit=1_000", "Query parameter 'limit' must be an integer."),
    ("ratio=NaN", "Query parameter 'ratio' must be a number."),
    ("ratio=inf", "Query parameter 'ratio' must be a number."),
    ("page%5Fsize=60", "Query parameter 'page_size' must be at most 50."),
    ("page_size=10&page_size=60", "Query parameter 'page_size' must be at most 50."),
    ("limit=5&" + "x" * 3 + "=" + "v" * 25, "A query parameter value is too long (at most 24 characters)."),
    ("limit=" + "9" * 25, "Query parameter 'limit' is too long (at most 24 characters)."),
    ("a&b&c&d&e&f&g", "Too many query parameters (at most 6)."),
])
def test_refusals_are_400_problems_naming_only_configured_parameters(query: str, detail: str) -> None:
    outcome, _ = run(query)
    assert outcome is not None
    assert outcome.code.code == "request.query_invalid" and outcome.code.status == 400
    assert outcome.detail == detail
    assert outcome.log_reason


def test_a_refusal_never_echoes_request_text() -> None:
    for query in ("%3Cscript%3E=" + "x" * 30, "limit=%3Cscript%3E", "<script>=1&" * 7):
        outcome, _ = run(query)
        assert outcome is not None and outcome.detail is not None
        assert "script" not in outcome.detail and "script" not in (outcome.log_reason or "")


def test_empty_pieces_do_not_count_as_parameters() -> None:
    assert run("a=1&&&&&&&&&&b=2")[0] is None
    assert run("&".join(f"p{i}=1" for i in range(7)))[0] is not None


def test_limits_apply_only_when_configured() -> None:
    outcome, ctx = run("limit=100000&" + "&".join(f"p{i}=" + "v" * 100 for i in range(50)),
                       {"params": {"limit": {"integer": True}}})
    assert outcome is None and ctx.query.startswith("limit=100000&")


def test_on_request_matches_try_sync() -> None:
    ctx = request("limit=500")
    assert asyncio.run(policy().on_request(ctx)) is None and ctx.query == "limit=100"
    reject = asyncio.run(policy().on_request(request("page_size=99")))
    assert reject is not None and reject.code.code == "request.query_invalid"


@pytest.mark.parametrize("params", [
    {"limit": {"max": 1.5}},  # integer parameters have integer bounds
    {"limit": {"max": 1, "min": 2}},
    {"limit": {"max": True}},
    {"limit": {"max": 10**19}},
    {"limit": {"max": float("nan"), "integer": False}},
    {"limit": {"max": 1, "on_exceed": "ignore"}},
    {"bad name": {"max": 1}},
    {"<script>": {"max": 1}},
])
def test_invalid_configurations_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        QueryLimitsConfig.model_validate({"params": params})


def test_registered_as_a_validate_stage_policy() -> None:
    policy_type = builtin_policy_types()["query-limits"]
    assert policy_type.stage is Stage.VALIDATE
    built = policy_type.factory(QueryLimitsConfig.model_validate(PAGING), PolicyServices(time.monotonic))
    assert isinstance(built, QueryLimitsPolicy) and not built.needs_body
