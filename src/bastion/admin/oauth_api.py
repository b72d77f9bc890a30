"""Admin endpoints of the built-in authorization server: OAuth clients and signing keys.

Clients may be registered while `oauth.server.enabled` is off (so that they exist when it is switched on);
the signing keys exist only while the server runs, so their routes answer `404 admin.resource_not_found`
without it. Every change is audited by the OAuth store in the same transaction; secrets are in the answer
of the request that made them and nowhere else.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

from starlette.responses import Response

from bastion.admin import oauth_cutoff
from bastion.admin.authn import Permission
from bastion.admin.calls import (
    MAX_PAGE,
    NO_STORE,
    PREFIX,
    AdminRoute,
    Call,
    QueryParam,
    consumer_by_ref,
    guard_admin_consumer,
    json_response,
)
from bastion.admin.oauth_schemas import (
    IssuedOAuthClient,
    OAuthClientCreate,
    OAuthClientList,
    OAuthClientOut,
    OAuthClientUpdate,
    OAuthSecretRotate,
    RotatedClientSecret,
    SigningKeyList,
    SigningKeyOut,
    SigningKeyRotate,
    SigningKeyRotation,
)
from bastion.admin.problems import AdminProblem
from bastion.admin.services import signing_key_retention
from bastion.errors import codes
from bastion.oauth.server.keys import SigningKeys
from bastion.oauth.server.store import ClientKind, OAuthClient
from bastion.storage.identity_store import InvalidRequest, NotFound

CLIENTS: Final = f"{PREFIX}/oauth/clients"
SIGNING_KEYS: Final = f"{PREFIX}/oauth/signing-keys"
SERVER_DISABLED: Final = ("The built-in authorization server is not enabled (oauth.server.enabled), so it has no "
                          "signing keys.")


async def _client(call: Call) -> OAuthClient:
    client = await call.oauth.store.get_client(call.param("client_id"))
    if client is None:
        raise NotFound("no such OAuth client")
    return client


async def _guard_client_owner(call: Call, client: OAuthClient) -> None:
    # A client's tokens carry its consumer's permissions: an admin consumer's clients are for admins only.
    consumer = await call.store.get_consumer(client.consumer_id)
    if consumer is not None:
        guard_admin_consumer(call, consumer)


def _signing_keys(call: Call) -> SigningKeys:
    keys = call.oauth.signing_keys
    if keys is None:
        raise AdminProblem(codes.ADMIN_RESOURCE_NOT_FOUND, SERVER_DISABLED)
    return keys


# -- clients -------------------------------------------------------------------------------------------------


async def list_clients(call: Call) -> Response:
    limit = call.int_query("limit", MAX_PAGE, 1, MAX_PAGE)
    ref = call.request.query_params.get("consumer")
    consumer_id = None if ref is None else (await consumer_by_ref(call, ref)).id
    clients = await call.oauth.store.list_clients(consumer_id, limit=limit)
    return json_response(OAuthClientList(items=[OAuthClientOut.of(c) for c in clients]))


async def create_client(call: Call) -> Response:
    body = call.body_as(OAuthClientCreate)
    oauth = call.oauth
    try:
        consumer = await consumer_by_ref(call, body.consumer)
    except NotFound:
        raise InvalidRequest("no such consumer") from None  # a bad field, not a missing URL resource
    guard_admin_consumer(call, consumer)
    client, secret = await oauth.store.create_client(
        consumer_id=consumer.id, name=body.name, kind=ClientKind(body.kind), grant_types=body.grant_types,
        scopes=body.scopes, redirect_uris=body.redirect_uris, actor=call.actor())
    return json_response(IssuedOAuthClient.issued(client, secret), 201,
                         {**NO_STORE, "location": f"{CLIENTS}/{client.client_id}"})


async def get_client(call: Call) -> Response:
    return json_response(OAuthClientOut.of(await _client(call)))


async def update_client(call: Call) -> Response:
    body = call.body_as(OAuthClientUpdate)
    client = await _client(call)
    await _guard_client_owner(call, client)
    sent = body.model_fields_set
    updated = await call.oauth.store.update_client(
        client.client_id, actor=call.actor(),
        name=body.name if "name" in sent else None,
        grant_types=body.grant_types if "grant_types" in sent else None,
        scopes=body.scopes if "scopes" in sent else None,
        redirect_uris=body.redirect_uris if "redirect_uris" in sent else None,
        status=body.status if "status" in sent else None)
    if "status" in sent and updated.status == "disabled":
        # Disabling stops new tokens; the access tokens it holds are JWTs that would work until they expire.
        oauth = call.oauth
        await oauth_cutoff.cut_off_client(oauth.store, oauth.revocations, updated.client_id)
    return json_response(OAuthClientOut.of(updated))


async def rotate_client_secret(call: Call) -> Response:
    body = call.body_as(OAuthSecretRotate)
    client = await _client(call)
    await _guard_client_owner(call, client)
    overlap = (call.identity.settings.rotation_overlap if body.overlap_hours is None
               else timedelta(hours=body.overlap_hours))
    rotated, secret = await call.oauth.store.rotate_client_secret(client.client_id, actor=call.actor(),
                                                                  overlap=overlap)
    return json_response(RotatedClientSecret.rotated(rotated, secret), headers=NO_STORE)


async def delete_client(call: Call) -> Response:
    client = await _client(call)
    await _guard_client_owner(call, client)
    oauth = call.oauth
    revoked = await oauth.store.delete_client(client.client_id, actor=call.actor())
    # The store has recorded them; this makes every node refuse them now rather than at its next poll.
    await oauth.revocations.revoke(revoked)
    return Response(status_code=204)


# -- signing keys --------------------------------------------------------------------------------------------


async def list_signing_keys(call: Call) -> Response:
    keys = _signing_keys(call)
    await keys.load()  # a rotation by the CLI or another node shows at once, not at the next poll
    return json_response(SigningKeyList(items=[SigningKeyOut.of(info) for info in keys.info()]))


async def rotate_signing_keys(call: Call) -> Response:
    keys = _signing_keys(call)
    oauth = call.oauth
    body = call.body_as(SigningKeyRotate)
    keep_for = signing_key_retention(oauth.access_token_ttl(), emergency=body.emergency)
    active = await keys.rotate(actor=call.actor(), keep_for=keep_for)
    await oauth.revocations.announce_keys_changed()
    return json_response(SigningKeyRotation(active=SigningKeyOut.of(active),
                                            items=[SigningKeyOut.of(info) for info in keys.info()]))


# -- the table -----------------------------------------------------------------------------------------------

P = Permission
_LIMIT = QueryParam("limit", "Page size (1-1000).", "integer", 1, MAX_PAGE)

OAUTH_ROUTES: Final[tuple[AdminRoute, ...]] = (
    AdminRoute("GET", CLIENTS, "listOAuthClients", "List OAuth clients.", "oauth-clients", P.OAUTH_CLIENTS_READ,
               list_clients, response_model=OAuthClientList,
               query=(QueryParam("consumer", "Only this consumer's clients (id or name)."), _LIMIT)),
    AdminRoute("POST", CLIENTS, "createOAuthClient", "Register an OAuth client (its secret is shown once).",
               "oauth-clients", P.OAUTH_CLIENTS_WRITE, create_client, 201, OAuthClientCreate, IssuedOAuthClient),
    AdminRoute("GET", f"{CLIENTS}/{{client_id}}", "getOAuthClient", "Show an OAuth client.", "oauth-clients",
               P.OAUTH_CLIENTS_READ, get_client, response_model=OAuthClientOut),
    AdminRoute("PATCH", f"{CLIENTS}/{{client_id}}", "updateOAuthClient",
               "Change some of a client's fields (disabling it revokes its tokens on every node).", "oauth-clients",
               P.OAUTH_CLIENTS_WRITE, update_client, 200, OAuthClientUpdate, OAuthClientOut),
    AdminRoute("POST", f"{CLIENTS}/{{client_id}}/rotate-secret", "rotateOAuthClientSecret",
               "Issue a new client secret (shown once); the old one keeps working for the overlap.",
               "oauth-clients", P.OAUTH_CLIENTS_WRITE, rotate_client_secret, 200, OAuthSecretRotate,
               RotatedClientSecret),
    AdminRoute("DELETE", f"{CLIENTS}/{{client_id}}", "deleteOAuthClient",
               "Delete an OAuth client; its tokens are revoked on every node at once.", "oauth-clients",
               P.OAUTH_CLIENTS_WRITE, delete_client, 204),
    AdminRoute("GET", SIGNING_KEYS, "listSigningKeys", "The authorization server's signing keys (no key material).",
               "signing-keys", P.SIGNING_KEYS_READ, list_signing_keys, response_model=SigningKeyList),
    AdminRoute("POST", f"{SIGNING_KEYS}/rotate", "rotateSigningKeys",
               "Rotate: the published next key signs from now on, the active one stays published until its "
               "tokens have expired (an emergency rotation withdraws it at once), and a new next key is "
               "published.", "signing-keys", P.SIGNING_KEYS_ROTATE, rotate_signing_keys, 200,
               SigningKeyRotate, SigningKeyRotation),
)


def oauth_error_responses(route: AdminRoute) -> list[tuple[int, str]]:
    """What the OpenAPI document adds to these routes' generic error answers."""
    if route.tag == "signing-keys":
        return [(404, "`admin.resource_not_found`: the built-in authorization server is not enabled "
                      "(`oauth.server.enabled`).")]
    if route.operation_id == "rotateOAuthClientSecret":
        return [(422, "Also for a public client, which has no secret.")]
    return []
