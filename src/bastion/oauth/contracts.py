"""Interfaces shared by the resource-server side and the authorization-server side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bastion.config.model import TrustedIssuerConfig


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key, bound to exactly one algorithm (no HS/RS confusion: the key decides the algorithm)."""

    kid: str
    algorithm: str
    key: Any  # a joserfc key object (ECKey, RSAKey, OKPKey)


class KeySet(Protocol):
    """Where an issuer's public keys come from."""

    def get(self, kid: str) -> VerificationKey | None:
        """The key with this id from what is held now, without I/O (None: unknown, or the set is unusable)."""

    async def refresh(self, kid: str) -> None:
        """A token named an unknown ``kid``: fetch again if the refetch budget allows (single-flight,
        at most once per interval), otherwise return at once. Never raises."""

    def usable(self) -> bool:
        """False once the keys are older than their staleness bound: every token of the issuer is refused."""


class RevocationCheck(Protocol):
    def is_revoked(self, jti: str) -> bool:
        """Local, no I/O: the list is kept current by broadcast and polling."""


@dataclass(frozen=True, slots=True)
class TokenFailure:
    """A refused token. ``reason`` is for the log only (never the token itself); clients get one answer.

    ``unavailable``: the token could not be checked at all (the issuer's keys are past their staleness
    bound, the introspection endpoint cannot be reached): the gateway answers 503, not 401.
    """

    reason: str
    unavailable: bool = False


@dataclass(frozen=True, slots=True)
class IntrospectionResult:
    """What an RFC 7662 endpoint said about an opaque token that is active."""

    claims: dict[str, Any]
    expires_at: float | None  # wall clock, from `exp` when the endpoint gave one
    reuse_until: float  # wall clock: the answer may be reused until then (cache_ttl, never past `exp`)


class Introspector(Protocol):
    async def introspect(self, token: str) -> IntrospectionResult | TokenFailure:
        """Ask the issuer about an opaque token (cached, single-flight per token). Never raises."""


@dataclass(frozen=True, slots=True)
class IssuerRuntime:
    """A trusted issuer as the gateway uses it: its validated settings and live key set."""

    config: TrustedIssuerConfig
    keys: KeySet
    revocations: RevocationCheck | None = None  # the built-in server's list; None for external issuers
    introspector: Introspector | None = None  # opaque tokens (RFC 7662); None: JWTs only
