"""The admin REST API: one route table drives routing, authorization and the OpenAPI document.

Each ``AdminRoute`` names its method, path, required permission and models; the Starlette routes, the
permission check made before the handler runs, and ``/admin/v1/openapi.json`` are all derived from
``ROUTES``, so an endpoint cannot be served without being documented and checked, or the other way round.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from functools import cache
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion import __version__
from bastion.admin import oauth_cutoff, schemas
from bastion.admin.authn import Permission, authenticate, is_admin, roles_with
from bastion.admin.calls import (
    JSON,
    MAX_PAGE,
    NO_STORE,
    PREFIX,
    AdminRoute,
    Call,
    M,
    QueryParam,
    consumer_by_ref,
    guard_admin_consumer,
    json_response,
    now,
)
from bastion.admin.oauth_api import OAUTH_ROUTES, oauth_error_responses
from bastion.admin.problems import AdminProblem, problem
from bastion.admin.services import AdminServices
from bastion.errors import codes
from bastion.storage.identity_store import (
    UNSET,
    ApiKeyRecord,
    Conflict,
    ConsumerStatus,
    InvalidRequest,
    NotFound,
    StoreUnavailable,
)

log = logging.getLogger("bastion.admin")

__all__ = ["PREFIX", "ROUTES", "AdminRoute", "Call", "QueryParam", "openapi_document", "starlette_routes"]

_PROBLEM: Final = "application/problem+json"


# -- operations ----------------------------------------------------------------------------------------------


async def healthz(call: Call) -> Response:
    return JSONResponse({"status": "ok"}, headers=NO_STORE)


async def readyz(call: Call) -> Response:
    status = call.services.status()
    return JSONResponse(status, status_code=200 if status.get("ready") else 503, headers=NO_STORE)


async def metrics(call: Call) -> Response:
    call.services.status()  # refreshes the gauges that are computed on demand (healthy targets, connections)
    return Response(generate_latest(call.services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def openapi(call: Call) -> Response:
    return JSONResponse(openapi_document())


async def reload(call: Call) -> Response:
    log.warning("configuration reload requested by %s over the admin API", call.actor().actor)
    result = await call.services.reload()
    if not result.ok:
        raise AdminProblem(codes.CONFIG_INVALID,
                           f"{len(result.issues)} problem(s) in the new configuration; still serving "
                           f"generation {result.generation}.", extra={"errors": result.issues})
    return json_response(schemas.ReloadOut(status="reloaded", generation=result.generation))


# -- consumers -----------------------------------------------------------------------------------------------


def _guard_grant(call: Call, admin_role: str | None) -> None:
    if admin_role is not None and not is_admin(call.caller):
        raise AdminProblem(codes.AUTHZ_PERMISSION_DENIED, "Only the admin role may grant an admin role.")


async def list_consumers(call: Call) -> Response:
    limit = call.int_query("limit", 100, 1, MAX_PAGE)
    items = await call.store.list_consumers(after_name=call.request.query_params.get("after"), limit=limit)
    cursor = items[-1].name if len(items) == limit else None
    return json_response(schemas.ConsumerPage(items=[schemas.ConsumerOut.of(c) for c in items], next=cursor))


async def create_consumer(call: Call) -> Response:
    body = call.body_as(schemas.ConsumerCreate)
    _guard_grant(call, body.admin_role)
    consumer = await call.store.create_consumer(
        body.name, actor=call.actor(), roles=body.roles, admin_role=body.admin_role, status=body.status,
        metadata=body.metadata, allowed_cidrs=body.allowed_cidrs, plan=body.plan)
    await call.identity.announce_change(None)
    return json_response(schemas.ConsumerOut.of(consumer), 201, {"location": f"{PREFIX}/consumers/{consumer.id}"})


async def get_consumer(call: Call) -> Response:
    return json_response(schemas.ConsumerOut.of(await consumer_by_ref(call, call.param("consumer"))))


async def update_consumer(call: Call) -> Response:
    body = call.body_as(schemas.ConsumerUpdate)
    consumer = await consumer_by_ref(call, call.param("consumer"))
    guard_admin_consumer(call, consumer)
    sent = body.model_fields_set

    def given(field: str) -> Any:
        return getattr(body, field) if field in sent else UNSET

    if "admin_role" in sent:
        _guard_grant(call, body.admin_role)
    updated = await call.store.update_consumer(
        consumer.id, actor=call.actor(), name=given("name"), status=given("status"), roles=given("roles"),
        admin_role=given("admin_role"), metadata=given("metadata"), allowed_cidrs=given("allowed_cidrs"),
        plan=given("plan"))
    await call.identity.announce_change(None)  # status, roles and CIDRs are cached with each of its keys
    oauth = call.services.oauth
    if "status" in sent and updated.status is not ConsumerStatus.ACTIVE and oauth is not None:
        # Its clients' access tokens are JWTs that would otherwise work until they expire.
        await oauth_cutoff.cut_off_consumer(oauth.store, oauth.revocations, updated.id)
    return json_response(schemas.ConsumerOut.of(updated))


async def delete_consumer(call: Call) -> Response:
    consumer = await consumer_by_ref(call, call.param("consumer"))
    guard_admin_consumer(call, consumer)
    oauth = call.services.oauth
    if oauth is None:
        await call.store.delete_consumer(consumer.id, actor=call.actor())
    else:
        await oauth_cutoff.delete_consumer(call.store, oauth.store, oauth.revocations, consumer, actor=call.actor())
    await call.identity.announce_change(None)
    return Response(status_code=204)


# -- roles ---------------------------------------------------------------------------------------------------


async def list_roles(call: Call) -> Response:
    roles = await call.store.list_roles()
    return json_response(schemas.RoleList(items=[schemas.RoleOut.of(r) for r in roles]))


async def get_role(call: Call) -> Response:
    role = await call.store.get_role(call.param("name"))
    if role is None:
        raise NotFound("no such role")
    return json_response(schemas.RoleOut.of(role))


async def put_role(call: Call) -> Response:
    body = call.body_as(schemas.RolePut)
    role = await call.store.put_role(call.param("name"), body.permissions, actor=call.actor(),
                                     description=body.description)
    await call.identity.announce_change(None)  # permissions are cached with every key of its holders
    return json_response(schemas.RoleOut.of(role))


async def delete_role(call: Call) -> Response:
    await call.store.delete_role(call.param("name"), actor=call.actor())
    await call.identity.announce_change(None)
    return Response(status_code=204)


# -- keys ----------------------------------------------------------------------------------------------------


async def _key(call: Call) -> ApiKeyRecord:
    key = await call.store.get_key(call.param("key_id"))
    if key is None:
        raise NotFound("no such key")
    return key


async def _guard_key_owner(call: Call, key: ApiKeyRecord) -> None:
    consumer = await call.store.get_consumer(key.consumer_id)
    if consumer is not None:
        guard_admin_consumer(call, consumer)


async def list_keys(call: Call) -> Response:
    limit = call.int_query("limit", MAX_PAGE, 1, MAX_PAGE)
    ref = call.request.query_params.get("consumer")
    consumer_id = None if ref is None else (await consumer_by_ref(call, ref)).id
    keys = await call.store.list_keys(consumer_id, limit=limit)
    moment = now()
    return json_response(schemas.KeyList(items=[schemas.KeyOut.of(k, moment) for k in keys]), headers=NO_STORE)


async def create_key(call: Call) -> Response:
    body = call.body_as(schemas.KeyCreate)
    try:
        consumer = await consumer_by_ref(call, body.consumer)
    except NotFound:
        raise InvalidRequest("no such consumer") from None  # a bad field, not a missing URL resource
    guard_admin_consumer(call, consumer)
    settings = call.identity.settings
    ttl = settings.default_ttl if body.ttl_days is None else timedelta(days=body.ttl_days)
    plaintext, record = await call.store.create_key(
        consumer.id, body.level, actor=call.actor(), hasher=call.identity.hasher, max_ttl=settings.max_ttl,
        ttl=ttl, scopes=body.scopes, allowed_cidrs=body.allowed_cidrs, description=body.description)
    await call.identity.announce_change(record.key_id)
    issued = schemas.IssuedKey.issued(plaintext, record, now())
    return json_response(issued, 201, {**NO_STORE, "location": f"{PREFIX}/keys/{record.key_id}"})


async def get_key(call: Call) -> Response:
    return json_response(schemas.KeyOut.of(await _key(call), now()), headers=NO_STORE)


async def rotate_key(call: Call) -> Response:
    body = call.body_as(schemas.KeyRotate)
    old = await _key(call)
    await _guard_key_owner(call, old)
    settings = call.identity.settings
    overlap = settings.rotation_overlap if body.overlap_hours is None else timedelta(hours=body.overlap_hours)
    ttl = None if body.ttl_days is None else timedelta(days=body.ttl_days)
    plaintext, successor = await call.store.rotate_key(
        old.key_id, actor=call.actor(), hasher=call.identity.hasher, max_ttl=settings.max_ttl, overlap=overlap,
        ttl=ttl)
    await call.identity.announce_change(old.key_id)  # its expiry moved to the end of the overlap
    predecessor = await call.store.get_key(old.key_id) or old
    moment = now()
    rotated = schemas.RotatedKey(**schemas.IssuedKey.issued(plaintext, successor, moment).model_dump(),
                                 predecessor=schemas.KeyOut.of(predecessor, moment))
    return json_response(rotated, 201, {**NO_STORE, "location": f"{PREFIX}/keys/{successor.key_id}"})


async def revoke_key(call: Call) -> Response:
    key = await _key(call)
    await _guard_key_owner(call, key)
    revoked = await call.store.revoke_key(key.key_id, actor=call.actor())
    await call.identity.announce_change(key.key_id)
    return json_response(schemas.KeyOut.of(revoked, now()), headers=NO_STORE)


# -- audit ---------------------------------------------------------------------------------------------------


async def list_audit(call: Call) -> Response:
    after = call.int_query("after", 0, 0, 10**12)
    limit = call.int_query("limit", 100, 1, MAX_PAGE)
    entries = await call.store.list_audit(after, limit)
    cursor = entries[-1].seq if len(entries) == limit else None
    return json_response(schemas.AuditPage(items=[schemas.AuditEntryOut.of(e) for e in entries], next=cursor))


async def verify_audit(call: Call) -> Response:
    return json_response(schemas.AuditVerificationOut.of(await call.store.verify_audit_chain()))


# -- the table -----------------------------------------------------------------------------------------------

_LIMIT = QueryParam("limit", "Page size (1-1000).", "integer", 1, MAX_PAGE)
P = Permission

ROUTES: Final[tuple[AdminRoute, ...]] = (
    AdminRoute("GET", "/healthz", "healthz", "Liveness: the process is up.", "operations", None, healthz,
               response_model=schemas.HealthOut),
    AdminRoute("GET", "/readyz", "readyz", "Readiness: 200 while serving, 503 while draining.", "operations", None,
               readyz, response_model=schemas.ReadyOut),
    AdminRoute("GET", "/metrics", "metrics", "Prometheus metrics (text exposition format).", "operations", None,
               metrics, media_type="text/plain"),
    AdminRoute("GET", f"{PREFIX}/openapi.json", "openapi", "This API's OpenAPI 3.1 description.", "operations",
               None, openapi),
    AdminRoute("POST", f"{PREFIX}/reload", "reload", "Reload the configuration file (atomically, or not at all).",
               "operations", P.CONFIG_RELOAD, reload, response_model=schemas.ReloadOut),
    AdminRoute("GET", f"{PREFIX}/consumers", "listConsumers", "List consumers by name.", "consumers",
               P.CONSUMERS_READ, list_consumers, response_model=schemas.ConsumerPage,
               query=(QueryParam("after", "Last name of the previous page."), _LIMIT)),
    AdminRoute("POST", f"{PREFIX}/consumers", "createConsumer", "Create a consumer.", "consumers",
               P.CONSUMERS_WRITE, create_consumer, 201, schemas.ConsumerCreate, schemas.ConsumerOut),
    AdminRoute("GET", f"{PREFIX}/consumers/{{consumer}}", "getConsumer", "Show a consumer (by id or name).",
               "consumers", P.CONSUMERS_READ, get_consumer, response_model=schemas.ConsumerOut),
    AdminRoute("PATCH", f"{PREFIX}/consumers/{{consumer}}", "updateConsumer",
               "Change some of a consumer's fields (disabling it revokes its OAuth clients' tokens).", "consumers",
               P.CONSUMERS_WRITE, update_consumer, 200, schemas.ConsumerUpdate, schemas.ConsumerOut),
    AdminRoute("DELETE", f"{PREFIX}/consumers/{{consumer}}", "deleteConsumer",
               "Delete a consumer with its keys and OAuth clients (their tokens are revoked first, on every node).",
               "consumers", P.CONSUMERS_WRITE, delete_consumer, 204),
    AdminRoute("GET", f"{PREFIX}/roles", "listRoles", "List RBAC roles.", "roles", P.ROLES_READ, list_roles,
               response_model=schemas.RoleList),
    AdminRoute("GET", f"{PREFIX}/roles/{{name}}", "getRole", "Show a role.", "roles", P.ROLES_READ, get_role,
               response_model=schemas.RoleOut),
    AdminRoute("PUT", f"{PREFIX}/roles/{{name}}", "putRole", "Create a role or replace its definition.", "roles",
               P.ROLES_WRITE, put_role, 200, schemas.RolePut, schemas.RoleOut),
    AdminRoute("DELETE", f"{PREFIX}/roles/{{name}}", "deleteRole", "Delete a role no consumer holds.", "roles",
               P.ROLES_WRITE, delete_role, 204),
    AdminRoute("GET", f"{PREFIX}/keys", "listKeys", "List API keys, newest first.", "keys", P.KEYS_READ,
               list_keys, response_model=schemas.KeyList,
               query=(QueryParam("consumer", "Only this consumer's keys (id or name)."), _LIMIT)),
    AdminRoute("POST", f"{PREFIX}/keys", "createKey", "Issue an API key (its secret is shown once).", "keys",
               P.KEYS_WRITE, create_key, 201, schemas.KeyCreate, schemas.IssuedKey),
    AdminRoute("GET", f"{PREFIX}/keys/{{key_id}}", "getKey", "Show a key's record.", "keys", P.KEYS_READ, get_key,
               response_model=schemas.KeyOut),
    AdminRoute("POST", f"{PREFIX}/keys/{{key_id}}/rotate", "rotateKey",
               "Issue a successor; the old key keeps working for the overlap.", "keys", P.KEYS_WRITE, rotate_key,
               201, schemas.KeyRotate, schemas.RotatedKey),
    AdminRoute("POST", f"{PREFIX}/keys/{{key_id}}/revoke", "revokeKey", "Revoke a key now.", "keys", P.KEYS_WRITE,
               revoke_key, response_model=schemas.KeyOut),
    *OAUTH_ROUTES,
    AdminRoute("GET", f"{PREFIX}/audit", "listAudit", "Audit log entries, oldest first.", "audit", P.AUDIT_READ,
               list_audit, response_model=schemas.AuditPage,
               query=(QueryParam("after", "Entries after this sequence number.", "integer", 0), _LIMIT)),
    AdminRoute("GET", f"{PREFIX}/audit/verify", "verifyAudit", "Re-compute the audit log's hash chain.", "audit",
               P.AUDIT_READ, verify_audit, response_model=schemas.AuditVerificationOut),
)


# -- serving -------------------------------------------------------------------------------------------------


async def _read_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if raw.strip():
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != JSON:
            raise AdminProblem(codes.ADMIN_UNSUPPORTED_MEDIA_TYPE, "Send the body as 'application/json'.")
    else:
        raw = b"{}"  # lets bodies whose fields are all optional be left out; others name what is missing
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        if any(error["type"] == "json_invalid" for error in errors):
            raise AdminProblem(codes.ADMIN_INVALID_JSON, "The body is not valid JSON.") from None
        fields = [{"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
                  for error in errors]
        raise AdminProblem(codes.ADMIN_INVALID_REQUEST, f"{len(fields)} problem(s) in the request body.",
                           extra={"errors": fields}) from None


def _sentence(exc: Exception) -> str:
    """The store's client-safe message as a sentence (without lowering names it quotes)."""
    text = str(exc)
    return text[:1].upper() + text[1:] + "."


async def _serve(route: AdminRoute, services: AdminServices, request: Request) -> Response:
    try:
        principal = None
        if route.permission is not None:  # authenticate before reading the body: strangers learn nothing
            principal = await authenticate(request, services.identity, route.permission, services.failed_auth)
        body = None if route.request_model is None else await _read_body(request, route.request_model)
        response = await route.handler(Call(request, services, principal, body))
    except AdminProblem as exc:
        return problem(request, exc.code, exc.detail, exc.extra, services.docs_base(), exc.headers)
    except NotFound as exc:
        return problem(request, codes.ADMIN_RESOURCE_NOT_FOUND, _sentence(exc), None, services.docs_base())
    except Conflict as exc:
        return problem(request, codes.ADMIN_CONFLICT, _sentence(exc), None, services.docs_base())
    except InvalidRequest as exc:
        return problem(request, codes.ADMIN_INVALID_REQUEST, _sentence(exc),
                       {"errors": [{"field": "", "message": str(exc)}]}, services.docs_base())
    except StoreUnavailable:
        log.exception("identity store unavailable during admin request %s",
                      request.scope.get("state", {}).get("request_id"))
        return problem(request, codes.ADMIN_STORE_UNAVAILABLE, None, None, services.docs_base(),
                       {"retry-after": "1"})
    if route.permission is not None:
        response.headers["cache-control"] = "no-store"  # admin data never sits in a shared cache
    return response


def starlette_routes(services: AdminServices) -> list[Route]:
    """One Starlette route per path, dispatching on the method, so a 405 lists every allowed method."""
    by_path: dict[str, dict[str, AdminRoute]] = {}
    for route in ROUTES:
        by_path.setdefault(route.path, {})[route.method] = route

    def endpoint_for(methods: dict[str, AdminRoute]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await _serve(methods[method], services, request)
        return endpoint

    return [Route(path, endpoint_for(methods), methods=list(methods)) for path, methods in by_path.items()]


# -- OpenAPI -------------------------------------------------------------------------------------------------

_Refs = Mapping[tuple[Any, JsonSchemaMode], dict[str, Any]]
_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearerAuth": []}, {"apiKeyHeader": []}]


def _error_responses(route: AdminRoute) -> dict[int, list[str]]:
    errors: dict[int, list[str]] = {}

    def add(status: int, text: str) -> None:
        errors.setdefault(status, []).append(text)

    if route.permission is not None:
        add(400, "`auth.credentials_in_query`: a credential in the query string.")
        add(401, "`auth.credentials_missing` / `auth.credentials_invalid`: no valid admin-level key.")
        add(403, f"`authz.permission_denied`: the caller's admin role lacks `{route.permission.value}`.")
        if route.permission in (Permission.CONSUMERS_WRITE, Permission.KEYS_WRITE, Permission.OAUTH_CLIENTS_WRITE):
            add(403, "Also when a non-admin targets a consumer holding an admin role (or its keys or clients), or "
                "grants one.")
        add(503, "`auth.unavailable` / `admin.store_unavailable`: the identity store cannot be reached.")
    if route.request_model is not None:
        add(400, "`admin.invalid_json`: the body is not JSON.")
        add(415, "`admin.unsupported_media_type`: the body is not `application/json`.")
    if route.path_params:
        add(404, "`admin.resource_not_found`: no such resource.")
    if route.method != "GET" and route.tag not in ("operations",):
        add(409, "`admin.conflict`: the change conflicts with existing data.")
        add(422, "`admin.invalid_request`: a field or the resource's state refuses the change.")
    elif route.query:
        add(422, "`admin.invalid_request`: a query parameter is out of range.")
    if route.operation_id == "reload":
        add(422, "`config.invalid`: the new configuration is invalid; the running one keeps serving.")
    if route.operation_id == "readyz":
        add(503, "Not ready (draining); the body is the same status document.")
    for status, text in oauth_error_responses(route):
        add(status, text)
    return errors


def _operation(route: AdminRoute, refs: _Refs, problem_ref: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary, "tags": [route.tag]}
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in route.path_params]
    for query in route.query:
        schema: dict[str, Any] = {"type": query.kind}
        if query.minimum is not None:
            schema["minimum"] = query.minimum
        if query.maximum is not None:
            schema["maximum"] = query.maximum
        parameters.append({"name": query.name, "in": "query", "required": False, "description": query.description,
                           "schema": schema})
    if parameters:
        operation["parameters"] = parameters
    if route.request_model is not None:
        required = any(field.is_required() for field in route.request_model.model_fields.values())
        operation["requestBody"] = {"required": required, "content": {
            JSON: {"schema": refs[(route.request_model, "validation")]}}}
    success: dict[str, Any] = {"description": route.summary}
    if route.response_model is not None:
        success["content"] = {route.media_type: {"schema": refs[(route.response_model, "serialization")]}}
    elif route.status != 204:
        success["content"] = {route.media_type: {"schema": {"type": "string" if route.media_type != JSON
                                                            else "object"}}}
    responses: dict[str, Any] = {str(route.status): success}
    for status, texts in sorted(_error_responses(route).items()):
        responses[str(status)] = {"description": " ".join(texts), "content": {_PROBLEM: {"schema": problem_ref}}}
    operation["responses"] = responses
    if route.permission is None:
        operation["security"] = []
    else:
        operation["security"] = _SECURITY
        operation["x-required-permission"] = route.permission.value
        operation["x-admin-roles"] = roles_with(route.permission)
    return operation


@cache
def openapi_document() -> dict[str, Any]:
    """Built once from ``ROUTES``; the models' JSON Schemas become ``components.schemas``."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(schemas.Problem, "serialization")]
    for route in ROUTES:
        if route.request_model is not None:
            wanted.append((route.request_model, "validation"))
        if route.response_model is not None:
            wanted.append((route.response_model, "serialization"))
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template="#/components/schemas/{model}")
    problem_ref = refs[(schemas.Problem, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs, problem_ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Bastion admin API", "version": __version__,
            "description": "Served on the admin listener. Every `/admin/v1/` operation except this document "
                           "needs an admin-level API key whose consumer holds an admin role (`x-admin-roles` "
                           "lists the roles allowed); errors are RFC 9457 problem+json.",
        },
        "tags": [{"name": name} for name in ("operations", "consumers", "roles", "keys", "oauth-clients",
                                             "signing-keys", "audit")],
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
