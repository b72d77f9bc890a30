"""Error answers of the OAuth endpoints, exactly as the RFCs shape them (not problem+json).

- Token, revocation and introspection endpoints: RFC 6749 section 5.2, a JSON object
  ``{"error", "error_description"}`` as ``application/json`` with ``Cache-Control: no-store`` and
  ``Pragma: no-cache``. ``invalid_client`` is a 401 with ``WWW-Authenticate: Basic`` when the client tried
  HTTP Basic (5.2 requires it) and always at the introspection endpoint (RFC 7662 section 2.3); a 400 otherwise.
- Authorization endpoint: errors go back to the client's redirect URI (RFC 6749 4.1.2.1) once the client and
  the redirect URI are known to be valid; before that, a small HTML page (never a redirect to an unchecked URI).

Descriptions are fixed, client-safe sentences: never a token, a secret or a store's message.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import orjson
from starlette.responses import Response

REALM = "bastion"
BASIC_CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'

NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}

# RFC 6749 5.2, RFC 7009 2.2.1, RFC 8628 3.5 (`slow_down`, registered for the token endpoint), and the
# authorization endpoint's RFC 6749 4.1.2.1 codes.
INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
INVALID_GRANT = "invalid_grant"
UNAUTHORIZED_CLIENT = "unauthorized_client"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
INVALID_SCOPE = "invalid_scope"
SLOW_DOWN = "slow_down"
ACCESS_DENIED = "access_denied"
UNSUPPORTED_RESPONSE_TYPE = "unsupported_response_type"
SERVER_ERROR = "server_error"
TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"


class OAuthError(Exception):
    """An expected refusal at an OAuth endpoint. ``description`` must be safe to show the client."""

    def __init__(self, error: str, description: str, *, status: int = 400,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"OAuthError({self.error!r}, status={self.status})"


def invalid_client(description: str, *, challenge: bool) -> OAuthError:
    """Client authentication failed: 401 + Basic challenge when the client tried Basic (or must be told to)."""
    if challenge:
        return OAuthError(INVALID_CLIENT, description, status=401, headers={"www-authenticate": BASIC_CHALLENGE})
    return OAuthError(INVALID_CLIENT, description)


def json_response(body: Mapping[str, object], *, status: int = 200, headers: Mapping[str, str] | None = None,
                  max_age: int | None = None) -> Response:
    """A JSON answer. Without ``max_age`` no cache may keep it (tokens, introspection results, errors)."""
    caching = NO_STORE if max_age is None else {"cache-control": f"public, max-age={max_age}"}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={**caching, **(headers or {})})


def error_response(error: OAuthError) -> Response:
    return json_response({"error": error.error, "error_description": error.description}, status=error.status,
                         headers=error.headers)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Authorization request refused</title></head>
<body><h1>Authorization request refused</h1><p>{description}</p><p><code>{error}</code></p></body></html>
"""

PAGE_HEADERS = {
    **NO_STORE,
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def error_page(error: OAuthError) -> Response:
    """Shown to the user when the client or its redirect URI cannot be trusted with the answer."""
    body = _PAGE.format(description=html.escape(error.description), error=html.escape(error.error))
    return Response(body, status_code=error.status, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)
