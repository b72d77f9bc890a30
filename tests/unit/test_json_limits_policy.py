"""The json-limits policy with injected request contexts: structure limits, strict parsing, media types."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bastion.pipeline.context import Headers, RequestContext
from bastion.pipeline.policy import PENDING, PolicyServices, Reject, Stage
from bastion.policies import builtin_policy_types
from bastion.policies.json_limits.config import MAX_DEPTH, JsonLimitsConfig
from bastion.policies.json_limits.policy import JsonLimitsPolicy

JSON = "application/json"


def policy(**config: Any) -> JsonLimitsPolicy:
    return JsonLimitsPolicy(JsonLimitsConfig.model_validate(config))


def request(body: bytes | None, content_type: str | None = JSON, *, headers: list[tuple[str, str]] | None = None,
            framing: bool = True) -> RequestContext:
    items = [] if content_type is None else [(b"content-type", content_type.encode("latin-1"))]
    items += [(k.encode(), v.encode()) for k, v in headers or []]
    if body is not None and framing:
        items.append((b"content-length", str(len(body)).encode()))
    ctx = RequestContext(request_id="r1", client_ip="203.0.113.9", method="POST", path="/items", query="",
                         host="api", headers=Headers(items), tls=True, started=0.0)
    ctx.body = body
    return ctx


def check(body: bytes | None, p: JsonLimitsPolicy | None = None, **kwargs: Any) -> Reject | None:
    """Both entry points, which must agree."""
    p = p or policy()
    ctx = request(body, **kwargs)
    sync = p.try_sync(ctx)
    assert sync is not PENDING
    assert asyncio.run(p.on_request(ctx)) == sync
    assert ctx.body == body  # checked, never changed
    return sync  # type: ignore[return-value]


def code(outcome: Reject | None) -> str | None:
    return None if outcome is None else outcome.code.code


# -- what passes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    b'{"name": "Ada", "tags": ["a", "b"], "n": 1.5e3, "ok": true, "none": null, "neg": -0}',
    b"[]", b"{}", b'"just a string"', b"42", b"true", b" \t\r\n[1]\n",
    b'{"quote": "a \\"[[[{{{\\" b", "backslash": "\\\\", "after": [1]}',
    b'{"emoji": "\\ud83d\\ude00", "raw": "\xf0\x9f\x98\x80", "literal": "\\\\ud800"}',
    b'{"a": {"a": {"a": 1}}}',  # the same key in different objects is fine
])
def test_valid_json_passes(body: bytes) -> None:
    assert check(body) is None


def test_limits_at_their_exact_value_pass_and_one_more_is_refused() -> None:
    p = policy(max_depth=4, max_array_length=3, max_string_length=5, max_keys=3, max_number_length=4)
    assert check(b"[[[[1]]]]", p) is None
    assert code(check(b"[[[[[1]]]]]", p)) == "request.json_too_complex"
    assert check(b'[{"a": [{}]}]', p) is None
    assert code(check(b'[{"a": [{"b": []}]}]', p)) == "request.json_too_complex"
    assert check(b"[1, 2, 3]", p) is None
    assert code(check(b"[1, 2, 3, 4]", p)) == "request.json_too_complex"
    assert check(b'["abcde", "\\u00e9\\n\\t\\"\\\\"]', p) is None  # 5 characters once unescaped
    assert code(check(b'["abcdef"]', p)) == "request.json_too_complex"
    assert code(check(b'{"abcdef": 1}', p)) == "request.json_too_complex"  # keys are strings too
    assert check('["ééééé"]'.encode(), p) is None  # characters, not bytes
    assert check(b'{"a": 1, "b": {"c": 2}}', p) is None
    assert code(check(b'{"a": 1, "b": {"c": 2, "d": 3}}', p)) == "request.json_too_complex"
    assert check(b"[1234, -123, 1e10]", p) is None
    assert code(check(b"[12345]", p)) == "request.json_too_complex"
    assert code(check(b"[1.2345]", p)) == "request.json_too_complex"


def test_refusals_name_the_limit() -> None:
    details = {
        b"[" * 40 + b"]" * 40: "The JSON body is nested deeper than 32 levels.",
        b"[" + b"0," * 10_000 + b"0]": "A JSON array in the body has more than 10000 elements.",
        b'"' + b"x" * 100_001 + b'"': "A JSON string in the body is longer than 100000 characters.",
        b"[" + b"1" * 1001 + b"]": "A JSON number in the body is longer than 1000 characters.",
        json.dumps({str(i): 0 for i in range(100_001)}).encode(): "The JSON body has more than 100000 object keys.",
    }
    for body, detail in details.items():
        outcome = check(body)
        assert outcome is not None and outcome.code.status == 413 and outcome.detail == detail


@pytest.mark.parametrize("body", [b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b"{\"a\":" * 100_000,
                                  b"[{" * 50_000, b'[' * 100_000 + b'"' + b"]" * 10])
def test_deep_nesting_is_refused_before_parsing(body: bytes) -> None:
    started = time.perf_counter()
    assert code(check(body)) == "request.json_too_complex"  # no RecursionError, no gateway.internal
    assert time.perf_counter() - started < 1.0


def test_the_deepest_configurable_nesting_parses_without_recursion_error() -> None:
    p = policy(max_depth=MAX_DEPTH)
    assert check(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, p) is None
    assert check(b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH, p) is None
    assert code(check(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), p)) == "request.json_too_complex"


def test_brackets_inside_strings_do_not_count() -> None:
    p = policy(max_depth=2, max_keys=1, max_array_length=2)
    assert check(b'{"k": "[[[[{{{{::::,,,,"}', p) is None
    assert check(b'["\\"[[[[", "\\\\"]', p) is None  # an escaped quote does not end the string; \\ does


# -- what is invalid --------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "log_part"), [
    (b'{"a": 1, "a": 2}', "duplicate"),
    (b'[{"x": {"id": 1, "id": 1}}]', "duplicate"),
    (b'{"a": 1, "\\u0061": 2}', "duplicate"),  # the same key once unescaped
    (b"[NaN]", "NaN"),
    (b"[-Infinity]", "NaN"),
    (b'{"a": "\\ud800"}', "surrogate"),
    (b'{"\\udc00": 1}', "surrogate"),
    (b'["\\ude00\\ud83d"]', "surrogate"),  # a pair in the wrong order is two lone halves
    (b'{"a": "\xff"}', "UTF-8"),
    (b'{"a": "\xed\xa0\x80"}', "UTF-8"),  # a surrogate encoded in UTF-8
    (b"\xef\xbb\xbf{}", "invalid JSON"),  # a byte-order mark
    ('{"a": 1}'.encode("utf-16"), "UTF-8"),
    (b"{'a': 1}", "invalid JSON"),
    (b'{"a": 1,}', "invalid JSON"),
    (b"[1] [2]", "invalid JSON"),
    (b'{"a": "line\nbreak"}', "invalid JSON"),  # raw control characters
    (b'"unterminated', "invalid JSON"),
    (b'"\\', "invalid JSON"),
    (b"[1, 2", "invalid JSON"),
    (b"nul", "invalid JSON"),
])
def test_invalid_json_is_a_400(body: bytes, log_part: str) -> None:
    outcome = check(body)
    assert outcome is not None and outcome.code.code == "request.json_invalid" and outcome.code.status == 400
    assert log_part in (outcome.log_reason or "")
    assert outcome.detail is not None and "\\u" not in outcome.detail and '"a"' not in outcome.detail


# -- media types ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON; charset=utf-8",
                                          "application/problem+json", "application/vnd.api+json ; ext=x"])
def test_json_media_types_are_checked(content_type: str) -> None:
    assert code(check(b"[[", content_type=content_type)) == "request.json_invalid"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx", "+json"])
def test_other_bodies_pass_unless_json_is_required(content_type: str | None) -> None:
    assert check(b"[[[[ not json", content_type=content_type) is None
    refused = check(b"[[[[ not json", policy(require_json=True), content_type=content_type)
    assert refused is not None and refused.code.code == "request.unsupported_media_type"
    assert refused.code.status == 415


def test_two_content_types_are_checked_as_json_and_refused_when_json_is_required() -> None:
    two = [("content-type", "text/plain")]
    assert code(check(b"[[", headers=two)) == "request.json_invalid"
    assert code(check(b"[1]", policy(require_json=True), headers=two)) == "request.unsupported_media_type"
    assert check(b"[1]", policy(require_json=True)) is None


def test_compressed_json_is_refused() -> None:
    outcome = check(b"\x1f\x8b\x08\x00", headers=[("content-encoding", "gzip")])
    assert code(outcome) == "request.unsupported_media_type"
    assert check(b"[1]", headers=[("content-encoding", "identity")]) is None


def test_requests_without_a_body_pass_and_a_declared_body_is_awaited() -> None:
    p = policy(require_json=True)
    assert p.try_sync(request(None)) is None
    assert asyncio.run(p.on_request(request(None))) is None
    assert check(b"", p) is None  # an empty body (chunked, zero chunks) is no body
    # The gateway reads a declared body before calling the policy; without it the policy waits, never passes.
    declared = request(None, headers=[("content-length", "5")])
    assert p.try_sync(declared) is PENDING
    with pytest.raises(RuntimeError):
        asyncio.run(p.on_request(declared))
    assert p.try_sync(request(None, headers=[("transfer-encoding", "chunked")])) is PENDING
    assert p.try_sync(request(None, headers=[("content-length", "0")])) is None


# -- agreement with the stdlib on what is valid ---------------------------------------------------------
_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)
_documents = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=40)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in [k, *_texts(v)]]
    return []


@settings(max_examples=300, deadline=None)
@given(_documents, st.booleans())
def test_any_document_within_limits_passes_and_depth_is_measured_exactly(document: Any, ascii_only: bool) -> None:
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    if any(0xD800 <= ord(c) <= 0xDFFF for t in _texts(document) for c in t):
        return  # lone surrogates are refused on purpose
    depth = _depth(document)
    assert check(body, policy(max_depth=max(depth, 1))) is None
    if depth > 1:
        assert code(check(body, policy(max_depth=depth - 1))) == "request.json_too_complex"


# -- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [{"max_depth": 0}, {"max_depth": MAX_DEPTH + 1}, {"max_keys": -1},
                                    {"max_array_length": "many"}, {"strict": True}])
def test_invalid_configurations_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JsonLimitsConfig.model_validate(config)


def test_registered_as_a_validate_stage_policy_that_needs_the_body() -> None:
    policy_type = builtin_policy_types()["json-limits"]
    assert policy_type.stage is Stage.VALIDATE
    built = policy_type.factory(JsonLimitsConfig(), PolicyServices(time.monotonic))
    assert isinstance(built, JsonLimitsPolicy) and built.needs_body
