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
class IssuerRuntime:
    """A trusted issuer as the gateway uses it: its validated settings and live key set."""

    config: TrustedIssuerConfig
    keys: KeySet
    revocations: RevocationCheck | None = None  # the built-in server's list; None for external issuers
