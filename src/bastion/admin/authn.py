"""Who may call the admin API, and what each admin role may do.

A caller presents an admin-level API key whose consumer holds an admin role. Every way a key can be
wrong, including a valid key of a lower level, gets the same 401 (no oracle: the reason goes to the log);
only a valid admin-level key learns, with a 403, that its role does not cover the operation. An address that
sends many invalid credentials is refused with 429 for a while (the brake of the authentication policies),
before any credential work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from starlette.requests import Request

from bastion.admin.problems import AdminProblem
from bastion.errors import codes
from bastion.identity.authenticator import AuthFailure
from bastion.identity.principal import Principal
from bastion.identity.service import IdentityService
from bastion.policies.failed_auth import FailedAuthBrake
from bastion.policies.key_auth.policy import credentials_in_query
from bastion.storage.identity_store import AdminRole, AuditActor, StoreUnavailable

log = logging.getLogger("bastion.admin")

_CHALLENGE = 'Bearer realm="bastion-admin"'
_MAX_ACTOR = 200  # the audit log's limit for the actor field


class Permission(StrEnum):
    CONSUMERS_READ = "consumers:read"
    CONSUMERS_WRITE = "consumers:write"
    ROLES_READ = "roles:read"
    ROLES_WRITE = "roles:write"
    KEYS_READ = "keys:read"
    KEYS_WRITE = "keys:write"
    AUDIT_READ = "audit:read"
    CONFIG_RELOAD = "config:reload"
    OAUTH_CLIENTS_READ = "oauth_clients:read"
    OAUTH_CLIENTS_WRITE = "oauth_clients:write"
    SIGNING_KEYS_READ = "signing_keys:read"
    SIGNING_KEYS_ROTATE = "signing_keys:rotate"


ROLE_PERMISSIONS: Final[Mapping[AdminRole, frozenset[Permission]]] = {
    AdminRole.ADMIN: frozenset(Permission),
    # Operators manage OAuth clients as they manage API keys, and rotate signing keys as they reload the
    # configuration: routine work that cannot widen anyone's permissions.
    AdminRole.OPERATOR: frozenset({
        Permission.CONSUMERS_READ, Permission.CONSUMERS_WRITE, Permission.KEYS_READ, Permission.KEYS_WRITE,
        Permission.ROLES_READ, Permission.CONFIG_RELOAD, Permission.OAUTH_CLIENTS_READ,
        Permission.OAUTH_CLIENTS_WRITE, Permission.SIGNING_KEYS_READ, Permission.SIGNING_KEYS_ROTATE,
    }),
    AdminRole.AUDITOR: frozenset({
        Permission.CONSUMERS_READ, Permission.ROLES_READ, Permission.KEYS_READ, Permission.AUDIT_READ,
        Permission.OAUTH_CLIENTS_READ, Permission.SIGNING_KEYS_READ,
    }),
}


def roles_with(permission: Permission) -> list[str]:
    return [role.value for role, granted in ROLE_PERMISSIONS.items() if permission in granted]


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


def client_ip(request: Request) -> str:
    client = request.scope.get("client")
    return str(client[0]) if client else "-"


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    value = request.headers.get("x-api-key", "").strip()
    return value or None


async def _refuse(request: Request, brake: FailedAuthBrake | None, reason: str, key_id: str | None) -> AdminProblem:
    log.warning("admin API: credential refused (%s%s) from %s, request %s", reason,
                f", key {key_id}" if key_id else "", client_ip(request), request_id(request))
    if brake is not None:
        await brake.count_failure(client_ip(request), time.monotonic())
    return AdminProblem(codes.AUTH_CREDENTIALS_INVALID, "The credential was not accepted.",
                        headers={"www-authenticate": _CHALLENGE + ', error="invalid_token"'})


async def authenticate(request: Request, identity: IdentityService | None, permission: Permission,
                       brake: FailedAuthBrake | None = None) -> Principal:
    """The calling principal, or an ``AdminProblem`` (400, 401, 403, 429 or 503) to answer instead."""
    if brake is not None:
        blocked = brake.refusal(client_ip(request), time.monotonic)
        if blocked is not None:
            raise AdminProblem(blocked.code, blocked.detail, headers=blocked.headers)
    if credentials_in_query(request.url.query):
        raise AdminProblem(codes.AUTH_CREDENTIALS_IN_QUERY,
                           "Credentials are never accepted in the URL. Send the API key in the "
                           "'Authorization: Bearer <key>' or 'X-API-Key' header, and revoke the exposed key.")
    presented = presented_key(request)
    if presented is None:
        raise AdminProblem(codes.AUTH_CREDENTIALS_MISSING,
                           "Send an admin-level API key in the 'Authorization: Bearer <key>' or 'X-API-Key' "
                           "header.", headers={"www-authenticate": _CHALLENGE})
    if identity is None:
        raise AdminProblem(codes.AUTH_UNAVAILABLE, "Credentials cannot be checked right now.",
                           headers={"retry-after": "1"})
    try:
        result = await identity.authenticator.authenticate(presented, client_ip(request))
    except StoreUnavailable:
        log.error("identity store unavailable: refusing admin request %s", request_id(request))
        raise AdminProblem(codes.AUTH_UNAVAILABLE, "Credentials cannot be checked right now; retry shortly.",
                           headers={"retry-after": "1"}) from None
    if isinstance(result, AuthFailure):
        raise await _refuse(request, brake, result.reason, result.key_id)
    if result.level != "admin":
        raise await _refuse(request, brake, f"{result.level}-level key on the admin API", result.credential_id)
    role = AdminRole(result.admin_role) if result.admin_role else None
    if role is None or permission not in ROLE_PERMISSIONS[role]:
        log.warning("admin API: %s (admin role %s) denied %s, request %s", actor_name(result),
                    role.value if role else "none", permission.value, request_id(request))
        detail = (f"The admin role {role.value!r} does not include {permission.value!r}." if role
                  else "The key's consumer has no admin role.")
        raise AdminProblem(codes.AUTHZ_PERMISSION_DENIED, detail)
    return result


def actor_name(principal: Principal) -> str:
    name = f"consumer:{principal.consumer_name}"
    # A consumer name may be as long as the audit field itself: fall back to the id, which always fits.
    return name if len(name) <= _MAX_ACTOR else f"consumer:{principal.consumer_id}"


def audit_actor(principal: Principal, request: Request) -> AuditActor:
    return AuditActor(actor_name(principal), client_ip(request), request_id(request))


def is_admin(principal: Principal) -> bool:
    return principal.admin_role == AdminRole.ADMIN.value
