"""Bootstrap admin callers for a running gateway by opening its identity store from the test process.

The gateway keeps its SQLite store and key pepper in its data directory; opening the same configuration
from here gives the same database and the same pepper, so keys created here work against the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from bastion.config.model import GatewayConfig
from bastion.identity.service import IdentityService, identity_settings
from bastion.storage.identity_store import AuditActor, Consumer, IdentityStore
from tests.support.processes import Gateway

T = TypeVar("T")
SETUP_ACTOR = AuditActor("test:setup")


class IdentityHandle:
    def __init__(self, gateway: Gateway) -> None:
        # Only what locates the store and the pepper: a test may have left an invalid config behind.
        source = gateway.config
        identity_part: dict[str, Any] = {name: source[name] for name in ("version", "store", "keys", "redis")
                                         if name in source}
        if "data_dir" in source.get("server", {}):
            identity_part["server"] = {"data_dir": source["server"]["data_dir"]}
        config = GatewayConfig.model_validate(identity_part)
        self.service = IdentityService(identity_settings(config, gateway.config_path.parent))
        self._runner = asyncio.Runner()  # one loop for the engine's connections

    def __enter__(self) -> IdentityHandle:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @property
    def store(self) -> IdentityStore:
        return self.service.store

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coroutine)

    def consumer(self, name: str, **fields: Any) -> Consumer:
        return self.run(self.store.create_consumer(name, actor=SETUP_ACTOR, **fields))

    def key(self, consumer_id: str, level: str = "admin", *, ttl: timedelta | None = None,
            clock: Callable[[], datetime] | None = None) -> tuple[str, str]:
        """(plaintext, key id). ``clock`` backdates the key (an expired key without waiting)."""
        store = self.store if clock is None else IdentityStore(self.store.engine, clock=clock)
        plaintext, record = self.run(store.create_key(
            consumer_id, level, actor=SETUP_ACTOR, hasher=self.service.hasher,
            max_ttl=self.service.settings.max_ttl, ttl=ttl))
        return plaintext, record.key_id

    def admin_key(self, name: str, admin_role: str = "admin", level: str = "admin") -> str:
        consumer = self.consumer(name, admin_role=admin_role)
        return self.key(consumer.id, level)[0]

    def role(self, name: str, permissions: list[str]) -> None:
        self.run(self.store.put_role(name, permissions, actor=SETUP_ACTOR))

    def latest_seq(self) -> int:
        return self.run(self.store.latest_audit_seq())

    def close(self) -> None:
        self.run(self.store.engine.dispose())
        self._runner.close()


_ADMIN_KEYS: dict[Path, str] = {}


def admin_headers(gateway: Gateway) -> dict[str, str]:
    """An `Authorization` header with an admin key for this gateway (created on first use)."""
    key = _ADMIN_KEYS.get(gateway.config_path)
    if key is None:
        with IdentityHandle(gateway) as handle:
            key = _ADMIN_KEYS[gateway.config_path] = handle.admin_key("test-admin")
    return {"Authorization": f"Bearer {key}"}
