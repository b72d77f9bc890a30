"""The identity commands' LOCAL mode: the store named by the gateway configuration, opened in-process.

Every change is audited as ``cli:<os user>`` and announced afterwards, so running gateways drop cached keys
at once when Redis is configured (they also notice any change within a second by polling the audit log).
Disabling or deleting a consumer also revokes its OAuth clients' tokens: written to the revocation table the
gateways poll every second, and broadcast through Redis when configured.
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from bastion.admin import oauth_cutoff
from bastion.cli.backend import CliError, NotFoundError, Record, looks_like_id, root_cause, to_json
from bastion.config.loader import ConfigError, load_config
from bastion.identity.service import IdentityService, IdentitySettings, IdentitySetupError, identity_settings
from bastion.oauth.revocation import RevocationList
from bastion.oauth.server.store import OAuthStore
from bastion.storage.engine import DatabaseUrlError
from bastion.storage.identity_store import (
    ApiKeyRecord,
    AuditActor,
    ConsumerStatus,
    IdentityError,
    NotFound,
    StoreUnavailable,
)
from bastion.storage.migrate import current_revision, head_revision, migrate

_PAGE = 1000
_CONSUMER_FIELDS = frozenset({"name", "status", "roles", "admin_role", "metadata", "allowed_cidrs", "plan"})


def os_user() -> str:
    """The account running the command, from the process's uid rather than $USER, which anyone can set."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return f"uid-{os.geteuid()}" if hasattr(os, "geteuid") else "unknown"


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """Store and configuration failures as one-line, client-safe CLI errors."""
    try:
        yield
    except CliError:
        raise
    except ConfigError as exc:
        raise CliError("\n".join(str(issue) for issue in exc.issues), 2) from exc
    except NotFound as exc:
        raise NotFoundError(str(exc)) from exc
    except IdentityError as exc:
        raise CliError(str(exc)) from exc
    except StoreUnavailable as exc:
        raise CliError(f"the identity store is unavailable ({root_cause(exc)})") from exc
    except IdentitySetupError as exc:
        cause = f" ({root_cause(exc.__cause__)})" if exc.__cause__ is not None else ""
        raise CliError(f"{exc}{cause}") from exc
    except DatabaseUrlError as exc:
        raise CliError(str(exc), 2) from exc
    except SQLAlchemyError as exc:  # e.g. the schema check of prepare() on a database that does not exist
        raise CliError(f"the identity store is unavailable ({root_cause(exc)})") from exc


def load_settings(config_path: Path) -> IdentitySettings:
    """The identity settings exactly as the gateway derives them from the same file."""
    with translated_errors():
        config, _ = load_config(config_path)
        try:
            return identity_settings(config, config_path.resolve().parent)
        except IdentitySetupError as exc:
            raise CliError(str(exc), 2) from exc


def _ensure_sqlite_directory(url: str) -> None:
    # The gateway creates data_dir on its first start; `init` and `migrate` may well run before that.
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True, mode=0o700)


async def migrate_store(settings: IdentitySettings) -> tuple[str | None, str | None]:
    """Upgrade the store to the newest schema; returns (current, head) revisions."""
    with translated_errors():
        try:
            _ensure_sqlite_directory(settings.store_url)
            await migrate(settings.store_url)
            return await current_revision(settings.store_url), head_revision()
        except (CliError, DatabaseUrlError):
            raise
        except Exception as exc:  # driver errors: their text may quote the URL, so only the cause's kind
            raise CliError(f"the identity store cannot be migrated ({root_cause(exc)})") from exc


@contextlib.asynccontextmanager
async def open_local(config_path: Path, *, migrate_first: bool = False) -> AsyncIterator[LocalBackend]:
    settings = load_settings(config_path)
    if migrate_first:
        await migrate_store(settings)
    with translated_errors():
        try:
            service = IdentityService(settings)
        except OSError as exc:
            raise CliError(f"the identity store cannot be opened: {root_cause(exc)}") from exc
        backend: LocalBackend | None = None
        try:
            await service.prepare()
            backend = LocalBackend(service, AuditActor(f"cli:{os_user()}"[:200]))
            yield backend
        finally:
            if backend is not None:
                with contextlib.suppress(Exception):
                    await backend.revocations.close()
            with contextlib.suppress(Exception):
                await service.close()


class LocalBackend:
    def __init__(self, service: IdentityService, actor: AuditActor, *, oauth: OAuthStore | None = None,
                 revocations: RevocationList | None = None) -> None:
        self.service = service
        self.store = service.store
        self.actor = actor
        # The OAuth tables share the identity store's database; ``revocations`` only writes and broadcasts
        # here (it is never started, so it neither polls nor listens).
        self.oauth = oauth or OAuthStore(self.store.engine, service.hasher)
        self.revocations = revocations or RevocationList(self.oauth, redis_url=service.settings.redis_url)

    async def close(self) -> None:
        """Nothing to do: ``open_local`` closes the service."""

    # -- consumers -----------------------------------------------------------------------------------

    async def list_consumers(self) -> list[Record]:
        records: list[Record] = []
        after: str | None = None
        while True:
            page = await self.store.list_consumers(after_name=after, limit=_PAGE)
            records.extend(to_json(consumer) for consumer in page)
            if len(page) < _PAGE:
                return records
            after = page[-1].name

    async def find_consumer(self, ref: str) -> Record:
        consumer = await self.store.get_consumer(ref) if looks_like_id(ref) else None
        if consumer is None:
            consumer = await self.store.get_consumer_by_name(ref)
        if consumer is None:
            raise NotFoundError(f"no consumer with the name or id {ref!r}")
        result: Record = to_json(consumer)
        return result

    async def create_consumer(self, fields: Mapping[str, Any]) -> Record:
        extra = dict(fields)
        name = extra.pop("name")
        _check_fields(extra)
        consumer = await self.store.create_consumer(name, actor=self.actor, **extra)
        await self.service.announce_change(None)
        result: Record = to_json(consumer)
        return result

    async def update_consumer(self, consumer_id: str, changes: Mapping[str, Any]) -> Record:
        _check_fields(changes)
        consumer = await self.store.update_consumer(consumer_id, actor=self.actor, **changes)
        await self.service.announce_change(None)  # status, roles or CIDRs may change what its keys may do
        if "status" in changes and consumer.status is not ConsumerStatus.ACTIVE:
            await oauth_cutoff.cut_off_consumer(self.oauth, self.revocations, consumer.id)
        result: Record = to_json(consumer)
        return result

    async def delete_consumer(self, consumer_id: str) -> None:
        consumer = await self.store.get_consumer(consumer_id)
        if consumer is None:
            raise NotFoundError("no such consumer")
        await oauth_cutoff.delete_consumer(self.store, self.oauth, self.revocations, consumer, actor=self.actor)
        await self.service.announce_change(None)

    # -- roles ---------------------------------------------------------------------------------------

    async def list_roles(self) -> list[Record]:
        return [to_json(role) for role in await self.store.list_roles()]

    async def get_role(self, name: str) -> Record:
        role = await self.store.get_role(name)
        if role is None:
            raise NotFoundError("no such role")
        result: Record = to_json(role)
        return result

    async def put_role(self, name: str, permissions: Sequence[str], description: str) -> Record:
        role = await self.store.put_role(name, permissions, actor=self.actor, description=description)
        await self.service.announce_change(None)  # cached keys carry their consumer's permissions
        result: Record = to_json(role)
        return result

    async def delete_role(self, name: str) -> None:
        await self.store.delete_role(name, actor=self.actor)
        await self.service.announce_change(None)

    # -- keys ----------------------------------------------------------------------------------------

    async def create_key(self, consumer_id: str, level: str, *, scopes: Sequence[str], ttl_days: float | None,
                         allowed_cidrs: Sequence[str], description: str) -> Record:
        settings = self.service.settings
        ttl = timedelta(days=ttl_days) if ttl_days is not None else settings.default_ttl
        plaintext, record = await self.store.create_key(
            consumer_id, level, actor=self.actor, hasher=self.service.hasher, max_ttl=settings.max_ttl, ttl=ttl,
            scopes=scopes, allowed_cidrs=allowed_cidrs, description=description)
        # Gateways briefly remember unknown key ids; this lets the new key work at once.
        await self.service.announce_change(record.key_id)
        return {"key": plaintext, **_key_json(record)}

    async def list_keys(self, consumer_id: str | None) -> list[Record]:
        return [_key_json(key) for key in await self.store.list_keys(consumer_id)]

    async def get_key(self, key_id: str) -> Record:
        key = await self.store.get_key(key_id)
        if key is None:
            raise NotFoundError("no such key")
        return _key_json(key)

    async def rotate_key(self, key_id: str, overlap_hours: float | None, ttl_days: float | None) -> Record:
        settings = self.service.settings
        overlap = timedelta(hours=overlap_hours) if overlap_hours is not None else settings.rotation_overlap
        plaintext, successor = await self.store.rotate_key(
            key_id, actor=self.actor, hasher=self.service.hasher, max_ttl=settings.max_ttl, overlap=overlap,
            ttl=None if ttl_days is None else timedelta(days=ttl_days))
        await self.service.announce_change(key_id)  # the old key's expiry moved to the end of the overlap
        predecessor = await self.store.get_key(key_id)
        return {"key": plaintext, **_key_json(successor),
                "predecessor": None if predecessor is None else _key_json(predecessor)}

    async def revoke_key(self, key_id: str) -> Record:
        record = await self.store.revoke_key(key_id, actor=self.actor)
        await self.service.announce_change(key_id)
        return _key_json(record)

    # -- audit ---------------------------------------------------------------------------------------

    async def list_audit(self, after: int, limit: int) -> list[Record]:
        return [to_json(entry) for entry in await self.store.list_audit(after, limit)]

    async def verify_audit(self) -> Record:
        result: Record = to_json(await self.store.verify_audit_chain())
        return result


def _key_json(key: ApiKeyRecord) -> Record:
    """A key's record as the admin API shows it, with its ``state`` at this moment."""
    record: Record = to_json(key)
    return {**{name: record[name] for name in ("key_id", "consumer_id", "level")},
            "state": key.state(datetime.now(UTC)), **record}


def _check_fields(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - _CONSUMER_FIELDS
    if unknown:  # a programming error, not a user's: the commands build these dicts
        raise ValueError(f"unknown consumer fields: {sorted(unknown)}")
