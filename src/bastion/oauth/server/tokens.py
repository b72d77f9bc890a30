"""Access tokens (RFC 9068 JWTs) and token responses.

Header: ``typ: at+jwt``, ``alg`` and ``kid`` of the active signing key. Claims: ``iss``, ``sub`` (the user, or
the client itself for client credentials), ``aud``, ``exp``, ``iat``, ``jti``, ``client_id``, ``scope``
(space-separated) and ``bst_consumer``, the id of the consumer the client belongs to (the gateway names the
consumer by it for rate limits, quotas and logs). Every issued ``jti`` is recorded before the token is handed
out, with its refresh family when it has one, so that revoking a family reaches its access tokens.

``verify_own`` checks a token this server issued (revocation and introspection): the hardened parser and
verifier of the resource side (``bastion.oauth.jwt``), with the server's own keys and no leeway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jwt
from starlette.responses import Response

from bastion.config.model import AuthorizationServerConfig, TrustedIssuerConfig
from bastion.oauth.contracts import TokenFailure
from bastion.oauth.jwt import JwtVerifier, VerifiedToken, parse_token
from bastion.oauth.server.errors import INVALID_GRANT, OAuthError, json_response
from bastion.oauth.server.keys import SigningKeys
from bastion.oauth.server.scopes import format_scope
from bastion.oauth.server.secrets import new_jti
from bastion.oauth.server.store import OAuthClient, OAuthStore

TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type
CONSUMER_CLAIM = "bst_consumer"
MAX_TOKEN_BYTES = 8192
_BUILTIN = "bastion"


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    token: str
    jti: str
    expires_in: int
    expires_at: datetime
    scopes: tuple[str, ...]

    def __repr__(self) -> str:  # never print the token
        return f"IssuedAccessToken(jti={self.jti!r}, expires_in={self.expires_in})"


class AccessTokens:
    def __init__(self, store: OAuthStore, keys: SigningKeys, settings: Callable[[], AuthorizationServerConfig], *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._keys = keys
        self._settings = settings
        self._wall_clock = wall_clock
        self._verifier: tuple[AuthorizationServerConfig, tuple[str, ...], JwtVerifier] | None = None

    async def issue(self, client: OAuthClient, *, subject: str, scopes: Sequence[str],
                    family_id: str | None) -> IssuedAccessToken:
        settings = self._settings()
        issuer = settings.issuer
        if issuer is None:
            raise RuntimeError("the authorization server has no issuer configured")
        now = int(self._wall_clock())
        ttl = settings.access_token_ttl
        jti = new_jti()
        claims: dict[str, Any] = {
            "iss": issuer,
            "sub": subject,
            "aud": settings.audience,
            "exp": now + ttl,
            "iat": now,
            "jti": jti,
            "client_id": client.client_id,
            "scope": format_scope(scopes),
            CONSUMER_CLAIM: client.consumer_id,
        }
        kid, algorithm, key = self._keys.signing_key()
        token = jwt.encode({"alg": algorithm, "kid": kid, "typ": TOKEN_TYPE}, claims, key, algorithms=[algorithm])
        expires_at = datetime.fromtimestamp(now + ttl, UTC)
        # Recorded before it is handed out: a family revocation must be able to find every token of the family.
        revoked = await self._store.record_access_token(jti, client_id=client.client_id, family_id=family_id,
                                                        subject=subject, expires_at=expires_at)
        if revoked:  # the client, its consumer or the family was cut off while this request ran
            raise OAuthError(INVALID_GRANT, "The grant was revoked while the token was being issued.")
        return IssuedAccessToken(token, jti, ttl, expires_at, tuple(scopes))

    def _verifier_for(self, settings: AuthorizationServerConfig) -> JwtVerifier:
        # The algorithms of our own keys: after a change of signing.algorithm the active key keeps its old one
        # until the next rotation. Each key is still bound to its single algorithm by the verifier.
        algorithms = tuple(sorted({settings.signing.algorithm, *(k.algorithm for k in self._keys.info())}))
        cached = self._verifier
        if cached is not None and cached[0] is settings and cached[1] == algorithms:
            return cached[2]
        config = TrustedIssuerConfig(name=_BUILTIN, issuer=settings.issuer or "", audiences=[settings.audience],
                                     algorithms=list(algorithms), require_typ=TOKEN_TYPE, leeway=0,
                                     max_token_bytes=MAX_TOKEN_BYTES)
        verifier = JwtVerifier(config)
        self._verifier = (settings, algorithms, verifier)
        return verifier

    async def verify_own(self, token: str) -> VerifiedToken | None:
        """A token this server signed, unexpired (revocation is the caller's check); otherwise None."""
        settings = self._settings()
        if settings.issuer is None:
            return None
        parsed = parse_token(token, MAX_TOKEN_BYTES)
        if isinstance(parsed, TokenFailure):
            return None
        keyset = self._keys.keyset
        key = keyset.get(parsed.kid)
        if key is None:
            await keyset.refresh(parsed.kid)  # a key another node created since our last load
            key = keyset.get(parsed.kid)
            if key is None:
                return None
        verified = self._verifier_for(settings).verify(parsed, key, self._wall_clock())
        return None if isinstance(verified, TokenFailure) else verified


def token_response(access: IssuedAccessToken, refresh_token: str | None = None) -> Response:
    """RFC 6749 section 5.1; ``scope`` always present, since it may be narrower than requested."""
    body: dict[str, object] = {
        "access_token": access.token,
        "token_type": "Bearer",
        "expires_in": access.expires_in,
        "scope": format_scope(access.scopes),
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return json_response(body)


def claim_text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) else None
