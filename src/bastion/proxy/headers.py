"""Header hygiene between client and upstream (RFC 9110 section 7.6.1)."""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

# Hop-by-hop fields never cross the gateway; Connection may name more.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"content-length", b"host",
    b"expect", b"http2-settings",
})
# Fields the gateway itself sets on the upstream request (client values are replaced, never trusted).
GATEWAY_SET_REQUEST: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                                        b"x-request-id", b"forwarded", b"x-real-ip"})
# Upstream response fields that reveal internals (API8); the gateway drops them.
LEAKY_RESPONSE: Final = frozenset({b"server", b"x-powered-by", b"x-aspnet-version", b"x-aspnetmvc-version",
                                   b"x-runtime", b"x-debug-token", b"x-debug-token-link"})


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Field names listed in Connection headers (they are hop-by-hop too)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


_SAFE_VISIBLE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(value: str) -> str:
    """Identity values forwarded upstream (claims are the issuer's, names an admin's): control characters
    and non-ASCII are percent-encoded (UTF-8), so a value can never inject a header line."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe=_SAFE_VISIBLE)
