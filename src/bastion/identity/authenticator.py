"""API-key authentication with a cache: a repeat request costs microseconds, not a database round trip.

The cache holds what the database said about a key id (including "no such key", briefly) for
``cache_ttl`` seconds; revocations and consumer changes empty it at once on this node (``invalidate``),
and on every node through the change watcher (Redis broadcast, with a database poll as the safety net).
The secret is checked on every request (HMAC under the pepper, constant-time compare: ~2 us).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bastion.identity.keys import KeyHasher, parse_key
from bastion.identity.principal import Principal
from bastion.storage.identity_store import IdentityStore, KeyAuthRecord

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_LEVEL_RANK: Final = {"read": 0, "write": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class _Entry:
    fetched: float
    record: KeyAuthRecord | None
    principal: Principal | None
    networks: tuple[tuple[IpNetwork, ...], tuple[IpNetwork, ...]]
    expires: float  # monotonic time at which the key expires (inf when there is no record)


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """A refused credential. ``reason`` is for the log only: clients get one code for every reason."""

    reason: str
    key_id: str | None = None


def _networks(cidrs: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _address_in(client_ip: str, networks: tuple[IpNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == n.version and address in n for n in networks)


def effective_permissions(record: KeyAuthRecord) -> frozenset[str]:
    """Least privilege: the key's scopes intersected with its consumer's role permissions."""
    if not record.scopes:
        return record.permissions
    if "*" in record.permissions:
        return record.scopes
    granted = set()
    for scope in record.scopes:
        if scope in record.permissions or any(
                p.endswith(":*") and scope.startswith(p[:-1]) for p in record.permissions):
            granted.add(scope)
    return frozenset(granted)


class KeyAuthenticator:
    def __init__(self, store: IdentityStore, hasher: KeyHasher, *, monotonic: Callable[[], float],
                 utcnow: Callable[[], datetime] = lambda: datetime.now(UTC), cache_ttl: float = 30.0,
                 negative_ttl: float = 5.0, max_entries: int = 100_000) -> None:
        self._store = store
        self._hasher = hasher
        self._monotonic = monotonic
        self._utcnow = utcnow
        self._wall = time.time
        self._cache_ttl = cache_ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._cache: dict[str, _Entry] = {}
        # Presented keys already verified against a cache entry: a repeat request skips parsing and the HMAC.
        self._verified: dict[str, _Entry] = {}
        self._last_used: dict[str, float] = {}

    def authenticate_cached(self, presented: str, client_ip: str) -> Principal | AuthFailure | None:
        """The answer from the cache alone; None when the store must be asked (``authenticate``)."""
        verified = self._verified.get(presented)
        if verified is not None:
            now = self._monotonic()
            record = verified.record
            # Still the live cache entry (no invalidation since), fresh, unexpired: only the address is left.
            if (record is not None and self._cache.get(record.key_id) is verified
                    and not self._stale(verified, now) and now < verified.expires):
                return self._address_verdict(verified, record.key_id, client_ip)
            del self._verified[presented]
        parsed = parse_key(presented)
        if parsed is None:
            return AuthFailure("malformed key")
        entry = self._cache.get(parsed.key_id)
        if entry is None or self._stale(entry, self._monotonic()):
            return None
        return self._verdict(entry, parsed.level.value, presented, client_ip)

    async def authenticate(self, presented: str, client_ip: str) -> Principal | AuthFailure:
        """Raises ``StoreUnavailable`` when the store cannot be asked (callers fail closed)."""
        parsed = parse_key(presented)
        if parsed is None:
            return AuthFailure("malformed key")
        now = self._monotonic()
        entry = self._cache.get(parsed.key_id)
        if entry is None or self._stale(entry, now):
            entry = await self._fetch(parsed.key_id, now)
        return self._verdict(entry, parsed.level.value, presented, client_ip)

    def _stale(self, entry: _Entry, now: float) -> bool:
        return now - entry.fetched > (self._cache_ttl if entry.record else self._negative_ttl)

    def _verdict(self, entry: _Entry, level: str, presented: str, client_ip: str) -> Principal | AuthFailure:
        record = entry.record
        if record is None:
            return AuthFailure("unknown key id")
        key_id = record.key_id
        if record.level.value != level or not self._hasher.verify(presented, record.digest):
            return AuthFailure("wrong secret for key id", key_id)
        reason = record.rejection_reason(self._utcnow())
        if reason is not None:
            return AuthFailure(reason, key_id)
        if len(self._verified) >= self._max_entries:
            self._verified.clear()
        self._verified[presented] = entry
        return self._address_verdict(entry, key_id, client_ip)

    def _address_verdict(self, entry: _Entry, key_id: str, client_ip: str) -> Principal | AuthFailure:
        key_networks, consumer_networks = entry.networks
        if key_networks and not _address_in(client_ip, key_networks):
            return AuthFailure(f"client address {client_ip} not allowed for this key", key_id)
        if consumer_networks and not _address_in(client_ip, consumer_networks):
            return AuthFailure(f"client address {client_ip} not allowed for this consumer", key_id)
        self._last_used[key_id] = self._wall()
        assert entry.principal is not None
        return entry.principal

    async def _fetch(self, key_id: str, now: float) -> _Entry:
        record = await self._store.find_key_for_auth(key_id)
        principal = None
        networks: tuple[tuple[IpNetwork, ...], tuple[IpNetwork, ...]] = ((), ())
        if record is not None:
            networks = (_networks(record.key_allowed_cidrs), _networks(record.consumer_allowed_cidrs))
            principal = Principal(
                consumer_id=record.consumer_id, consumer_name=record.consumer_name, credential_id=key_id,
                credential_kind="api-key", level=record.level.value, permissions=effective_permissions(record),
                plan=record.plan, admin_role=record.admin_role.value if record.admin_role else None)
        expires = math.inf
        if record is not None:
            expires = now + (record.expires_at - self._utcnow()).total_seconds()
        entry = _Entry(now, record, principal, networks, expires)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()  # bounded: a flood of random key ids cannot grow memory
        self._cache[key_id] = entry
        return entry

    def invalidate(self, key_id: str | None = None) -> None:
        """Forget one key (or everything): the next request asks the store again."""
        if key_id is None:
            self._cache.clear()
            self._verified.clear()
        else:
            self._cache.pop(key_id, None)  # verified entries die with it: they must be the live entry

    def take_last_used(self) -> dict[str, datetime]:
        """Keys used since the last call, for one batched ``record_last_used`` write."""
        batch = self._last_used
        self._last_used = {}
        return {key_id: datetime.fromtimestamp(stamp, UTC) for key_id, stamp in batch.items()}


def level_at_least(level: str | None, required: str) -> bool:
    return level is not None and _LEVEL_RANK.get(level, -1) >= _LEVEL_RANK[required]
