"""Cutting off the tokens of a disabled OAuth client, a disabled consumer, or a consumer being deleted.

The admin API and the CLI's local mode share these steps. The status change comes first (its own audited
write); from then on the token endpoint refuses the client, and a token issued in the same instant is revoked
as the store records it. The store's sweep then revokes every token that was issued before, and the
revocations are broadcast so that every node refuses them at once (the nodes' one-second poll of the
revocation table is the safety net).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from bastion.oauth.revocation import RevocationList
from bastion.oauth.server.store import OAuthStore
from bastion.storage.identity_store import AuditActor, Consumer, ConsumerStatus, IdentityStore

# Entries per broadcast message: a message stays far below the listeners' 1 MiB limit however many tokens
# a client held (about 50 bytes an entry).
BROADCAST_CHUNK: Final = 5000


async def broadcast(revocations: RevocationList, entries: Sequence[tuple[str, datetime]]) -> None:
    """Refuse these tokens on every node now (the store has them already; writing them again is harmless)."""
    for start in range(0, len(entries), BROADCAST_CHUNK):
        await revocations.revoke(entries[start:start + BROADCAST_CHUNK])


async def cut_off_client(oauth: OAuthStore, revocations: RevocationList, client_id: str) -> int:
    """After the client was disabled: revoke all it holds, everywhere. Returns the access tokens revoked."""
    revoked = await oauth.revoke_client_tokens(client_id)
    await broadcast(revocations, revoked)
    return len(revoked)


async def cut_off_consumer(oauth: OAuthStore, revocations: RevocationList, consumer_id: str) -> int:
    """After the consumer was disabled: revoke all its clients hold, everywhere."""
    revoked = await oauth.revoke_consumer_tokens(consumer_id)
    await broadcast(revocations, revoked)
    return len(revoked)


async def delete_consumer(identity: IdentityStore, oauth: OAuthStore, revocations: RevocationList,
                          consumer: Consumer, *, actor: AuditActor) -> None:
    """Delete the consumer after revoking its clients' tokens: the clients and the records of their tokens
    go with the consumer, so afterwards nothing would find those tokens. A consumer with OAuth clients is
    disabled first (one more audit entry), so that no token is issued between the sweep and the deletion."""
    if consumer.status is ConsumerStatus.ACTIVE and await oauth.list_clients(consumer.id, limit=1):
        await identity.update_consumer(consumer.id, actor=actor, status=ConsumerStatus.DISABLED)
    await cut_off_consumer(oauth, revocations, consumer.id)
    await identity.delete_consumer(consumer.id, actor=actor)
