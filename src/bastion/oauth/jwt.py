"""Hardened verification of JWT access tokens (JWS compact serialization) from a trusted issuer.

Everything an attacker controls is checked before any cryptography, by our own parser rather than a
library's permissive one: the size, exactly three base64url segments, a header that is a JSON object
without duplicate members, an algorithm from the issuer's allow-list (never ``none``, never a shared-secret
``HS*``), and no header member that could name a key source (``jku``, ``x5u``, ``jwk``, ``x5c``) or change
the processing rules (``crit``, ``b64``, JWE members). ``kid`` is only ever a dictionary key. The key found
by ``kid`` must be bound to the header's algorithm, so one key is never used with two algorithms (no HS/RS
confusion, no RS/PS switch). joserfc's algorithm models then check the signature.

``typ`` (RFC 9068 / RFC 8725 explicit typing): with ``require_typ`` set, the header must carry that type
(``at+jwt`` and ``application/at+jwt`` are the same, compared case-insensitively). Without it, a token may
carry no ``typ``, ``JWT`` or ``at+jwt``: every other value names another kind of token (``dpop+jwt``,
``logout+jwt``, ``secevent+jwt``, ``id_token+jwt``, ...) that must never pass as an access token.
Keycloak also types its tokens in the payload (``typ: Bearer``): its ID, refresh and logout tokens
(``ID``, ``Refresh``, ``Offline``, ``Logout``) are refused the same way.

Claims: ``iss`` equal to the configured issuer byte for byte, ``aud`` naming one of the configured
audiences, ``exp`` required, and ``exp``/``nbf``/``iat`` checked against the wall clock with the issuer's
leeway.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from base64 import urlsafe_b64decode
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jws import JWSRegistry

from bastion.config.model import TrustedIssuerConfig
from bastion.oauth.contracts import TokenFailure, VerificationKey

MAX_KID_LENGTH = 256
# Members that name a key or change how the token must be processed: a verifier that honoured any of them
# would let the token choose its own key (RFC 8725 section 3.10) or skip checks it does not understand.
FORBIDDEN_HEADER_MEMBERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit", "b64", "enc", "zip", "epk"})
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt"})  # accepted when the issuer requires no typ
_FOREIGN_PAYLOAD_TYPES = frozenset({"id", "refresh", "offline", "logout"})  # Keycloak's payload `typ`


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A structurally valid, not yet verified JWS: nothing in it may be trusted except its shape."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    alg: str
    kid: str
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    claims: Mapping[str, Any]
    kid: str
    algorithm: str
    expires_at: float  # wall clock (`exp`)
    jti: str | None


def show(value: object, limit: int = 48) -> str:
    """An attacker-controlled value, made safe and short for a log reason."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated segments: a JWS compact serialization (anything else is an opaque token)."""
    return token.count(".") == 2


def _b64decode(segment: str) -> bytes | None:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        return None
    try:
        return urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # Two parsers could pick different copies of a member (a classic `alg` smuggling trick).
        raise ValueError("duplicate member")
    return result


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def parse_token(token: str, max_bytes: int) -> ParsedToken | TokenFailure:
    """Shape and header checks that need neither the issuer nor a key."""
    if len(token) > max_bytes:
        return TokenFailure(f"token of {len(token)} bytes exceeds {max_bytes}")
    if not token.isascii():
        return TokenFailure("token is not ASCII")
    segments = token.split(".")
    if len(segments) != 3:
        return TokenFailure(f"token has {len(segments)} segments, a JWS has 3")
    header_raw, payload_raw, signature = (_b64decode(s) for s in segments)
    if header_raw is None or payload_raw is None or signature is None:
        return TokenFailure("token segment is empty or not base64url")
    header = _json_object(header_raw)
    if header is None:
        return TokenFailure("token header is not a JSON object (or repeats a member)")
    alg = header.get("alg")
    if not isinstance(alg, str):
        return TokenFailure("token header has no alg")
    if alg.lower() == "none":
        return TokenFailure("unsigned token (alg none)")
    if alg.upper().startswith("HS"):
        return TokenFailure(f"shared-secret algorithm {show(alg)} is never accepted")
    forbidden = sorted(FORBIDDEN_HEADER_MEMBERS.intersection(header))
    if forbidden:
        return TokenFailure(f"token header carries {', '.join(forbidden)} (never used as a key source or rule)")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        return TokenFailure("token header has no kid")
    if len(kid) > MAX_KID_LENGTH:
        return TokenFailure(f"kid of {len(kid)} characters")
    claims = _json_object(payload_raw)
    if claims is None:
        return TokenFailure("token payload is not a JSON object (or repeats a member)")
    signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
    return ParsedToken(header, claims, alg, kid, signing_input, signature)


def normalize_typ(value: str) -> str:
    """RFC 8725 3.11: `application/` may be omitted and media types compare case-insensitively."""
    value = value.strip().lower()
    return value.removeprefix("application/")


def _number(claims: Mapping[str, Any], name: str) -> float | TokenFailure | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return TokenFailure(f"claim {name} is not a number")
    return float(value)


class JwtVerifier:
    """Verifies tokens for one trusted issuer (its settings precomputed)."""

    def __init__(self, config: TrustedIssuerConfig) -> None:
        self.config = config
        self._algorithms = frozenset(config.algorithms)
        self._audiences = frozenset(config.audiences)
        self._required_typ = normalize_typ(config.require_typ) if config.require_typ else None
        self._leeway = config.leeway

    def check_header(self, parsed: ParsedToken) -> TokenFailure | None:
        """The issuer-specific header rules: algorithm allow-list and token type."""
        if parsed.alg not in self._algorithms:
            return TokenFailure(f"algorithm {show(parsed.alg)} not allowed for issuer {self.config.name}")
        typ = parsed.header.get("typ")
        if typ is not None and not isinstance(typ, str):
            return TokenFailure("typ is not a string")
        if self._required_typ is not None:
            if typ is None or normalize_typ(typ) != self._required_typ:
                return TokenFailure(f"typ {show(typ)} where {self.config.require_typ!r} is required")
        elif typ is not None and normalize_typ(typ) not in _ACCESS_TOKEN_TYPES:
            return TokenFailure(f"typ {show(typ)} is not an access token type")
        return None

    def verify(self, parsed: ParsedToken, key: VerificationKey, now: float) -> VerifiedToken | TokenFailure:
        """Header rules, signature with the key bound to the token's algorithm, then the claims."""
        failure = self.check_header(parsed)
        if failure is not None:
            return failure
        if key.algorithm != parsed.alg:
            return TokenFailure(f"kid {show(parsed.kid)} is bound to {key.algorithm}, token says {show(parsed.alg)}")
        if not verify_signature(parsed, key):
            return TokenFailure(f"bad signature (kid {show(parsed.kid)})")
        return self.check_claims(parsed, now)

    def check_claims(self, parsed: ParsedToken, now: float) -> VerifiedToken | TokenFailure:
        claims = parsed.claims
        if claims.get("iss") != self.config.issuer:
            return TokenFailure(f"iss {show(claims.get('iss'))} is not {self.config.issuer!r}")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            return TokenFailure("aud missing or not a string or list of strings")
        if self._audiences.isdisjoint(audiences):
            return TokenFailure(f"aud {show(audience)} names none of the accepted audiences")
        exp, nbf, iat = _number(claims, "exp"), _number(claims, "nbf"), _number(claims, "iat")
        for value in (exp, nbf, iat):
            if isinstance(value, TokenFailure):
                return value
        if exp is None:
            return TokenFailure("no exp claim")
        assert isinstance(exp, float)
        if now >= exp + self._leeway:
            return TokenFailure(f"expired {now - exp:.0f} s ago")
        if isinstance(nbf, float) and now + self._leeway < nbf:
            return TokenFailure(f"not valid for another {nbf - now:.0f} s (nbf)")
        if isinstance(iat, float) and now + self._leeway < iat:
            return TokenFailure(f"issued {iat - now:.0f} s in the future (iat)")
        payload_typ = claims.get("typ")
        if isinstance(payload_typ, str) and payload_typ.lower() in _FOREIGN_PAYLOAD_TYPES:
            return TokenFailure(f"payload typ {show(payload_typ)} is not an access token")
        jti = claims.get("jti")
        if jti is not None and not isinstance(jti, str):
            return TokenFailure("jti is not a string")
        return VerifiedToken(claims, parsed.kid, parsed.alg, exp, jti)


def verify_signature(parsed: ParsedToken, key: VerificationKey) -> bool:
    model = JWSRegistry.algorithms.get(key.algorithm)
    if model is None or key.algorithm.upper().startswith("HS") or key.algorithm == "none":
        return False
    try:
        model.check_key(key.key)  # key type and curve match the algorithm
        return bool(model.verify(parsed.signing_input, parsed.signature, key.key))
    except (JoseError, ValueError, TypeError):
        return False


def verify_jwt(token: str, config: TrustedIssuerConfig, key_for: Mapping[str, VerificationKey],
               now: float) -> VerifiedToken | TokenFailure:
    """One-shot verification against keys at hand (no refetch): for tools and tests."""
    parsed = parse_token(token, config.max_token_bytes)
    if isinstance(parsed, TokenFailure):
        return parsed
    verifier = JwtVerifier(config)
    failure = verifier.check_header(parsed)
    if failure is not None:
        return failure
    key = key_for.get(parsed.kid)
    if key is None:
        return TokenFailure(f"unknown kid {show(parsed.kid)}")
    return verifier.verify(parsed, key, now)
