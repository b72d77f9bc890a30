"""RFC 7662 token introspection: ask the issuer whether an opaque access token is active.

Bastion authenticates to the endpoint with HTTP Basic (RFC 6749 section 2.3.1: id and secret
form-urlencoded first). Answers are reused for at most ``cache_ttl`` seconds and never past the token's
``exp``: that is the revocation latency for opaque tokens. "Inactive" answers are reused briefly, so a
client retrying a dead token does not reach the IdP each time; errors are never cached (the next request
asks again) and refuse the token as unavailable (503, fail closed). Concurrent requests with the same token
share one request (single flight), and the number of requests in flight to the IdP is bounded.
Tokens are keyed by their SHA-256 digest, never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from bastion.config.model import TrustedIssuerConfig
from bastion.oauth.contracts import IntrospectionResult, TokenFailure
from bastion.oauth.jwks import FetchError, fetch_json, url_problem

log = logging.getLogger("bastion.oauth")

NEGATIVE_TTL = 5.0
MAX_ENTRIES = 100_000
MAX_IN_FLIGHT = 32


@dataclass(frozen=True, slots=True)
class _Answer:
    result: IntrospectionResult | TokenFailure
    until: float  # monotonic


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _audiences(value: object) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


class IntrospectionClient:
    """``contracts.Introspector`` for one trusted issuer."""

    def __init__(self, config: TrustedIssuerConfig, client_secret: str, *,
                 wall_clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        settings = config.introspection
        if settings is None:
            raise ValueError(f"issuer {config.name} has no introspection settings")
        problem = url_problem(settings.endpoint)
        if problem is not None:
            raise ValueError(f"issuer {config.name}: introspection endpoint: {problem}")
        self.config = config
        self._endpoint = settings.endpoint
        self._auth = httpx.BasicAuth(quote(settings.client_id, safe=""), quote(client_secret, safe=""))
        self._cache_ttl = settings.cache_ttl
        self._negative_ttl = min(NEGATIVE_TTL, settings.cache_ttl)
        self._audiences = frozenset(config.audiences)
        self._wall = wall_clock
        self._monotonic = monotonic
        self._client = httpx.AsyncClient(follow_redirects=False, timeout=settings.timeout, transport=transport,
                                         trust_env=False)
        self._answers: dict[bytes, _Answer] = {}
        self._inflight: dict[bytes, asyncio.Task[_Answer]] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.requests = 0

    async def introspect(self, token: str) -> IntrospectionResult | TokenFailure:
        key = token_digest(token)
        answer = self._answers.get(key)
        if answer is not None:
            if self._monotonic() < answer.until:
                return answer.result
            del self._answers[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._ask(key, token))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return (await asyncio.shield(task)).result

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        await self._client.aclose()

    async def _ask(self, key: bytes, token: str) -> _Answer:
        async with self._slots:
            self.requests += 1
            try:
                data, _ = await fetch_json(self._client, self._endpoint, auth=self._auth,
                                           data={"token": token, "token_type_hint": "access_token"})
            except FetchError as exc:
                log.error("issuer %s: introspection failed: %s", self.config.name, exc)
                return _Answer(TokenFailure(f"introspection at issuer {self.config.name} failed", unavailable=True),
                               -math.inf)  # never reused
        now, wall = self._monotonic(), self._wall()
        judged = self._judge(data, wall)
        if isinstance(judged, TokenFailure):
            answer = _Answer(judged, now + self._negative_ttl)
        else:
            claims, expires_at = judged
            lifetime = self._cache_ttl if expires_at is None else min(self._cache_ttl, expires_at - wall)
            lifetime = max(lifetime, 0.0)
            answer = _Answer(IntrospectionResult(claims, expires_at, wall + lifetime), now + lifetime)
        if answer.until > now:
            if len(self._answers) >= MAX_ENTRIES:
                self._answers.clear()  # bounded: random tokens cannot grow memory
            self._answers[key] = answer
        return answer

    def _judge(self, data: dict[str, Any], wall: float) -> tuple[dict[str, Any], float | None] | TokenFailure:
        if data.get("active") is not True:
            return TokenFailure(f"inactive at issuer {self.config.name} (introspection)")
        issuer = data.get("iss")
        if issuer is not None and issuer != self.config.issuer:
            return TokenFailure(f"introspection names issuer {str(issuer)[:100]!r}, not {self.config.issuer!r}")
        if "aud" in data:
            audiences = _audiences(data["aud"])
            if audiences is None or self._audiences.isdisjoint(audiences):
                return TokenFailure("introspection aud names none of the accepted audiences")
        token_type = data.get("token_type")
        if isinstance(token_type, str) and "refresh" in token_type.lower():
            return TokenFailure("a refresh token presented as an access token")
        leeway = self.config.leeway
        exp, nbf = data.get("exp"), data.get("nbf")
        for name, value in (("exp", exp), ("nbf", nbf)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                return TokenFailure(f"introspection {name} is not a number")
        if isinstance(exp, int | float) and wall >= exp + leeway:
            return TokenFailure("expired (introspection exp)")
        if isinstance(nbf, int | float) and wall + leeway < nbf:
            return TokenFailure("not yet valid (introspection nbf)")
        return data, (float(exp) if isinstance(exp, int | float) else None)
