"""What the identity commands need from a store, whether opened locally or reached through the admin API.

Records travel as JSON-shaped dicts with the admin API's field names, so both modes print the same thing.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

Record = dict[str, Any]


class CliError(Exception):
    """A failure to report as one line on stderr. The message is safe to show; ``exit_code`` is 1 for a
    refused or failed operation, 2 for a usage or configuration problem."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NotFoundError(CliError):
    """The consumer, role, key or OAuth client does not exist."""


class Backend(Protocol):
    async def list_consumers(self) -> list[Record]: ...

    async def find_consumer(self, ref: str) -> Record: ...

    async def create_consumer(self, fields: Mapping[str, Any]) -> Record: ...

    async def update_consumer(self, consumer_id: str, changes: Mapping[str, Any]) -> Record: ...

    async def delete_consumer(self, consumer_id: str) -> None: ...

    async def list_roles(self) -> list[Record]: ...

    async def get_role(self, name: str) -> Record: ...

    async def put_role(self, name: str, permissions: Sequence[str], description: str) -> Record: ...

    async def delete_role(self, name: str) -> None: ...

    async def create_key(self, consumer_id: str, level: str, *, scopes: Sequence[str], ttl_days: float | None,
                         allowed_cidrs: Sequence[str], description: str) -> Record:
        """The new key's record with its plaintext under ``key`` (shown once)."""
        ...

    async def list_keys(self, consumer_id: str | None) -> list[Record]: ...

    async def get_key(self, key_id: str) -> Record: ...

    async def rotate_key(self, key_id: str, overlap_hours: float | None, ttl_days: float | None) -> Record:
        """The successor's record with its plaintext under ``key``."""
        ...

    async def revoke_key(self, key_id: str) -> Record: ...

    async def list_audit(self, after: int, limit: int) -> list[Record]: ...

    async def verify_audit(self) -> Record: ...

    async def close(self) -> None: ...


class OAuthBackend(Protocol):
    """What the `bastion oauth` commands need, in either mode. Client records carry ``client_secret`` only in
    the answers of ``create_client`` and ``rotate_client_secret``."""

    async def find_consumer(self, ref: str) -> Record: ...

    async def list_consumers(self) -> list[Record]: ...

    async def create_client(self, consumer_id: str, *, name: str, kind: str, grant_types: Sequence[str],
                            scopes: Sequence[str], redirect_uris: Sequence[str]) -> Record: ...

    async def list_clients(self, consumer_id: str | None) -> list[Record]: ...

    async def get_client(self, client_id: str) -> Record: ...

    async def update_client(self, client_id: str, changes: Mapping[str, Any]) -> Record: ...

    async def rotate_client_secret(self, client_id: str, overlap_hours: float | None) -> Record: ...

    async def delete_client(self, client_id: str) -> None:
        """Deletes the client and revokes its tokens on every node."""
        ...

    async def list_signing_keys(self) -> list[Record]: ...

    async def rotate_signing_keys(self, emergency: bool) -> Record:
        """``{"active": key, "items": [every key]}`` after the rotation."""
        ...

    async def close(self) -> None: ...


def root_cause(exc: BaseException) -> str:
    """The innermost cause, as an operator may read it: an OS error's text, otherwise only the exception's
    type (a driver's message may quote a URL or a statement)."""
    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    return type(inner).__name__


def looks_like_id(ref: str) -> bool:
    """Consumer ids are UUIDs; anything else can only be a name."""
    try:
        uuid.UUID(ref)
    except ValueError:
        return False
    return True


def to_json(value: Any) -> Any:
    """A store DTO (dataclasses, enums, datetimes, tuples) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_json(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, Mapping):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def key_state(record: Mapping[str, Any], now: datetime) -> str:
    """``revoked``, ``expired``, ``rotated`` (still valid during the overlap) or ``active``."""
    if record.get("revoked_at"):
        return "revoked"
    expires = parse_time(record.get("expires_at"))
    if expires is not None and now >= expires:
        return "expired"
    return "rotated" if record.get("successor_id") else "active"
