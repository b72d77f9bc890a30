"""Who is calling: what authentication policies put in ``RequestContext.identity``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_NOTHING: Final[frozenset[str]] = frozenset()


@dataclass(frozen=True, slots=True)
class Principal:
    consumer_id: str
    consumer_name: str
    credential_id: str  # API key id, OAuth client id, token id: never a secret
    credential_kind: str  # "api-key", "jwt", "opaque-token"
    level: str | None  # API keys: read | write | admin
    permissions: frozenset[str]  # effective rights: credential scopes intersected with role permissions
    plan: str | None = None
    admin_role: str | None = None
    # OAuth tokens: who the token speaks for, and through which application
    subject: str | None = None  # `sub`: the user, or the client itself for client credentials
    client_id: str | None = None
    issuer: str | None = None  # the trusted issuer's configured name (`bastion` for the built-in server)
    roles: tuple[str, ...] = ()  # as the issuer asserted them; forwarded, never turned into permissions
    token_expires_at: float | None = None  # wall-clock `exp` of the token

    def may_use_method(self, method: str) -> bool:
        """Read-level credentials may only read."""
        return self.level != "read" or method in READ_METHODS

    def missing(self, required: frozenset[str]) -> frozenset[str]:
        """Required permissions this principal lacks (``*`` in a grant matches a whole segment tail)."""
        if required <= self.permissions or "*" in self.permissions:
            return _NOTHING  # the common case, answered by one C-level subset test
        missing = set()
        for permission in required:
            if permission in self.permissions:
                continue
            if any(g.endswith(":*") and permission.startswith(g[:-1]) for g in self.permissions):
                continue
            missing.add(permission)
        return frozenset(missing)
