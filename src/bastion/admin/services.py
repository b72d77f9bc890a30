"""What the admin app needs from the runtime (it never imports the runtime)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from bastion.identity.service import IdentityService
from bastion.oauth.revocation import RevocationList
from bastion.oauth.server.keys import SigningKeys
from bastion.oauth.server.store import OAuthStore
from bastion.observability.metrics import GatewayMetrics
from bastion.policies.failed_auth import FailedAuthBrake

# A retired signing key stays published this long past the access-token lifetime, so that tokens signed in
# the instant of a rotation, and verifiers with a skewed clock, still verify.
KEY_RETENTION_MARGIN: Final = timedelta(minutes=5)


MAX_ACCESS_TOKEN_TTL = timedelta(days=1)  # the upper bound of oauth.server.access_token_ttl


def signing_key_retention(access_token_ttl: timedelta, *, emergency: bool = False) -> timedelta:
    """How long a rotation keeps the retired key published: until every token it signed has expired. The
    longest lifetime a token may have had, not only the current setting, which a reload may have shortened
    (the retired private key is erased at once; only its public key stays published).

    An emergency rotation (the active key is compromised) keeps it for no time at all: from then on no node
    accepts a token it signed, forged or not."""
    if emergency:
        return timedelta(0)
    return max(access_token_ttl, MAX_ACCESS_TOKEN_TTL) + KEY_RETENTION_MARGIN


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    generation: int
    issues: list[str]


@dataclass(frozen=True, slots=True)
class OAuthAdmin:
    """The authorization server's data as the admin API manages it."""

    store: OAuthStore
    revocations: RevocationList  # deleting a client revokes its tokens on every node at once
    signing_keys: SigningKeys | None  # None: `oauth.server.enabled` is off (the signing-key routes answer 404)
    access_token_ttl: Callable[[], timedelta]  # the configured lifetime now (it may change on reload)


@dataclass(frozen=True, slots=True)
class AdminServices:
    metrics: GatewayMetrics
    reload: Callable[[], Awaitable[ReloadResult]]
    status: Callable[[], dict[str, Any]]
    docs_base: Callable[[], str]
    identity: IdentityService | None = None  # None: every authenticated endpoint answers 503
    oauth: OAuthAdmin | None = None  # None: the OAuth routes answer 503 like a missing identity store
    failed_auth: FailedAuthBrake | None = None  # None: invalid admin credentials are not counted
