"""Request and response bodies of the admin API.

Request models forbid unknown fields and are strict (no "5" for 5): a typo in a field name must fail, not
silently keep the old value. Value rules that the store enforces (name patterns, CIDR syntax, lifetimes)
stay in the store, so that the CLI and the API cannot disagree; the limits here only bound sizes early.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from bastion.storage.identity_store import ApiKeyRecord, AuditEntry, AuditVerification, Consumer, Role

AdminRoleName = Literal["admin", "operator", "auditor"]
StatusName = Literal["active", "disabled"]
LevelName = Literal["read", "write", "admin"]
KeyState = Literal["active", "expired", "revoked"]

_Names = Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=100)]
_Name = Annotated[str, Field(min_length=1, max_length=200)]
_Description = Annotated[str, Field(max_length=1000)]
_MAX_HOURS = 24 * 366
_MAX_DAYS = 100 * 366  # far above any sane keys.max_ttl_days, but a finite timedelta


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests ----------------------------------------------------------------------------------------------


class ConsumerCreate(RequestModel):
    """A new consumer (an application or person calling the APIs)."""

    name: _Name = Field(description="Unique, 1-200 printable characters.")
    roles: _Names = Field(default_factory=list, description="Gateway RBAC roles (must exist).")
    admin_role: AdminRoleName | None = Field(None, description="Role on this admin API; null for none. "
                                             "Only the `admin` role may grant one.")
    status: StatusName = "active"
    metadata: dict[str, JsonValue] = Field(default_factory=dict, description="Free JSON, at most 16 KiB.")
    allowed_cidrs: _Names = Field(default_factory=list, description="Client addresses the consumer's keys "
                                  "may be used from; empty for anywhere.")
    plan: _Name | None = Field(None, description="Rate-limit plan name.")


def without_defaults(schema: dict[str, Any]) -> None:
    """For PATCH bodies: their field defaults are never applied, so the schema must not claim them."""
    for field in schema.get("properties", {}).values():
        field.pop("default", None)


class ConsumerUpdate(RequestModel):
    """Only the fields present change (JSON merge semantics per field; null clears a nullable field)."""

    model_config = ConfigDict(json_schema_extra=without_defaults)

    # The defaults below are never applied (nor documented): the handler passes on only the fields sent.
    name: _Name = ""
    roles: _Names = Field(default_factory=list)
    admin_role: AdminRoleName | None = None
    status: StatusName = "active"
    metadata: dict[str, JsonValue] | None = None
    allowed_cidrs: _Names = Field(default_factory=list)
    plan: _Name | None = None


class RolePut(RequestModel):
    """The role's whole definition: PUT replaces the permissions and description."""

    permissions: _Names = Field(description="Permissions such as `orders:read`; `*` and `area:*` wildcards.")
    description: _Description = ""


class KeyCreate(RequestModel):
    consumer: _Name = Field(description="Consumer id or name.")
    level: LevelName = Field(description="What the key may do at most: read (GET/HEAD/OPTIONS only), write, "
                             "admin.")
    scopes: _Names = Field(default_factory=list, description="Narrow the consumer's permissions; empty for "
                           "all of them.")
    ttl_days: float | None = Field(None, gt=0, le=_MAX_DAYS, description="Lifetime in days; default "
                                   "`keys.default_ttl_days`, at most `keys.max_ttl_days`.")
    allowed_cidrs: _Names = Field(default_factory=list)
    description: _Description = ""


class KeyRotate(RequestModel):
    overlap_hours: float | None = Field(None, ge=0, le=_MAX_HOURS, description="How long the old key keeps "
                                        "working; default `keys.rotation_overlap_hours`.")
    ttl_days: float | None = Field(None, gt=0, le=_MAX_DAYS, description="The successor's lifetime; default the "
                                   "old key's original lifetime (capped at `keys.max_ttl_days`).")


# -- responses ---------------------------------------------------------------------------------------------


class ConsumerOut(ResponseModel):
    id: str
    name: str
    status: StatusName
    roles: list[str]
    admin_role: AdminRoleName | None
    metadata: dict[str, Any]
    allowed_cidrs: list[str]
    plan: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, consumer: Consumer) -> ConsumerOut:
        return cls(id=consumer.id, name=consumer.name, status=consumer.status.value, roles=list(consumer.roles),
                   admin_role=None if consumer.admin_role is None else consumer.admin_role.value,
                   metadata=consumer.metadata, allowed_cidrs=list(consumer.allowed_cidrs), plan=consumer.plan,
                   created_at=consumer.created_at, updated_at=consumer.updated_at)


class ConsumerPage(ResponseModel):
    items: list[ConsumerOut]
    next: str | None = Field(description="Pass as `after` for the next page; null on the last page.")


class RoleOut(ResponseModel):
    name: str
    permissions: list[str]
    description: str

    @classmethod
    def of(cls, role: Role) -> RoleOut:
        return cls(name=role.name, permissions=list(role.permissions), description=role.description)


class RoleList(ResponseModel):
    items: list[RoleOut]


class KeyOut(ResponseModel):
    """A key's record. It never holds the secret or its digest."""

    key_id: str
    consumer_id: str
    level: LevelName
    state: KeyState
    scopes: list[str]
    display_prefix: str
    description: str
    allowed_cidrs: list[str]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    predecessor_id: str | None
    successor_id: str | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, key: ApiKeyRecord, now: datetime) -> KeyOut:
        return cls(key_id=key.key_id, consumer_id=key.consumer_id, level=key.level.value, state=key.state(now),
                   scopes=list(key.scopes), display_prefix=key.display_prefix, description=key.description,
                   allowed_cidrs=list(key.allowed_cidrs), created_at=key.created_at, expires_at=key.expires_at,
                   revoked_at=key.revoked_at, predecessor_id=key.predecessor_id, successor_id=key.successor_id,
                   last_used_at=key.last_used_at)


class KeyList(ResponseModel):
    items: list[KeyOut]


class IssuedKey(KeyOut):
    """A new key's record with the key itself, which is shown this once: only a keyed hash is stored."""

    key: str = Field(description="The API key (shown once).")

    @classmethod
    def issued(cls, plaintext: str, key: ApiKeyRecord, now: datetime) -> IssuedKey:
        return cls(key=plaintext, **KeyOut.of(key, now).model_dump())


class RotatedKey(IssuedKey):
    """The successor (with its key, shown once) and the rotated key's new record."""

    predecessor: KeyOut = Field(description="The rotated key, now expiring at the end of the overlap.")


class AuditEntryOut(ResponseModel):
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

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryOut:
        return cls(seq=entry.seq, time=entry.time, actor=entry.actor, action=entry.action, target=entry.target,
                   client_ip=entry.client_ip, request_id=entry.request_id, before=entry.before, after=entry.after,
                   prev_hash=entry.prev_hash, hash=entry.hash)


class AuditPage(ResponseModel):
    items: list[AuditEntryOut]
    next: int | None = Field(description="Pass as `after` for the next page; null on the last page.")


class AuditVerificationOut(ResponseModel):
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str | None
    last_seq: int = Field(description="The chain's head: anchor it elsewhere to detect truncation.")
    last_hash: str

    @classmethod
    def of(cls, result: AuditVerification) -> AuditVerificationOut:
        return cls(ok=result.ok, checked=result.checked, first_bad_seq=result.first_bad_seq, reason=result.reason,
                   last_seq=result.last_seq, last_hash=result.last_hash)


class ReloadOut(ResponseModel):
    status: Literal["reloaded"]
    generation: int


class HealthOut(ResponseModel):
    status: Literal["ok"]


class UpstreamStatus(ResponseModel):
    healthy_targets: int
    targets: int


class ReadyOut(ResponseModel):
    ready: bool
    generation: int
    upstreams: dict[str, UpstreamStatus]
    listeners: dict[str, int]


class FieldError(ResponseModel):
    field: str = Field(description="Dotted path of the field in the request (empty for the whole body).")
    message: str


class Problem(ResponseModel):
    """RFC 9457 problem details, as every error of the gateway."""

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable error code, see the error reference.")
    request_id: str
    errors: list[FieldError] | list[str] | None = Field(None, description="Validation errors, when any.")
