"""Child process for the durability tests: create API keys in a loop and print each key id on stdout
only after its transaction has committed, so every printed id is an acknowledged write.

Usage: python tests/support/key_writer.py DATABASE_URL NAME
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from bastion.identity.keys import KeyHasher, KeyLevel
from bastion.storage.audit import AuditActor
from bastion.storage.engine import create_engine
from bastion.storage.identity_store import IdentityStore
from bastion.storage.migrate import migrate


async def main(url: str, name: str) -> None:
    await migrate(url)
    engine = create_engine(url)
    store = IdentityStore(engine)
    actor = AuditActor(f"durability-{name}")
    hasher = KeyHasher(b"durability-test-pepper-0123456789abcdef")
    consumer = await store.create_consumer(name, actor=actor)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        _, record = await store.create_key(consumer.id, KeyLevel.READ, actor=actor, hasher=hasher,
                                           max_ttl=timedelta(days=1))
        sys.stdout.write(f"{record.key_id}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
