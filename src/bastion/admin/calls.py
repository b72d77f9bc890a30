"""The pieces every admin endpoint module shares: the route declaration, what a handler gets (``Call``),
and the lookups and guards several resources need."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from bastion.admin import schemas
from bastion.admin.authn import Permission, audit_actor, is_admin
from bastion.admin.problems import AdminProblem
from bastion.admin.services import AdminServices, OAuthAdmin
from bastion.errors import codes
from bastion.identity.principal import Principal
from bastion.identity.service import IdentityService
from bastion.storage.identity_store import AuditActor, Consumer, IdentityStore, NotFound

PREFIX: Final = "/admin/v1"
JSON: Final = "application/json"
NO_STORE: Final = {"cache-control": "no-store"}
MAX_PAGE: Final = 1000
_PATH_PARAM = re.compile(r"\{(\w+)\}")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[["Call"], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class QueryParam:
    name: str
    description: str
    kind: Literal["string", "integer"] = "string"
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True, slots=True)
class AdminRoute:
    """One endpoint. ``permission`` None means public (probes, metrics, the API description)."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    permission: Permission | None
    handler: Handler
    status: int = 200
    request_model: type[schemas.RequestModel] | None = None
    response_model: type[BaseModel] | None = None
    query: tuple[QueryParam, ...] = ()
    media_type: str = JSON

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


@dataclass(slots=True)
class Call:
    """What a handler gets: the request, the runtime's services, the caller and the validated body."""

    request: Request
    services: AdminServices
    principal: Principal | None
    body: schemas.RequestModel | None

    @property
    def identity(self) -> IdentityService:
        if self.services.identity is None:
            raise AdminProblem(codes.ADMIN_STORE_UNAVAILABLE, headers={"retry-after": "1"})
        return self.services.identity

    @property
    def store(self) -> IdentityStore:
        return self.identity.store

    @property
    def oauth(self) -> OAuthAdmin:
        if self.services.oauth is None:
            raise AdminProblem(codes.ADMIN_STORE_UNAVAILABLE, headers={"retry-after": "1"})
        return self.services.oauth

    @property
    def caller(self) -> Principal:
        assert self.principal is not None, "authenticated routes only"
        return self.principal

    def actor(self) -> AuditActor:
        return audit_actor(self.caller, self.request)

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    def body_as(self, model: type[M]) -> M:
        assert isinstance(self.body, model), "the route table declares this model"
        return self.body

    def int_query(self, name: str, default: int, minimum: int, maximum: int) -> int:
        raw = self.request.query_params.get(name)
        if raw is None:
            return default
        if not re.fullmatch(r"[0-9]{1,12}", raw) or not minimum <= int(raw) <= maximum:
            message = f"must be an integer from {minimum} to {maximum}"
            raise AdminProblem(codes.ADMIN_INVALID_REQUEST, f"Query parameter {name!r} {message}.",
                               extra={"errors": [{"field": f"query.{name}", "message": message}]})
        return int(raw)


def json_response(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type=JSON, headers=headers)


def now() -> datetime:
    return datetime.now(UTC)


async def consumer_by_ref(call: Call, ref: str) -> Consumer:
    """By id, else by name: both are unique, and ids are UUIDs that names rarely look like."""
    consumer = await call.store.get_consumer(ref) or await call.store.get_consumer_by_name(ref)
    if consumer is None:
        raise NotFound("no such consumer")
    return consumer


def guard_admin_consumer(call: Call, consumer: Consumer) -> None:
    # Without this an operator could mint a credential for an admin consumer, or make itself admin.
    if consumer.admin_role is not None and not is_admin(call.caller):
        raise AdminProblem(codes.AUTHZ_PERMISSION_DENIED,
                           "Consumers that hold an admin role, and their credentials, are managed by admins only.")
