"""An external issuer's signing keys, fetched from its JWKS and kept current within strict bounds.

- Where: ``jwks_uri`` pinned in the configuration, or found once through discovery (RFC 8414
  ``/.well-known/oauth-authorization-server``, then OpenID Connect ``/.well-known/openid-configuration``);
  the discovered ``issuer`` must equal the configured one.
- How long: the response's ``Cache-Control: max-age``, clamped to ``[min_ttl, max_ttl]``; ``default_ttl``
  when there is none. A background task fetches again when the keys expire.
- Unknown ``kid``: at most one extra fetch per ``refetch_interval``, single-flight (concurrent callers wait
  for the same fetch), so a flood of random ``kid`` values costs the identity provider one request per
  interval, not one per token.
- Identity provider down: the last keys keep working for ``stale_for`` seconds after they expired; then
  ``usable()`` is False and every token of the issuer is refused (fail closed).
- Transport: https only (http only to loopback addresses), no redirects, responses bounded in size.
- Keys: only public signature keys with a ``kid``; each bound to exactly one algorithm of the allow-list
  (its ``alg``, or one inferred only when unambiguous); private, symmetric and encryption keys are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import time
from base64 import urlsafe_b64decode
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry

from bastion.config.model import JwksCacheConfig, TrustedIssuerConfig
from bastion.oauth.contracts import VerificationKey

log = logging.getLogger("bastion.oauth")

MAX_RESPONSE_BYTES = 512 * 1024
MAX_KEYS = 100
MIN_RSA_BITS = 2048
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVE_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA", "Ed448": "EdDSA"}
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_KEY_TYPE_OF = {**dict.fromkeys(_RSA_ALGORITHMS, "RSA"), "ES256": "EC", "ES384": "EC", "ES512": "EC",
                "EdDSA": "OKP"}


class FetchError(Exception):
    """A JWKS or discovery request failed (the message is safe to log)."""


def url_problem(url: str) -> str | None:
    """Why Bastion will not fetch from this URL (None: it will): https, or http to a loopback address."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL"
    if parts.fragment:
        return "a fragment in the URL"
    host = parts.hostname
    if not host:
        return "no host in the URL"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback(host):
        return None
    return f"{parts.scheme}:// is not allowed (https, or http to a loopback address only)"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def fetch_json(client: httpx.AsyncClient, url: str, **kwargs: Any) -> tuple[dict[str, Any], httpx.Headers]:
    """GET (or POST with ``kwargs``) a JSON object: status 200 only, no redirects, bounded size."""
    problem = url_problem(url)
    if problem is not None:
        raise FetchError(f"{url}: {problem}")
    method = "POST" if kwargs else "GET"
    try:
        async with client.stream(method, url, headers={"accept": "application/json"}, **kwargs) as response:
            if response.status_code != 200:
                kind = " (redirects are not followed)" if response.is_redirect else ""
                raise FetchError(f"{url}: HTTP {response.status_code}{kind}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise FetchError(f"{url}: response of {declared} bytes exceeds {MAX_RESPONSE_BYTES}")
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise FetchError(f"{url}: response exceeds {MAX_RESPONSE_BYTES} bytes")
            headers = response.headers
    except httpx.HTTPError as exc:
        raise FetchError(f"{url}: {type(exc).__name__}") from None
    try:
        data = json.loads(bytes(body))
    except ValueError:
        raise FetchError(f"{url}: not JSON") from None
    if not isinstance(data, dict):
        raise FetchError(f"{url}: not a JSON object")
    return data, headers


def cache_lifetime(cache_control: str | None, config: JwksCacheConfig) -> float:
    """Seconds to keep a JWKS: its max-age clamped to the configured bounds, else the default."""
    if cache_control:
        for directive in cache_control.lower().split(","):
            name, _, value = directive.strip().partition("=")
            if name in ("no-store", "no-cache"):
                return config.min_ttl
            if name == "max-age" and value.strip().strip('"').isdigit():
                age = float(value.strip().strip('"'))
                return max(config.min_ttl, min(config.max_ttl, age))
    return config.default_ttl


def discovery_urls(issuer: str) -> list[str]:
    """RFC 8414 section 3 inserts the well-known segment before the issuer's path; OIDC Discovery appends."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    rfc8414 = urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", ""))
    oidc = urlunsplit((parts.scheme, parts.netloc, path + "/.well-known/openid-configuration", "", ""))
    return [rfc8414, oidc]


def bound_algorithm(jwk: Mapping[str, Any], allowed: frozenset[str]) -> str | None:
    """The one algorithm this key may verify, or None when it is not for us or would be ambiguous."""
    alg = jwk.get("alg")
    kty = jwk.get("kty")
    if alg is not None:
        if not isinstance(alg, str) or alg not in allowed or _KEY_TYPE_OF.get(alg) != kty:
            return None
        if kty in ("EC", "OKP") and _CURVE_ALGORITHM.get(str(jwk.get("crv"))) != alg:
            return None
        return alg
    if kty in ("EC", "OKP"):
        inferred = _CURVE_ALGORITHM.get(str(jwk.get("crv")))
        return inferred if inferred in allowed else None
    if kty == "RSA":
        rsa = sorted(allowed & _RSA_ALGORITHMS)
        return rsa[0] if len(rsa) == 1 else None  # RS256 and PS256 both allowed: which one is unknowable
    return None


def load_keys(document: Mapping[str, Any], allowed: frozenset[str],
              previous: Mapping[str, VerificationKey] | None = None) -> tuple[dict[str, VerificationKey], list[str]]:
    """The usable keys of a JWKS by kid, and why the others were ignored (for the log).

    A key that did not change keeps its ``VerificationKey`` object, so tokens cached against it stay valid.
    """
    entries = document.get("keys")
    if not isinstance(entries, list):
        return {}, ["no 'keys' list"]
    keys: dict[str, VerificationKey] = {}
    ignored: list[str] = []
    duplicates: set[str] = set()
    for entry in entries[:MAX_KEYS]:
        if not isinstance(entry, dict):
            ignored.append("an entry that is not an object")
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            ignored.append("a key without a usable kid")
            continue
        reason = _unusable(entry)
        algorithm = bound_algorithm(entry, allowed) if reason is None else None
        if reason is None and algorithm is None:
            reason = "no algorithm of the allow-list fits it unambiguously"
        if reason is not None:
            ignored.append(f"kid {kid[:64]!r}: {reason}")
            continue
        assert algorithm is not None
        try:
            key = JWKRegistry.import_key({k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS})
        except (JoseError, ValueError, TypeError, KeyError):
            ignored.append(f"kid {kid[:64]!r}: not a valid key")
            continue
        if kid in keys or kid in duplicates:
            duplicates.add(kid)  # two keys under one kid: neither can be chosen safely
            keys.pop(kid, None)
            ignored.append(f"kid {kid[:64]!r}: used by more than one key")
            continue
        old = (previous or {}).get(kid)
        if old is not None and old.algorithm == algorithm and old.key.as_dict() == key.as_dict():
            keys[kid] = old
        else:
            keys[kid] = VerificationKey(kid, algorithm, key)
    if len(entries) > MAX_KEYS:
        ignored.append(f"{len(entries) - MAX_KEYS} keys beyond the first {MAX_KEYS}")
    return keys, ignored


def _unusable(entry: Mapping[str, Any]) -> str | None:
    kty = entry.get("kty")
    if kty == "oct":
        return "symmetric key"
    if kty not in ("RSA", "EC", "OKP"):
        return f"key type {str(kty)[:16]!r}"
    if _PRIVATE_MEMBERS.intersection(entry):
        return "a private key (published by mistake?)"
    use = entry.get("use")
    if use is not None and use != "sig":
        return f"use {str(use)[:16]!r}"
    ops = entry.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops without verify"
    if kty == "RSA" and _rsa_bits(entry.get("n")) < MIN_RSA_BITS:
        return f"RSA key shorter than {MIN_RSA_BITS} bits"
    return None


def _rsa_bits(modulus: object) -> int:
    if not isinstance(modulus, str):
        return 0
    try:
        return int.from_bytes(urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))).bit_length()
    except ValueError:
        return 0


class RemoteKeySet:
    """``contracts.KeySet`` for an external issuer. ``start()`` fetches once and keeps the keys current."""

    def __init__(self, config: TrustedIssuerConfig, *, monotonic: Callable[[], float] = time.monotonic,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._cache = config.jwks_cache
        self._allowed = frozenset(config.algorithms)
        self._monotonic = monotonic
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._jwks_uri = config.jwks_uri
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None  # monotonic time of the last successful fetch
        self._ttl = self._cache.default_ttl
        self._last_kid_refetch = -math.inf
        self._inflight: asyncio.Task[bool] | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self.fetches = 0  # successful and failed, discovery included (for tests and metrics)

    # -- KeySet ------------------------------------------------------------------------------------
    def get(self, kid: str) -> VerificationKey | None:
        if not self.usable():
            return None
        return self._keys.get(kid)

    def usable(self) -> bool:
        fetched = self._fetched_at
        return fetched is not None and self._monotonic() < fetched + self._ttl + self._cache.stale_for

    async def refresh(self, kid: str) -> None:
        if kid in self._keys and self.usable():
            return
        inflight = self._inflight
        if inflight is None or inflight.done():
            now = self._monotonic()
            if now - self._last_kid_refetch < self._cache.refetch_interval:
                return  # the budget for this interval is spent: the token is refused, the IdP spared
            self._last_kid_refetch = now
            inflight = self._fetch_once()
        try:
            await asyncio.shield(inflight)
        except asyncio.CancelledError:
            if not inflight.cancelled():
                raise  # the caller was cancelled, not the fetch (close() cancels fetches)

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def expired(self) -> bool:
        fetched = self._fetched_at
        return fetched is None or self._monotonic() >= fetched + self._ttl

    async def start(self) -> None:
        """First fetch (a failure is logged: tokens are refused until a fetch succeeds), then maintenance.
        Waits at most ``fetch_timeout``: a slow identity provider does not hold up the gateway's start."""
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False, timeout=self._cache.fetch_timeout,
                                             transport=self._transport, trust_env=False)
        await asyncio.wait({self._fetch_once()}, timeout=self._cache.fetch_timeout)
        if self._maintainer is None:
            self._maintainer = asyncio.get_running_loop().create_task(self._maintain())

    async def close(self) -> None:
        for task in (self._maintainer, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._maintainer = None
        self._inflight = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _maintain(self) -> None:
        """Fetch again when the keys expire; after a failure, retry every refetch_interval."""
        while True:
            fetched = self._fetched_at
            if fetched is None or self.expired:
                delay = self._cache.refetch_interval
            else:
                delay = fetched + self._ttl - self._monotonic()
            await asyncio.sleep(max(delay, 0.5))
            if self.expired:
                await self._fetch_once()

    def _fetch_once(self) -> asyncio.Task[bool]:
        """Single flight: every caller shares the fetch in progress."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        return self._inflight

    async def _fetch(self) -> bool:
        try:
            return await self._fetch_and_load()
        except Exception:  # never raises: a bug here must not turn into a 500 for every token
            log.exception("issuer %s: JWKS refresh failed", self.config.name)
            return False

    async def _fetch_and_load(self) -> bool:
        if self._client is None:
            return False
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover(self._client)
            self.fetches += 1
            document, headers = await fetch_json(self._client, self._jwks_uri)
        except FetchError as exc:
            state = "stale keys in use" if self.usable() else "no usable keys: tokens are refused"
            log.error("issuer %s: JWKS fetch failed (%s); %s", self.config.name, exc, state)
            return False
        keys, ignored = load_keys(document, self._allowed, self._keys)
        if ignored:
            log.warning("issuer %s: JWKS keys ignored: %s", self.config.name, "; ".join(ignored[:10]))
        added = sorted(set(keys) - set(self._keys))
        removed = sorted(set(self._keys) - set(keys))
        if added or removed:
            log.info("issuer %s: JWKS now has %d keys (added %s, removed %s)", self.config.name, len(keys),
                     added, removed)
        self._keys = keys
        self._ttl = cache_lifetime(headers.get("cache-control"), self._cache)
        self._fetched_at = self._monotonic()
        return True

    async def _discover(self, client: httpx.AsyncClient) -> str:
        failures = []
        for url in discovery_urls(self.config.issuer):
            self.fetches += 1
            try:
                metadata, _ = await fetch_json(client, url)
            except FetchError as exc:
                failures.append(str(exc))
                continue
            if metadata.get("issuer") != self.config.issuer:
                # A document for another issuer (or a tampered one): never take keys from it.
                raise FetchError(f"{url}: discovered issuer {str(metadata.get('issuer'))[:200]!r} is not "
                                 f"{self.config.issuer!r}")
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise FetchError(f"{url}: no jwks_uri")
            problem = url_problem(jwks_uri)
            if problem is not None:
                raise FetchError(f"{url}: jwks_uri {jwks_uri[:200]!r}: {problem}")
            log.info("issuer %s: JWKS at %s (discovered)", self.config.name, jwks_uri)
            return jwks_uri
        raise FetchError("discovery failed: " + "; ".join(failures))
