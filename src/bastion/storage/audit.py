"""The hash-chained audit log: each entry's hash covers its fields and its predecessor's hash.

``hash = sha256(canonical_json(entry fields + prev_hash))``, the first entry linking to 64 zeros. Editing an
entry breaks its own hash, deleting one leaves a gap in ``seq`` and a broken link, reordering breaks links.
Truncating the newest entries is invisible to the chain itself: anchor the head (``last_hash``) elsewhere,
e.g. in the operational log, to detect that too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bastion.storage.models import AuditRow

GENESIS_HASH = "0" * 64
_CHAIN_LOCK = 0x62737441756474  # PostgreSQL advisory lock key for appends; any constant works
_VERIFY_BATCH = 1000


@dataclass(frozen=True, slots=True)
class AuditActor:
    """Who made a change, from where, in which request."""

    actor: str
    client_ip: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    time: datetime
    actor: str
    action: str
    target: str
    client_ip: str | None
    request_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The outcome of re-computing the chain. ``first_bad_seq`` is the first entry found edited, missing
    or out of place; ``last_seq``/``last_hash`` are the head to anchor elsewhere."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    last_seq: int = 0
    last_hash: str = GENESIS_HASH


def format_time(value: datetime) -> str:
    """A fixed-width UTC timestamp; isoformat() drops zero microseconds, which would change the hash."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(
    *,
    seq: int,
    time: datetime,
    actor: str,
    action: str,
    target: str,
    client_ip: str | None,
    request_id: str | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    prev_hash: str,
) -> str:
    document = {
        "seq": seq, "time": format_time(time), "actor": actor, "action": action, "target": target,
        "client_ip": client_ip, "request_id": request_id, "before": before, "after": after,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()


def _row_hash(row: AuditRow) -> str:
    return entry_hash(seq=row.seq, time=row.time, actor=row.actor, action=row.action, target=row.target,
                      client_ip=row.client_ip, request_id=row.request_id, before=row.before, after=row.after,
                      prev_hash=row.prev_hash)


def to_entry(row: AuditRow) -> AuditEntry:
    return AuditEntry(seq=row.seq, time=row.time, actor=row.actor, action=row.action, target=row.target,
                      client_ip=row.client_ip, request_id=row.request_id, before=row.before, after=row.after,
                      prev_hash=row.prev_hash, hash=row.hash)


async def lock_chain(connection: AsyncConnection) -> None:
    """Serialise appends until the transaction ends. SQLite writers already hold the database's write lock
    (``BEGIN IMMEDIATE``); PostgreSQL writers take a transaction-level advisory lock."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})


async def append(
    session: AsyncSession,
    *,
    actor: AuditActor,
    action: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    now: datetime,
) -> AuditEntry:
    """Add an entry in the caller's transaction, which must hold the chain lock (``lock_chain``)."""
    before = _plain_json(before)
    after = _plain_json(after)
    last = (await session.execute(
        select(AuditRow.seq, AuditRow.hash).order_by(AuditRow.seq.desc()).limit(1))).first()
    seq, prev_hash = (last[0] + 1, last[1]) if last is not None else (1, GENESIS_HASH)
    fields: dict[str, Any] = {
        "seq": seq, "time": now, "actor": actor.actor, "action": action, "target": target,
        "client_ip": actor.client_ip, "request_id": actor.request_id, "before": before, "after": after,
        "prev_hash": prev_hash,
    }
    row = AuditRow(**fields, hash=entry_hash(**fields))
    session.add(row)
    await session.flush()
    return to_entry(row)


def _plain_json(value: dict[str, Any] | None) -> dict[str, Any] | None:
    # Round-trip through canonical JSON so the hash covers exactly what the database will give back.
    return None if value is None else dict(json.loads(canonical_json(value)))


async def verify(session: AsyncSession) -> AuditVerification:
    """Recompute every link, oldest first, in batches; stop at the first bad entry."""
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    while True:
        # The first batch has no lower bound, so an entry slipped in before seq 1 is seen too.
        query = select(AuditRow).order_by(AuditRow.seq).limit(_VERIFY_BATCH)
        if checked:
            query = query.where(AuditRow.seq >= expected_seq)
        rows = (await session.scalars(query)).all()
        if not rows:
            return AuditVerification(ok=True, checked=checked, last_seq=expected_seq - 1, last_hash=prev_hash)
        for row in rows:
            problem = None
            if row.seq > expected_seq:
                problem = (expected_seq, f"entry {expected_seq} is missing (deleted)")
            elif row.seq < expected_seq:
                problem = (row.seq, f"entry {row.seq} is out of sequence (inserted)")
            elif row.prev_hash != prev_hash:
                problem = (row.seq, "entry does not link to the previous entry (edited, removed or reordered)")
            elif row.hash != _row_hash(row):
                problem = (row.seq, "entry content does not match its hash (edited)")
            if problem is not None:
                return AuditVerification(ok=False, checked=checked, first_bad_seq=problem[0], reason=problem[1],
                                         last_seq=expected_seq - 1, last_hash=prev_hash)
            checked += 1
            expected_seq, prev_hash = row.seq + 1, row.hash
