"""Every error the gateway itself answers, in one registry.

Codes are ``area.reason``; they are never renamed or reused (tests compare this registry with
``tests/unit/errors_snapshot.json`` and with ``docs/errors.md``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int
    title: str
    description: str
    """For the docs: when the gateway answers with this code, and what the client should do."""


# -- HTTP framing and limits (listener) ------------------------------------------------------------
HTTP_MALFORMED = ErrorCode(
    "http.malformed", 400, "Malformed request",
    "The request could not be parsed as HTTP/1.1 (bad request line, header syntax or chunked framing). "
    "The connection is closed.",
)
HTTP_AMBIGUOUS_FRAMING = ErrorCode(
    "http.ambiguous_framing", 400, "Ambiguous request framing",
    "The request carries Content-Length together with Transfer-Encoding, a duplicate or invalid "
    "Content-Length, more than one Transfer-Encoding, a coding other than `chunked`, or Transfer-Encoding "
    "in HTTP/1.0. These are request-smuggling vectors; the connection is closed.",
)
HTTP_HOST_INVALID = ErrorCode(
    "http.host_invalid", 400, "Missing or invalid Host",
    "The request has no Host header, more than one, or an absolute-form target whose authority differs "
    "from Host. The connection is closed.",
)
HTTP_PATH_INVALID = ErrorCode(
    "http.path_invalid", 400, "Invalid request path",
    "The path contains an encoded `/`, `\\` or NUL, invalid percent-encoding or UTF-8, or a `..` that "
    "escapes the root.",
)
HTTP_HEADERS_TOO_LARGE = ErrorCode(
    "http.headers_too_large", 431, "Request headers too large",
    "The request head exceeds the configured total header bytes or header count.",
)
HTTP_URI_TOO_LONG = ErrorCode(
    "http.uri_too_long", 414, "URI too long",
    "The request target exceeds the configured maximum length.",
)
HTTP_BODY_TOO_LARGE = ErrorCode(
    "http.body_too_large", 413, "Request body too large",
    "The request body exceeds the route's maximum body size. It is counted while streaming.",
)
HTTP_REQUEST_TIMEOUT = ErrorCode(
    "http.request_timeout", 408, "Request timeout",
    "The request head or body did not arrive within the configured deadline. The connection is closed.",
)
HTTP_VERSION_UNSUPPORTED = ErrorCode(
    "http.version_unsupported", 505, "HTTP version not supported",
    "Only HTTP/1.0 and HTTP/1.1 are accepted on this listener.",
)
HTTP_UPGRADE_UNSUPPORTED = ErrorCode(
    "http.upgrade_unsupported", 501, "Protocol upgrade not supported",
    "CONNECT and protocol upgrades (e.g. WebSocket) are not supported by this gateway.",
)
HTTP_EXPECTATION_FAILED = ErrorCode(
    "http.expectation_failed", 417, "Expectation failed",
    "The request's Expect header has a value other than `100-continue`.",
)
HTTPS_REQUIRED = ErrorCode(
    "http.https_required", 400, "HTTPS required",
    "The plain-HTTP listener only redirects to HTTPS; this request could not be redirected "
    "(for example, a method with a body).",
)

# -- routing -------------------------------------------------------------------------------------
ROUTE_NOT_FOUND = ErrorCode(
    "route.not_found", 404, "Not found",
    "No declared route matches the host and path. Nothing is reachable unless declared.",
)
ROUTE_METHOD_NOT_ALLOWED = ErrorCode(
    "route.method_not_allowed", 405, "Method not allowed",
    "The path is declared, but not for this method. The `Allow` header lists the declared methods.",
)
ROUTE_RETIRED = ErrorCode(
    "route.retired", 410, "API version retired",
    "The API version this route belongs to has the lifecycle state `retired`. Move to a newer version.",
)

# -- access --------------------------------------------------------------------------------------
ACCESS_IP_DENIED = ErrorCode(
    "access.ip_denied", 403, "Client address not allowed",
    "The client address is on a deny-list, or an allow-list is set and the address is not on it.",
)

# -- authentication ------------------------------------------------------------------------------
AUTH_CREDENTIALS_MISSING = ErrorCode(
    "auth.credentials_missing", 401, "Authentication required",
    "The route needs a credential and none was sent. Send an API key in `Authorization: Bearer <key>` or "
    "`X-API-Key: <key>` (or an access token, where the route accepts one). `WWW-Authenticate` says which.",
)
AUTH_CREDENTIALS_INVALID = ErrorCode(
    "auth.credentials_invalid", 401, "Invalid credentials",
    "The credential was not accepted. Unknown, malformed, expired and revoked credentials, a wrong secret "
    "and a client address outside the credential's allow-list all get this same answer, so that it tells an "
    "attacker nothing; the precise reason is in the gateway's log under the request id.",
)
AUTH_CREDENTIALS_IN_QUERY = ErrorCode(
    "auth.credentials_in_query", 400, "Credentials in the query string",
    "An API key or token was sent in the URL's query string, where it would be stored in logs, browser "
    "history and proxies. It was not used (and is never logged). Send it in the `Authorization: Bearer` or "
    "`X-API-Key` header, and revoke the exposed credential.",
)
AUTH_TOO_MANY_FAILURES = ErrorCode(
    "auth.too_many_failures", 429, "Too many failed authentication attempts",
    "This client address sent too many invalid credentials in a short time and is blocked for a while. "
    "`Retry-After` says for how long.",
)
AUTH_UNAVAILABLE = ErrorCode(
    "auth.unavailable", 503, "Authentication unavailable",
    "The credential could not be checked: the identity store cannot be reached, or (for OAuth access tokens) "
    "the identity provider's signing keys are older than their staleness bound or its introspection endpoint "
    "does not answer. The gateway fails closed. Retry after the delay in `Retry-After`.",
)

# -- authorization -------------------------------------------------------------------------------
AUTHZ_PERMISSION_DENIED = ErrorCode(
    "authz.permission_denied", 403, "Permission denied",
    "The credential is valid but does not grant what this route requires: the problem's `detail` names "
    "the missing permissions (a request's rights are the credential's scopes intersected with its "
    "consumer's role permissions). No data of the resource is returned. On the admin API: the key's "
    "consumer has no admin role, or its admin role (`operator`, `auditor`) does not cover the operation.",
)
AUTHZ_LEVEL_INSUFFICIENT = ErrorCode(
    "authz.level_insufficient", 403, "Key level insufficient",
    "The API key's level does not allow this request: read keys may only read (GET, HEAD, OPTIONS), and "
    "administrative routes need an admin-level key.",
)

# -- rate limiting -------------------------------------------------------------------------------
RATE_LIMIT_EXCEEDED = ErrorCode(
    "rate_limit.exceeded", 429, "Rate limit exceeded",
    "A rate limit of this route was reached for the caller (counted by address, consumer, credential or "
    "header, as configured). Wait the number of seconds in `Retry-After` before retrying; the "
    "`RateLimit-Policy` and `RateLimit` headers describe the limits and what remains of them.",
)
RATE_LIMIT_UNAVAILABLE = ErrorCode(
    "rate_limit.unavailable", 503, "Rate limiting unavailable",
    "The shared counter store cannot be reached and the route's rate-limit, business-flow or quota policy "
    "fails closed, so the request could not be checked against its limits. Retry after the delay in "
    "`Retry-After`.",
)
CONCURRENCY_EXCEEDED = ErrorCode(
    "concurrency.exceeded", 429, "Too many concurrent requests",
    "The caller (counted by address, consumer or credential, as configured) already has as many requests "
    "in progress on this route as its concurrency limit allows. Wait for one to finish, or the number of "
    "seconds in `Retry-After`, before retrying.",
)

# -- business flows ------------------------------------------------------------------------------
FLOW_LIMIT_EXCEEDED = ErrorCode(
    "flow.limit_exceeded", 429, "Business flow limit exceeded",
    "The route is part of a sensitive business flow (checkout, sign-up, ...) whose velocity limit was "
    "reached: per consumer, per client address or for all callers together. The problem's `detail` names "
    "the flow. Wait the number of seconds in `Retry-After` before retrying. No `RateLimit` headers are sent "
    "for flows: they would help automated clients pace themselves just under the limit.",
)
FLOW_CONSUMER_REQUIRED = ErrorCode(
    "flow.consumer_required", 403, "Business flow needs an identified consumer",
    "The route is part of a sensitive business flow that only identified consumers may use, and the "
    "request carries no credential. Authenticate (for example with an API key) and retry.",
)

# -- quotas --------------------------------------------------------------------------------------
QUOTA_EXCEEDED = ErrorCode(
    "quota.exceeded", 429, "Quota exceeded",
    "The caller's quota for the current calendar period (a UTC day or month) is used up. `Retry-After` is "
    "the number of seconds until the period ends and the quota starts again. `Quota-Limit`, "
    "`Quota-Remaining` and `Quota-Reset` are sent on every response to an identified caller on a route with "
    "a quota (anonymous requests are not counted).",
)

# -- request validation --------------------------------------------------------------------------
REQUEST_QUERY_INVALID = ErrorCode(
    "request.query_invalid", 400, "Invalid query parameters",
    "A query parameter is outside the route's limits: not an integer (or number) where one is required, "
    "above its maximum or below its minimum, or too long; or the query has too many parameters. The "
    "problem's `detail` names the parameter when the route declares it.",
)
REQUEST_JSON_INVALID = ErrorCode(
    "request.json_invalid", 400, "Invalid JSON body",
    "The request body is declared as JSON but is not valid JSON (RFC 8259): a syntax error, invalid "
    "UTF-8, a byte-order mark, `NaN` or `Infinity`, an unpaired surrogate escape, or an object with the "
    "same key twice (upstream parsers disagree about which value wins, so such bodies are refused).",
)
REQUEST_JSON_TOO_COMPLEX = ErrorCode(
    "request.json_too_complex", 413, "JSON body too complex",
    "The JSON request body exceeds one of the route's structure limits: nesting depth, array length, "
    "string length, number length or total number of object keys. The problem's `detail` names the limit.",
)
REQUEST_UNSUPPORTED_MEDIA_TYPE = ErrorCode(
    "request.unsupported_media_type", 415, "Unsupported media type",
    "The route only accepts JSON request bodies (`Content-Type: application/json` or a `+json` type), or "
    "the JSON body has a `Content-Encoding`: compressed bodies cannot be checked against the route's "
    "limits, so they are refused.",
)

# -- upstream ------------------------------------------------------------------------------------
UPSTREAM_CONNECT_FAILED = ErrorCode(
    "upstream.connect_failed", 502, "Upstream unreachable",
    "The gateway could not connect to the upstream service, or the connection failed before a response.",
)
UPSTREAM_TIMEOUT = ErrorCode(
    "upstream.timeout", 504, "Upstream timeout",
    "The upstream service did not answer within the route's connect, read or total timeout.",
)
UPSTREAM_UNAVAILABLE = ErrorCode(
    "upstream.unavailable", 503, "No healthy upstream",
    "Every target of the upstream is marked unhealthy (active health checks or passive ejection).",
)
UPSTREAM_BAD_RESPONSE = ErrorCode(
    "upstream.bad_response", 502, "Invalid upstream response",
    "The upstream answered with a response the gateway refuses to forward: bad framing, an oversized "
    "head, or an invalid status line.",
)
UPSTREAM_BUSY = ErrorCode(
    "upstream.busy", 503, "Upstream at capacity",
    "The upstream already has as many requests in flight as its `max_concurrent_requests` allows. Retry "
    "after the delay in `Retry-After`.",
)
UPSTREAM_RESPONSE_TOO_LARGE = ErrorCode(
    "upstream.response_too_large", 502, "Upstream response too large",
    "The upstream's response body is larger than its `max_response_bytes` cap. Nothing of it is forwarded "
    "when its declared length is over the cap; a body that streams past the cap is cut off.",
)
UPSTREAM_SERVER_ERROR = ErrorCode(
    "upstream.server_error", 502, "Upstream error",
    "The upstream answered with a 5xx status; its body is replaced so that internals never leak. "
    "The upstream's status code is kept (the registry status is the fallback). A route may opt out.",
)

# -- gateway -------------------------------------------------------------------------------------
GATEWAY_INTERNAL = ErrorCode(
    "gateway.internal", 500, "Internal gateway error",
    "An unexpected condition inside the gateway. The details are in the log under the request id.",
)
GATEWAY_OVERLOADED = ErrorCode(
    "gateway.overloaded", 503, "Gateway overloaded",
    "The gateway is at its connection or request capacity. Retry after the indicated delay.",
)
GATEWAY_SHUTTING_DOWN = ErrorCode(
    "gateway.shutting_down", 503, "Gateway shutting down",
    "The gateway is draining connections before it stops. Retry; another node will answer.",
)

# -- admin listener ------------------------------------------------------------------------------
ADMIN_NOT_FOUND = ErrorCode(
    "admin.not_found", 404, "Not found",
    "No admin endpoint at this path.",
)
ADMIN_METHOD_NOT_ALLOWED = ErrorCode(
    "admin.method_not_allowed", 405, "Method not allowed",
    "The admin endpoint does not accept this method.",
)
ADMIN_INVALID_JSON = ErrorCode(
    "admin.invalid_json", 400, "Malformed JSON body",
    "The admin API request body is not valid JSON. Send one JSON object with "
    "`Content-Type: application/json`.",
)
ADMIN_UNSUPPORTED_MEDIA_TYPE = ErrorCode(
    "admin.unsupported_media_type", 415, "Unsupported media type",
    "The admin API only accepts request bodies with `Content-Type: application/json`.",
)
ADMIN_INVALID_REQUEST = ErrorCode(
    "admin.invalid_request", 422, "Invalid request",
    "The admin API request is well-formed JSON but its content was refused: a missing or unknown field, a "
    "value of the wrong type or out of range (for example a key lifetime above `keys.max_ttl_days`), an "
    "unknown role, or a state that does not allow the operation (rotating a revoked key). The problem's "
    "`errors` list names each field with its message.",
)
ADMIN_RESOURCE_NOT_FOUND = ErrorCode(
    "admin.resource_not_found", 404, "No such resource",
    "The consumer, role or API key named in the admin API path does not exist (or was deleted).",
)
ADMIN_CONFLICT = ErrorCode(
    "admin.conflict", 409, "Conflict",
    "The change conflicts with existing data: a consumer with that name exists, a role is still granted to "
    "consumers, or a key has already been rotated. Nothing was changed.",
)
ADMIN_STORE_UNAVAILABLE = ErrorCode(
    "admin.store_unavailable", 503, "Identity store unavailable",
    "The identity store could not be reached while serving an admin API request; nothing was changed. "
    "Retry after the delay in `Retry-After`.",
)
CONFIG_INVALID = ErrorCode(
    "config.invalid", 422, "Configuration rejected",
    "A reload was requested but the new configuration is invalid; the running configuration keeps serving. "
    "The problem lists each error with its location.",
)

ALL_CODES: tuple[ErrorCode, ...] = tuple(
    value for value in list(globals().values()) if isinstance(value, ErrorCode)
)
_BY_CODE = {c.code: c for c in ALL_CODES}


def by_code(code: str) -> ErrorCode:
    """Look a code up by its wire name (raises KeyError for unknown codes)."""
    return _BY_CODE[code]
