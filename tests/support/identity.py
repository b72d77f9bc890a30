"""Open a running gateway's identity store from a test, as the CLI does (same database, same pepper)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from bastion.config.model import GatewayConfig
from bastion.identity.keys import KeyLevel
from bastion.identity.service import IdentityService, identity_settings
from bastion.storage.audit import AuditActor

T = TypeVar("T")
ACTOR = AuditActor("test:setup")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class StoreHandle:
    """Synchronous helpers over the identity store named by a gateway configuration."""

    def __init__(self, config: dict[str, Any], config_dir: Path) -> None:
        self.settings = identity_settings(GatewayConfig.model_validate(config), config_dir)

    async def _with_service(self, work: Any) -> Any:
        service = IdentityService(self.settings)
        try:
            await service.prepare()
            result = await work(service)
            await service.announce_change()  # running gateways drop their caches (Redis, or the poll)
            return result
        finally:
            await service.close()

    def role(self, name: str, permissions: list[str]) -> None:
        async def work(service: IdentityService) -> None:
            await service.store.put_role(name, permissions, actor=ACTOR)

        run(self._with_service(work))

    def consumer(self, name: str, roles: list[str], **kwargs: Any) -> str:
        async def work(service: IdentityService) -> str:
            consumer = await service.store.create_consumer(name, actor=ACTOR, roles=roles, **kwargs)
            return consumer.id

        result: str = run(self._with_service(work))
        return result

    def key(self, consumer_id: str, level: str, *, scopes: list[str] | None = None,
            ttl: timedelta | None = None, allowed_cidrs: list[str] | None = None) -> tuple[str, str]:
        async def work(service: IdentityService) -> tuple[str, str]:
            plaintext, record = await service.store.create_key(
                consumer_id, KeyLevel(level), actor=ACTOR, hasher=service.hasher, max_ttl=service.settings.max_ttl,
                ttl=ttl, scopes=scopes or (), allowed_cidrs=allowed_cidrs or ())
            return plaintext, record.key_id

        result: tuple[str, str] = run(self._with_service(work))
        return result

    def rotate(self, key_id: str, overlap: timedelta) -> tuple[str, str]:
        async def work(service: IdentityService) -> tuple[str, str]:
            plaintext, record = await service.store.rotate_key(
                key_id, actor=ACTOR, hasher=service.hasher, max_ttl=service.settings.max_ttl, overlap=overlap)
            return plaintext, record.key_id

        result: tuple[str, str] = run(self._with_service(work))
        return result

    def revoke(self, key_id: str) -> None:
        async def work(service: IdentityService) -> None:
            await service.store.revoke_key(key_id, actor=ACTOR)

        run(self._with_service(work))

    def set_consumer_status(self, consumer_id: str, status: str) -> None:
        async def work(service: IdentityService) -> None:
            await service.store.update_consumer(consumer_id, actor=ACTOR, status=status)

        run(self._with_service(work))


def shared_pepper_env(tmp: Path) -> str:
    """A pepper file two gateway nodes can share (several nodes must hash keys alike)."""
    path = tmp / "pepper"
    if not path.exists():
        path.write_bytes(os.urandom(32).hex().encode())
        path.chmod(0o600)
    return f"file:{path}"
