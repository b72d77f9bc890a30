"""The `json-limits` policy: structure limits and strict parsing for JSON request bodies.

The body (whole, already bounded by the route's `max_body_bytes`) is checked in three steps:

1. A scan with C-speed bytes methods only (``replace``, ``split``, ``count``, ``translate``): strings are
   cut out, then brackets, colons and commas are counted outside them. This refuses deep nesting, too many keys and
   (as an upper bound) long arrays and strings *before* parsing: the stdlib parser recurses per nesting
   level, so ``[[[[...`` 100k deep must never reach it.
2. A parse with the stdlib ``json`` and an ``object_pairs_hook``, because only the pairs reveal duplicate
   keys, which parsers resolve differently (first wins, last wins, error): a gateway that checked one value
   while the upstream used the other would be bypassed. orjson is faster but silently keeps the last
   duplicate, and the parsed value is thrown away here anyway (only the bytes are forwarded). The parse is
   also made strict where the stdlib is lenient: UTF-8 only (no BOM, no UTF-16/32 sniffing), no
   ``NaN``/``Infinity``, bounded number literals.
3. Only when step 1 could not rule it out: an iterative walk for exact array and string lengths and
   unpaired surrogate escapes (``"\\ud800"``, which upstream parsers again treat differently).
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, ClassVar

from pydantic import BaseModel

from bastion.errors.codes import REQUEST_JSON_INVALID, REQUEST_JSON_TOO_COMPLEX, REQUEST_UNSUPPORTED_MEDIA_TYPE
from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import PENDING, BasePolicy, Pending, PolicyServices, PolicyType, Reject, Stage
from bastion.policies.json_limits.config import JsonLimitsConfig

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")  # one opening and one closing byte
_DELTA = [0] * 256
_DELTA[ord("(")] = 1
_DELTA[ord(")")] = -1
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # possibly a surrogate escape: check the strings
_SURROGATE = re.compile("[" + chr(0xD800) + "-" + chr(0xDFFF) + "]")  # after parsing, only unpaired ones remain
_CACHE_LIMIT = 256


class _Refused(Exception):
    """Raised from the parser's hooks to stop parsing at once."""

    def __init__(self, reject: Reject) -> None:
        super().__init__(reject.log_reason)
        self.reject = reject


def _invalid(detail: str, log_reason: str) -> Reject:
    return Reject(REQUEST_JSON_INVALID, detail, log_reason=log_reason)


def _too_complex(detail: str, log_reason: str) -> Reject:
    return Reject(REQUEST_JSON_TOO_COMPLEX, detail, log_reason=log_reason)


_NOT_JSON_DETAIL = "The request body is not valid JSON."
_NOT_UTF8 = _invalid("The request body is not valid JSON: it must be UTF-8.", "JSON body is not valid UTF-8")
_DUPLICATE = _invalid("The JSON body has an object with the same key twice.", "duplicate key in a JSON object")
_CONSTANT = _invalid("The JSON body contains NaN or Infinity, which JSON does not allow.",
                     "NaN or Infinity in a JSON body")
_LONE_SURROGATE = _invalid("The JSON body contains an unpaired surrogate escape.",
                           "unpaired surrogate escape in a JSON string")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refused(_DUPLICATE)
    return obj


def _no_constant(name: str) -> Any:
    raise _Refused(_CONSTANT)


def _declares_body(ctx: RequestContext) -> bool:
    """What the server's framing says: chunked, or a Content-Length above 0."""
    for name, value in ctx.headers.items:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip().isdigit() and int(value) > 0:
            return True
    return False


class JsonLimitsPolicy(BasePolicy):
    name: ClassVar[str] = "json-limits"
    stage: ClassVar[Stage] = Stage.VALIDATE
    Config: ClassVar[type[BaseModel]] = JsonLimitsConfig
    needs_body: ClassVar[bool] = True

    def __init__(self, config: JsonLimitsConfig) -> None:
        self._max_depth = config.max_depth
        self._max_array = config.max_array_length
        self._max_string = config.max_string_length
        self._max_keys = config.max_keys
        self._require_json = config.require_json
        self._deep_run = b"(" * (config.max_depth + 1)
        self._media_types: dict[str, bool] = {}  # Content-Type value -> is JSON (bounded)
        max_number = config.max_number_length
        number_too_long = _too_complex(f"A JSON number in the body is longer than {max_number} characters.",
                                       f"JSON number longer than {max_number}")

        def number(text: str) -> None:
            # The value is never used (only the bytes are forwarded): skip the conversion, check the length.
            if len(text) > max_number:
                raise _Refused(number_too_long)

        # Stateless hooks: one decoder serves every request.
        self._decoder = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_int=number, parse_float=number,
                                         parse_constant=_no_constant)
        self._too_deep = _too_complex(f"The JSON body is nested deeper than {config.max_depth} levels.",
                                      f"JSON nesting deeper than {config.max_depth}")
        self._too_many_keys = _too_complex(f"The JSON body has more than {config.max_keys} object keys.",
                                           f"more than {config.max_keys} JSON object keys")
        self._array_too_long = _too_complex(
            f"A JSON array in the body has more than {config.max_array_length} elements.",
            f"JSON array longer than {config.max_array_length}")
        self._string_too_long = _too_complex(
            f"A JSON string in the body is longer than {config.max_string_length} characters.",
            f"JSON string longer than {config.max_string_length}")
        self._not_json = Reject(REQUEST_UNSUPPORTED_MEDIA_TYPE, "This route only accepts JSON request bodies "
                                "(Content-Type: application/json).", log_reason="request body is not JSON")
        self._encoded = Reject(REQUEST_UNSUPPORTED_MEDIA_TYPE, "Compressed JSON request bodies are not "
                               "accepted.", log_reason="JSON body with a Content-Encoding")

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        body = ctx.body
        if body is None:
            if _declares_body(ctx):
                raise RuntimeError("json-limits needs the request body, and the gateway did not read it")
            return None
        return self._check(ctx, body)

    def try_sync(self, ctx: RequestContext) -> Reject | Pending | None:
        body = ctx.body
        if body is None:
            return PENDING if _declares_body(ctx) else None  # no body: nothing to check
        return self._check(ctx, body)

    # -- checks --------------------------------------------------------------------------------------
    def _is_json(self, content_type: str) -> bool:
        verdict = self._media_types.get(content_type)
        if verdict is None:
            media = content_type.split(";", 1)[0].strip().lower()
            verdict = media == "application/json" or ("/" in media and media.endswith("+json"))
            if len(self._media_types) >= _CACHE_LIMIT:
                self._media_types.clear()
            self._media_types[content_type] = verdict
        return verdict

    def _check(self, ctx: RequestContext, body: bytes) -> Reject | None:
        if not body:
            return None
        json_typed = False
        other_typed = False
        encoded = False
        for name, value in ctx.headers.items:
            if name == b"content-type":
                if self._is_json(value.decode("latin-1")):
                    json_typed = True
                else:
                    other_typed = True
            elif name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                encoded = True
        if not json_typed:
            return self._not_json if self._require_json else None
        if other_typed and self._require_json:
            return self._not_json  # two Content-Types: the upstream may believe the other one
        if encoded:
            return self._encoded  # what the upstream would inflate cannot be checked here
        return self._check_json(body)

    def _check_json(self, body: bytes) -> Reject | None:
        # 1. Before parsing: structure counted outside strings.
        if b'"' in body:
            scanned = body
            if body.find(b"\\") >= 0:  # find, not `in`: see routing/path.py
                # Hide escaped quotes, keeping lengths: backslash pairs first (so that in `\\"` the quote
                # still ends the string), then `\"`. Left to right, as a JSON lexer pairs them.
                scanned = body.replace(b"\\\\", b"__").replace(b'\\"', b"__")
            parts = scanned.split(b'"')  # now even parts are outside strings, odd parts inside
            outside = b"".join(parts[0::2])
            longest = max(map(len, parts[1::2]), default=0)  # raw: never shorter than unescaped
        else:
            outside = body
            longest = 0
        if outside.count(b"[") + outside.count(b"{") > self._max_depth:  # else the depth cannot exceed it
            brackets = outside.translate(_BRACKETS, _NOT_BRACKETS)
            # A run of openers (the usual attack) is found at memchr speed; the running sum is exact.
            if self._deep_run in brackets or max(accumulate(map(_DELTA.__getitem__, brackets))) > self._max_depth:
                return self._too_deep
        if outside.count(b":") > self._max_keys:  # every key is followed by one colon outside strings
            return self._too_many_keys
        check_arrays = outside.count(b",") >= self._max_array  # an array of n elements has n - 1 commas
        check_strings = longest > self._max_string
        check_surrogates = _SURROGATE_ESCAPE.search(body) is not None
        # 2. Parse, strictly.
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return _NOT_UTF8
        try:
            document = self._decoder.decode(text)
        except _Refused as refused:
            return refused.reject
        except json.JSONDecodeError as exc:
            return _invalid(_NOT_JSON_DETAIL, f"invalid JSON: {exc.msg} at offset {exc.pos}")
        except RecursionError:  # cannot happen under MAX_DEPTH; refused rather than crashed if it does
            return self._too_deep
        # 3. Exact lengths, only where the counts above could not rule them out.
        if check_arrays or check_strings or check_surrogates:
            return self._walk(document, check_arrays, check_strings, check_surrogates)
        return None

    def _walk(self, document: Any, arrays: bool, strings: bool, surrogates: bool) -> Reject | None:
        max_array = self._max_array
        max_string = self._max_string
        search = _SURROGATE.search

        def bad_string(value: str) -> Reject | None:
            if strings and len(value) > max_string:
                return self._string_too_long
            if surrogates and search(value) is not None:
                return _LONE_SURROGATE
            return None

        if type(document) is str:
            return bad_string(document)
        if type(document) is not list and type(document) is not dict:
            return None
        stack: list[Any] = [document]
        check_text = strings or surrogates
        while stack:  # iterative: depth is bounded already, but no recursion is cheaper still
            node = stack.pop()
            items: Any
            if type(node) is dict:
                if check_text:
                    for key in node:
                        refusal = bad_string(key)
                        if refusal is not None:
                            return refusal
                items = node.values()
            else:
                if arrays and len(node) > max_array:
                    return self._array_too_long
                items = node
            for item in items:
                kind = type(item)
                if kind is str:
                    if check_text:
                        refusal = bad_string(item)
                        if refusal is not None:
                            return refusal
                elif kind is list or kind is dict:
                    stack.append(item)
        return None


def _build(config: BaseModel, services: PolicyServices) -> BasePolicy:
    if not isinstance(config, JsonLimitsConfig):
        raise TypeError(f"json-limits expects JsonLimitsConfig, got {type(config).__name__}")
    return JsonLimitsPolicy(config)


POLICY_TYPE = PolicyType("json-limits", Stage.VALIDATE, JsonLimitsConfig, _build,
                         "Bound JSON request bodies (depth, array/string length, keys) and parse them strictly.")
