"""Verified tokens, so that a repeat request costs a dictionary lookup instead of a signature check.

An entry lives until the token's ``exp`` (wall clock; for opaque tokens also until the introspection
answer may no longer be reused). Every hit re-checks what can change meanwhile, all without I/O:

- the token's ``jti`` against the issuer's revocation list (the built-in server: revocation is immediate);
- that the key which verified the token is still the issuer's key under that ``kid``, and the key set is
  still usable: a key withdrawn from the JWKS, or keys past their staleness bound, end the entry.

The cache is bounded: when full, the oldest entries go first. A JWT is filed under its signature segment
(see ``_slot``) and the whole token is compared on every hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bastion.identity.principal import Principal
from bastion.oauth.contracts import KeySet, RevocationCheck, VerificationKey

MAX_ENTRIES = 100_000
_MIN_SIGNATURE_CHARS: Final = 43  # 256 bits in base64url: a shorter last segment does not stand for the token


@dataclass(frozen=True, slots=True)
class CachedToken:
    principal: Principal
    valid_until: float  # wall clock
    jti: str | None = None
    revocations: RevocationCheck | None = None
    keys: KeySet | None = None  # JWTs: the key set and the key that verified the signature
    kid: str = ""
    key: VerificationKey | None = None


class TokenCache:
    def __init__(self, *, wall_clock: Callable[[], float] = time.time, max_entries: int = MAX_ENTRIES) -> None:
        self._wall = wall_clock
        self._max_entries = max_entries
        self._entries: dict[str, tuple[str, CachedToken]] = {}  # slot -> (token, entry)

    def get(self, token: str) -> Principal | None:
        """The principal of a token verified before and still good, else None (and the entry is gone)."""
        slot = _slot(token)
        stored = self._entries.get(slot)
        if stored is None or stored[0] != token:
            return None
        entry = stored[1]
        if (self._wall() < entry.valid_until
                and (entry.revocations is None or entry.jti is None or not entry.revocations.is_revoked(entry.jti))
                and (entry.keys is None or entry.keys.get(entry.kid) is entry.key)):
            return entry.principal
        self._entries.pop(slot, None)
        return None

    def put(self, token: str, entry: CachedToken) -> None:
        if entry.valid_until <= self._wall():
            return
        entries = self._entries
        slot = _slot(token)
        if slot not in entries and len(entries) >= self._max_entries:
            del entries[next(iter(entries))]  # the oldest: dicts keep insertion order
        entries[slot] = (token, entry)

    def discard(self, token: str) -> None:
        slot = _slot(token)
        stored = self._entries.get(slot)
        if stored is not None and stored[0] == token:
            del self._entries[slot]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _slot(token: str) -> str:
    """Where a token is filed: a JWT under its signature segment, anything else under the whole token.

    A signature is distinct for every token, and hashing it instead of the whole token is most of the cost
    of a hit (an ES256 access token is ~500 characters, its signature 86). Two tokens that share a slot can
    only evict each other: a hit always compares the whole token.
    """
    dot = token.rfind(".")
    if dot < 0 or len(token) - dot <= _MIN_SIGNATURE_CHARS:
        return token
    return token[dot + 1:]
