"""The resource server: turn a bearer token into a ``Principal``, for the issuers a route trusts.

A JWT names its issuer in ``iss``. That claim is read before the signature is checked only to choose
among the issuers the route allows (an unknown ``iss`` is refused at once); the token is then verified
strictly with that issuer's settings and keys, and ``iss`` is compared again as a verified claim. Any other
token is opaque: it goes to the one introspecting issuer the route allows (never to several: that would
show one IdP's tokens to another).

``OAuthResourceServer`` owns the issuers' runtimes across configuration reloads: the key sets of issuers
whose settings did not change are kept (with their cached keys), new ones are started, removed ones closed.
Its ``validator`` is one stable object that the ``oauth2`` policies keep across reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bastion.config.loader import ConfigError, ConfigIssue, resolve_secret
from bastion.config.model import OAuthConfig, TrustedIssuerConfig
from bastion.identity.principal import Principal
from bastion.oauth.contracts import IssuerRuntime, TokenFailure
from bastion.oauth.introspection import IntrospectionClient
from bastion.oauth.jwks import RemoteKeySet, url_problem
from bastion.oauth.jwt import JwtVerifier, ParsedToken, looks_like_jwt, parse_token, show
from bastion.oauth.token_cache import CachedToken, TokenCache

log = logging.getLogger("bastion.oauth")

BUILTIN_ISSUER = "bastion"
BUILTIN_CONSUMER_CLAIM = "bst_consumer"  # the built-in server's consumer id for the token's client
_MAX_IDENTITY_LENGTH = 1024


class OAuthConfigError(ConfigError):
    """The OAuth section cannot be put in service (e.g. an introspection secret cannot be read): the
    configuration is refused like any other invalid one (at start, or the reload is rejected)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__([ConfigIssue("configuration", None, path, message)])


def credential_id_for(token: str) -> str:
    """A short, non-reversible handle for a token without ``jti`` (logs, rate-limit keys): never the token."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """RFC 9068/8693 ``scope`` (space-separated), else ``scp`` (a list: Okta; a string: Entra)."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list):
            return frozenset(v for v in value if isinstance(v, str) and v and " " not in v)
    return frozenset()


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (``realm_access.roles``)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= _MAX_IDENTITY_LENGTH else None


def build_principal(issuer_name: str, config: TrustedIssuerConfig, claims: Mapping[str, Any], *,
                    kind: str, credential_id: str, expires_at: float | None) -> Principal | TokenFailure:
    mapping = config.claims
    subject = _text(claims.get(mapping.subject))
    client_id = next((c for c in (_text(claims.get(name)) for name in mapping.client_id) if c is not None), None)
    roles_value = claim_at(claims, mapping.roles) if mapping.roles else None
    if isinstance(roles_value, str):
        roles_value = roles_value.split()
    roles = tuple(r for r in roles_value if isinstance(r, str)) if isinstance(roles_value, list) else ()
    identity = (subject or client_id) if mapping.consumer == "subject" else (client_id or subject)
    if identity is None:
        return TokenFailure(f"token of issuer {issuer_name} names neither a subject nor a client")
    consumer_id = f"{issuer_name}:{identity}"
    if issuer_name == BUILTIN_ISSUER:
        consumer = _text(claims.get(BUILTIN_CONSUMER_CLAIM))
        if consumer is not None:
            consumer_id = consumer
    scopes = scopes_of(claims)
    if issuer_name != BUILTIN_ISSUER:
        # `*` is Bastion's role-grant syntax (`users:*`): an external identity provider cannot grant it.
        scopes = frozenset(s for s in scopes if "*" not in s)
    return Principal(consumer_id=consumer_id, consumer_name=identity, credential_id=credential_id,
                     credential_kind=kind, level=None, permissions=scopes, subject=subject,
                     client_id=client_id, issuer=issuer_name, roles=roles, token_expires_at=expires_at)


@dataclass(frozen=True, slots=True)
class _Issuer:
    name: str
    runtime: IssuerRuntime
    verifier: JwtVerifier


@dataclass(frozen=True, slots=True)
class _Table:
    """The issuers in service: swapped as a whole on reconfiguration."""

    by_name: Mapping[str, _Issuer] = field(default_factory=dict)
    by_iss: Mapping[str, tuple[_Issuer, ...]] = field(default_factory=dict)
    max_token_bytes: int = 0


def _table(runtimes: Mapping[str, IssuerRuntime]) -> _Table:
    by_name = {name: _Issuer(name, rt, JwtVerifier(rt.config)) for name, rt in runtimes.items()}
    by_iss: dict[str, tuple[_Issuer, ...]] = {}
    for issuer in by_name.values():
        by_iss[issuer.runtime.config.issuer] = (*by_iss.get(issuer.runtime.config.issuer, ()), issuer)
    max_bytes = max((i.runtime.config.max_token_bytes for i in by_name.values()), default=0)
    return _Table(by_name, by_iss, max_bytes)


class TokenValidator:
    """Validates bearer tokens for the ``oauth2`` policy. ``issuers`` (a route's allowed issuer names; None:
    every issuer in service) is passed on each call, so one validator serves every route."""

    def __init__(self, *, wall_clock: Callable[[], float], monotonic: Callable[[], float]) -> None:
        self._wall = wall_clock
        self._monotonic = monotonic
        self._cache = TokenCache(wall_clock=wall_clock)
        self._table = _Table()

    # -- what the policy uses ----------------------------------------------------------------------
    def issuer_names(self) -> frozenset[str]:
        return frozenset(self._table.by_name)

    def validate_cached(self, token: str, issuers: Collection[str] | None = None) -> Principal | None:
        """A token verified before and still valid (the hot path: a few dict lookups, no I/O)."""
        principal = self._cache.get(token)
        if principal is None or (issuers is not None and principal.issuer not in issuers):
            return None
        return principal

    async def validate(self, token: str, issuers: Collection[str] | None = None) -> Principal | TokenFailure:
        cached = self.validate_cached(token, issuers)
        if cached is not None:
            return cached
        table = self._table
        if not table.by_name:
            return TokenFailure("no trusted issuer is configured")
        if len(token) > table.max_token_bytes:
            return TokenFailure(f"token of {len(token)} bytes exceeds every issuer's max_token_bytes")
        if looks_like_jwt(token):
            return await self._validate_jwt(table, token, issuers)
        return await self._validate_opaque(table, token, issuers)

    # -- JWTs --------------------------------------------------------------------------------------
    async def _validate_jwt(self, table: _Table, token: str,
                            issuers: Collection[str] | None) -> Principal | TokenFailure:
        parsed = parse_token(token, table.max_token_bytes)
        if isinstance(parsed, TokenFailure):
            return parsed
        iss = parsed.claims.get("iss")
        candidates = table.by_iss.get(iss, ()) if isinstance(iss, str) else ()
        allowed = [c for c in candidates if issuers is None or c.name in issuers]
        if not allowed:
            where = "trusted" if not candidates else "allowed on this route"
            return TokenFailure(f"iss {show(iss)} is not {where}")
        failure: TokenFailure | None = None
        for issuer in allowed:  # several entries may share one IdP (e.g. different audiences)
            result = await self._verify_with(issuer, parsed, token)
            if isinstance(result, Principal):
                return result
            failure = result if failure is None or result.unavailable else failure
        assert failure is not None
        return failure

    async def _verify_with(self, issuer: _Issuer, parsed: ParsedToken, token: str) -> Principal | TokenFailure:
        config = issuer.runtime.config
        if len(token) > config.max_token_bytes:
            return TokenFailure(f"token of {len(token)} bytes exceeds {config.max_token_bytes} (issuer {issuer.name})")
        failure = issuer.verifier.check_header(parsed)
        if failure is not None:
            return failure
        keys = issuer.runtime.keys
        key = keys.get(parsed.kid)
        if key is None:
            await keys.refresh(parsed.kid)  # bounded: at most one fetch per interval, shared
            key = keys.get(parsed.kid)
            if not keys.usable():
                return TokenFailure(f"issuer {issuer.name}: no usable keys (identity provider unreachable)",
                                    unavailable=True)
            if key is None:
                return TokenFailure(f"unknown kid {show(parsed.kid)} (issuer {issuer.name})")
        verified = issuer.verifier.verify(parsed, key, self._wall())
        if isinstance(verified, TokenFailure):
            return verified
        revocations = issuer.runtime.revocations
        if revocations is not None:
            if verified.jti is None:
                return TokenFailure(f"token of issuer {issuer.name} has no jti (revocation cannot be checked)")
            if revocations.is_revoked(verified.jti):
                return TokenFailure(f"revoked token {show(verified.jti)}")
        principal = build_principal(issuer.name, config, verified.claims, kind="jwt",
                                    credential_id=verified.jti or credential_id_for(token),
                                    expires_at=verified.expires_at)
        if isinstance(principal, Principal) and self._table.by_name.get(issuer.name) is issuer:
            self._cache.put(token, CachedToken(principal, verified.expires_at, verified.jti, revocations, keys,
                                               parsed.kid, key))
        return principal

    # -- opaque tokens -----------------------------------------------------------------------------
    async def _validate_opaque(self, table: _Table, token: str,
                               issuers: Collection[str] | None) -> Principal | TokenFailure:
        introspecting = [i for i in table.by_name.values()
                         if i.runtime.introspector is not None and (issuers is None or i.name in issuers)]
        if not introspecting:
            return TokenFailure("not a JWT, and no issuer allowed here introspects opaque tokens")
        if len(introspecting) > 1:
            names = ", ".join(sorted(i.name for i in introspecting))
            return TokenFailure(f"opaque token, and several introspecting issuers are allowed here ({names}): "
                                "the route must allow only one")
        issuer = introspecting[0]
        config = issuer.runtime.config
        if len(token) > config.max_token_bytes:
            return TokenFailure(f"token of {len(token)} bytes exceeds {config.max_token_bytes} (issuer {issuer.name})")
        introspector = issuer.runtime.introspector
        assert introspector is not None
        result = await introspector.introspect(token)
        if isinstance(result, TokenFailure):
            return result
        jti = result.claims.get("jti")
        principal = build_principal(issuer.name, config, result.claims, kind="opaque-token",
                                    credential_id=credential_id_for(token), expires_at=result.expires_at)
        if isinstance(principal, Principal) and self._table.by_name.get(issuer.name) is issuer:
            self._cache.put(token, CachedToken(principal, result.reuse_until,
                                               jti if isinstance(jti, str) else None, issuer.runtime.revocations))
        return principal

    # -- what the resource server uses -------------------------------------------------------------
    def install(self, runtimes: Mapping[str, IssuerRuntime], *, forget_cached: bool) -> None:
        self._table = _table(runtimes)
        if forget_cached:
            self._cache.clear()  # an issuer's settings changed: tokens are judged again under the new ones


@dataclass(slots=True)
class _External:
    config: TrustedIssuerConfig
    keys: RemoteKeySet
    introspector: IntrospectionClient | None
    secret: str | None  # the introspection secret as resolved (a changed secret file means a new client)

    def runtime(self) -> IssuerRuntime:
        return IssuerRuntime(config=self.config, keys=self.keys, introspector=self.introspector)

    async def close(self) -> None:
        await self.keys.close()
        if self.introspector is not None:
            await self.introspector.close()


class OAuthResourceServer:
    """Builds and refreshes the issuers' runtimes; the runtime calls ``configure`` at start and on reload."""

    def __init__(self, *, wall_clock: Callable[[], float], monotonic: Callable[[], float],
                 base_dir: Path | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``base_dir``: where relative ``file:`` secret references are resolved (the configuration's
        directory). ``transport``: an httpx transport for tests; None in production."""
        self._wall = wall_clock
        self._monotonic = monotonic
        self._base_dir = base_dir if base_dir is not None else Path.cwd()
        self._transport = transport
        self._validator = TokenValidator(wall_clock=wall_clock, monotonic=monotonic)
        self._external: dict[str, _External] = {}
        self._builtin: IssuerRuntime | None = None
        self._lock = asyncio.Lock()

    @property
    def validator(self) -> TokenValidator:
        return self._validator

    async def configure(self, config: OAuthConfig, builtin: IssuerRuntime | None) -> None:
        """Put the configured issuers in service. Raises ``OAuthConfigError`` (and changes nothing) when an
        issuer cannot be set up; an unreachable identity provider is not an error (its tokens get 503)."""
        async with self._lock:
            kept: dict[str, _External] = {}
            fresh: dict[str, _External] = {}
            try:
                for issuer in config.issuers:
                    secret = self._secret(issuer)
                    old = self._external.get(issuer.name)
                    if old is not None and old.config == issuer and old.secret == secret:
                        kept[issuer.name] = old
                    else:
                        fresh[issuer.name] = self._build(issuer, secret)
            except OAuthConfigError:
                await asyncio.gather(*(e.close() for e in fresh.values()))
                raise
            await asyncio.gather(*(e.keys.start() for e in fresh.values()))
            removed = [e for name, e in self._external.items() if kept.get(name) is not e]
            changed = bool(fresh or removed) or not _same_builtin(self._builtin, builtin)
            self._external = {**kept, **fresh}
            self._builtin = builtin
            runtimes = {name: e.runtime() for name, e in self._external.items()}
            if builtin is not None:
                runtimes[BUILTIN_ISSUER] = builtin
            self._validator.install(runtimes, forget_cached=changed)
            for external in removed:
                await external.close()
            if fresh or removed:
                log.info("trusted issuers: %s", ", ".join(sorted(runtimes)) or "none")

    def _secret(self, issuer: TrustedIssuerConfig) -> str | None:
        if issuer.introspection is None:
            return None
        try:
            return resolve_secret(issuer.introspection.client_secret, self._base_dir)
        except ValueError as exc:
            raise OAuthConfigError(f"oauth.issuers[{issuer.name}].introspection.client_secret", str(exc)) from None

    def _build(self, issuer: TrustedIssuerConfig, secret: str | None) -> _External:
        introspector = None
        if issuer.introspection is not None and secret is not None:
            try:
                introspector = IntrospectionClient(issuer, secret, wall_clock=self._wall, monotonic=self._monotonic,
                                                   transport=self._transport)
            except ValueError as exc:
                raise OAuthConfigError(f"oauth.issuers[{issuer.name}].introspection", str(exc)) from None
        if issuer.jwks_uri is not None:
            problem = url_problem(issuer.jwks_uri)
            if problem is not None:
                raise OAuthConfigError(f"oauth.issuers[{issuer.name}].jwks_uri", problem)
        keys = RemoteKeySet(issuer, monotonic=self._monotonic, transport=self._transport)
        return _External(issuer, keys, introspector, secret)

    async def close(self) -> None:
        async with self._lock:
            externals = list(self._external.values())
            self._external = {}
            self._builtin = None
            self._validator.install({}, forget_cached=True)
        for external in externals:
            with contextlib.suppress(Exception):
                await external.close()


def _same_builtin(old: IssuerRuntime | None, new: IssuerRuntime | None) -> bool:
    if old is None or new is None:
        return old is new
    return old.config == new.config and old.keys is new.keys and old.revocations is new.revocations


__all__ = ["BUILTIN_ISSUER", "OAuthConfigError", "OAuthResourceServer", "TokenFailure", "TokenValidator",
           "build_principal"]
