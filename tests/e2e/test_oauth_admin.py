"""The admin API's OAuth endpoints on the real gateway: client registration, secret rotation and deletion,
signing-key rotation, the audit trail they leave, refusals as problem+json, and the authorization matrix's
OAuth rows (``admin_matrix.OAUTH_ROWS``)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.oauth.server.store import OAuthStore
from tests.e2e.admin_matrix import CALLERS, OAUTH_ROWS, Row
from tests.support.admin import SETUP_ACTOR, IdentityHandle
from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config, start_gateway

V1 = "/admin/v1"
CLIENTS = f"{V1}/oauth/clients"
SIGNING_KEYS = f"{V1}/oauth/signing-keys"
ISSUER = "https://bastion.test"
READER_ROLE = "orders-reader"  # grants orders:read, which /v1/echo needs


def oauth_config(upstream_url: str) -> dict[str, Any]:
    """The authorization server on, and /v1/echo behind the `oauth2` policy with the permission orders:read."""
    config = base_config(upstream_url)
    config["oauth"] = {"server": {"enabled": True, "issuer": ISSUER}}
    v1 = config["apis"][0]
    v1["public"] = False
    v1["policies"] = {"oauth2": {}}
    for route in v1["routes"]:
        if route["name"] == "echo":
            route["permissions"] = ["orders:read"]
    return config


def access_token(gateway: Gateway, client_id: str, secret: str) -> str:
    """A client-credentials token from the gateway's token endpoint."""
    with gateway.client() as client:
        answer = client.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "orders:read"},
                             auth=(client_id, secret))
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def signing_kid(token: str) -> str:
    return str(_segment(token, 0)["kid"])


def token_id(token: str) -> str:
    return str(_segment(token, 1)["jti"])


def echo_status(gateway: Gateway, token: str) -> int:
    with gateway.client() as client:
        return client.get("/v1/echo", headers={"Authorization": f"Bearer {token}"}).status_code


def jwks_kids(gateway: Gateway) -> set[str]:
    with gateway.client() as client:
        answer = client.get("/oauth2/jwks")
    assert answer.status_code == 200, answer.text
    return {key["kid"] for key in answer.json()["keys"]}


@dataclass
class OAuthEnv:
    gateway: Gateway
    identity: IdentityHandle
    store: OAuthStore  # the gateway's OAuth tables, opened from the test process (same file, same pepper)
    http: httpx.Client
    keys: dict[str, str | None]  # caller -> admin API key
    secrets: list[str]  # every client secret handed out: none may show up anywhere else

    def call(self, method: str, path: str, caller: str = "admin", **kwargs: Any) -> httpx.Response:
        key = self.keys[caller]
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        return self.http.request(method, path, headers=headers, **kwargs)

    def verifies(self, client_id: str, secret: str) -> bool:
        return self.identity.run(self.store.verify_client_secret(client_id, secret)) is not None

    def consumer(self, prefix: str, **fields: Any) -> str:
        return self.identity.consumer(f"{prefix}-{unique()}", **fields).id

    def client(self, consumer_id: str) -> tuple[str, str]:
        """A confidential client-credentials client that may be granted orders:read: (id, secret)."""
        client, secret = self.identity.run(self.store.create_client(
            consumer_id=consumer_id, name="setup", kind="confidential", grant_types=["client_credentials"],
            scopes=["orders:read"], redirect_uris=[], actor=SETUP_ACTOR))
        assert secret is not None
        self.secrets.append(secret)
        return client.client_id, secret


def _callers(identity: IdentityHandle) -> dict[str, str | None]:
    admin = identity.consumer("oauth-admin", admin_role="admin")
    past = datetime.now(UTC) - timedelta(days=2)
    expired, _ = identity.key(admin.id, "admin", ttl=timedelta(days=1), clock=lambda: past)
    return {
        "none": None,
        "expired": expired,
        "read": identity.key(admin.id, "read")[0],
        "operator": identity.admin_key("oauth-operator", "operator"),
        "auditor": identity.admin_key("oauth-auditor", "auditor"),
        "admin": identity.key(admin.id, "admin")[0],
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[OAuthEnv]:
    """One gateway running the authorization server for the module; tests make uniquely named resources."""
    config = oauth_config(upstream.url)
    config["server"]["admin"]["failed_auth"] = {"max_failures": 100_000}  # the matrix refuses many credentials
    gateway = start_gateway(config, Path(tmp_path_factory.mktemp("oauth-admin")))
    try:
        with IdentityHandle(gateway) as identity, httpx.Client(base_url=gateway.admin_url, timeout=10.0) as http:
            store = OAuthStore(identity.store.engine, identity.service.hasher)
            identity.role(READER_ROLE, ["orders:read"])
            oauth_env = OAuthEnv(gateway, identity, store, http, _callers(identity), [])
            yield oauth_env
            if oauth_env.secrets:  # under -n 2 a worker may run only tests that hand out no secret
                _assert_secrets_nowhere_else(oauth_env)
    finally:
        gateway.stop()


def unique() -> str:
    return uuid.uuid4().hex[:10]


def near(value: str, expected: datetime, tolerance: timedelta = timedelta(minutes=1)) -> bool:
    return abs(datetime.fromisoformat(value) - expected) < tolerance


def _assert_secrets_nowhere_else(env: OAuthEnv) -> None:
    """Client secrets live in the one answer that handed them out: not in the logs, the audit log or the
    database files (only keyed hashes are stored)."""
    data_dir = env.gateway.config_path.parent / ".bastion"
    stored = b"".join(path.read_bytes() for path in data_dir.glob("bastion.db*"))
    audit = env.call("GET", f"{V1}/audit", params={"limit": 1000}).text
    places = {"gateway log": env.gateway.logs(), "access log": str(env.gateway.access_log()), "audit log": audit}
    for secret in env.secrets:
        for place, text in places.items():
            assert secret not in text, f"a client secret is in the {place}"
        assert secret.encode() not in stored, "a client secret is stored in plaintext"


def audit_entries(env: OAuthEnv, after: int) -> dict[str, dict[str, Any]]:
    """Audit entries after ``after``, by request id."""
    items = env.call("GET", f"{V1}/audit", params={"after": after, "limit": 1000}).json()["items"]
    return {entry["request_id"]: entry for entry in items}


# -- clients ----------------------------------------------------------------------------------------------------


def test_client_lifecycle_over_http_is_audited(env: OAuthEnv) -> None:
    u = unique()
    first_seq = env.identity.latest_seq()
    mutations: dict[str, str] = {}  # request id -> audit action
    env.identity.role(f"orders-{u}", ["orders:read", "orders:write"])
    consumer_id = env.consumer("shop", roles=[f"orders-{u}"])

    created = env.call("POST", CLIENTS, json={
        "consumer": env.call("GET", f"{V1}/consumers/{consumer_id}").json()["name"],  # by name
        "name": "nightly export", "kind": "confidential", "grant_types": ["client_credentials"],
        "scopes": ["orders:read"]})
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    client = created.json()
    secret, client_id = client.pop("client_secret"), client["client_id"]
    env.secrets.append(secret)
    assert created.headers["location"] == f"{CLIENTS}/{client_id}"
    assert client_id.startswith("bcl_") and len(client_id) == 26
    assert secret.startswith("bcs_") and len(secret) == 47
    assert client["consumer_id"] == consumer_id and client["name"] == "nightly export"
    assert client["kind"] == "confidential" and client["status"] == "active"
    assert client["grant_types"] == ["client_credentials"] and client["scopes"] == ["orders:read"]
    assert client["redirect_uris"] == [] and client["secret_rotated_at"] is None
    assert near(client["created_at"], datetime.now(UTC))
    assert env.verifies(client_id, secret)  # the gateway stored what it showed
    mutations[created.headers["x-request-id"]] = "oauth_client.create"

    shown = env.call("GET", f"{CLIENTS}/{client_id}")
    by_consumer = env.call("GET", CLIENTS, params={"consumer": consumer_id})
    everyone = env.call("GET", CLIENTS)
    assert shown.status_code == by_consumer.status_code == everyone.status_code == 200
    assert shown.json() == client
    assert by_consumer.json() == {"items": [client]}
    assert client in everyone.json()["items"]
    for response in (shown, by_consumer, everyone):
        assert secret not in response.text and secret[4:] not in response.text
        assert "secret_digest" not in response.text and "client_secret" not in response.text

    patched = env.call("PATCH", f"{CLIENTS}/{client_id}", json={
        "name": "export", "scopes": ["orders:read", "orders:write"], "status": "disabled"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "export" and patched.json()["status"] == "disabled"
    assert patched.json()["scopes"] == ["orders:read", "orders:write"]
    assert patched.json()["grant_types"] == ["client_credentials"]  # not sent: kept
    assert not env.verifies(client_id, secret)  # disabled clients do not authenticate
    mutations[patched.headers["x-request-id"]] = "oauth_client.update"
    enabled = env.call("PATCH", f"{CLIENTS}/{client_id}", json={"status": "active"})
    assert enabled.json()["status"] == "active" and enabled.json()["name"] == "export"
    assert env.verifies(client_id, secret)

    rotated = env.call("POST", f"{CLIENTS}/{client_id}/rotate-secret", json={"overlap_hours": 1})
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    new_secret = rotated.json()["client_secret"]
    env.secrets.append(new_secret)
    assert new_secret.startswith("bcs_") and new_secret != secret
    assert near(rotated.json()["previous_secret_expires_at"], datetime.now(UTC) + timedelta(hours=1))
    assert near(rotated.json()["secret_rotated_at"], datetime.now(UTC))
    assert env.verifies(client_id, new_secret) and env.verifies(client_id, secret)  # the overlap
    mutations[rotated.headers["x-request-id"]] = "oauth_client.rotate_secret"
    # default overlap: keys.rotation_overlap_hours (24); a second rotation ends the first secret at once
    again = env.call("POST", f"{CLIENTS}/{client_id}/rotate-secret")
    assert again.status_code == 200, again.text
    third_secret = again.json()["client_secret"]
    env.secrets.append(third_secret)
    assert near(again.json()["previous_secret_expires_at"], datetime.now(UTC) + timedelta(hours=24))
    assert not env.verifies(client_id, secret)
    assert env.verifies(client_id, new_secret) and env.verifies(client_id, third_secret)
    assert "client_secret" not in env.call("GET", f"{CLIENTS}/{client_id}").json()

    deleted = env.call("DELETE", f"{CLIENTS}/{client_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    mutations[deleted.headers["x-request-id"]] = "oauth_client.delete"
    gone = env.call("GET", f"{CLIENTS}/{client_id}")
    assert gone.status_code == 404
    assert_safe_problem(gone, "admin.resource_not_found")
    assert env.call("DELETE", f"{CLIENTS}/{client_id}").status_code == 404
    assert not env.verifies(client_id, third_secret)

    ours = audit_entries(env, first_seq)
    for request_id, action in mutations.items():
        entry = ours[request_id]
        assert entry["action"] == action, entry
        assert entry["actor"] == "consumer:oauth-admin" and entry["client_ip"] == "127.0.0.1"
        assert entry["target"] == f"oauth_client:{client_id}"
    created_entry = ours[created.headers["x-request-id"]]
    assert created_entry["after"]["scopes"] == ["orders:read"]
    for entry in ours.values():
        assert not any(name.endswith(("digest", "secret")) for name in {**(entry["before"] or {}),
                                                                       **(entry["after"] or {})}), entry
    assert env.call("GET", f"{V1}/audit/verify").json()["ok"] is True


def test_public_clients_and_refusals(env: OAuthEnv) -> None:
    consumer_id = env.consumer("mobile")
    public = env.call("POST", CLIENTS, json={
        "consumer": consumer_id, "name": "app", "kind": "public",
        "grant_types": ["authorization_code", "refresh_token"],
        "redirect_uris": ["com.example.app:/cb", "http://127.0.0.1/callback", "https://app.example.com/cb"]})
    assert public.status_code == 201, public.text
    assert public.json()["client_secret"] is None and public.json()["kind"] == "public"
    assert public.json()["redirect_uris"] == ["com.example.app:/cb", "http://127.0.0.1/callback",
                                              "https://app.example.com/cb"]
    public_id = public.json()["client_id"]
    no_secret = env.call("POST", f"{CLIENTS}/{public_id}/rotate-secret")
    assert no_secret.status_code == 422
    assert "public client has no secret" in assert_safe_problem(no_secret, "admin.invalid_request")["detail"]

    def create(**fields: Any) -> dict[str, Any]:
        return {"consumer": consumer_id, "name": "x", "kind": "confidential",
                "grant_types": ["authorization_code"], "redirect_uris": ["https://app.example.com/cb"], **fields}

    cases: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
        # method, path, request options, status, code, field named in `errors`
        ("POST", CLIENTS, {"json": create(kind="public", grant_types=["client_credentials"])}, 422,
         "admin.invalid_request", ""),
        ("POST", CLIENTS, {"json": create(redirect_uris=["http://app.example.com/cb"])}, 422,
         "admin.invalid_request", ""),
        ("POST", CLIENTS, {"json": create(redirect_uris=["https://app.example.com/cb#frag"])}, 422,
         "admin.invalid_request", ""),
        ("POST", CLIENTS, {"json": create(grant_types=["password"])}, 422, "admin.invalid_request",
         "grant_types.0"),
        ("POST", CLIENTS, {"json": create(grant_types=["implicit"])}, 422, "admin.invalid_request",
         "grant_types.0"),
        ("POST", CLIENTS, {"json": create(grant_types=[])}, 422, "admin.invalid_request", "grant_types"),
        ("POST", CLIENTS, {"json": create(kind="secret")}, 422, "admin.invalid_request", "kind"),
        ("POST", CLIENTS, {"json": create(scopes=["bad scope"])}, 422, "admin.invalid_request", ""),
        ("POST", CLIENTS, {"json": create(consumer=f"nobody-{unique()}")}, 422, "admin.invalid_request", ""),
        ("POST", CLIENTS, {"json": create(client_secret="mine")}, 422, "admin.invalid_request", "client_secret"),
        ("POST", CLIENTS, {"json": {"consumer": consumer_id, "name": "x"}}, 422, "admin.invalid_request", "kind"),
        ("POST", CLIENTS, {"content": b"{", "headers": {"content-type": "application/json"}}, 400,
         "admin.invalid_json", None),
        ("PATCH", f"{CLIENTS}/{public_id}", {"json": {"kind": "confidential"}}, 422, "admin.invalid_request",
         "kind"),
        ("PATCH", f"{CLIENTS}/{public_id}", {"json": {"grant_types": ["client_credentials"]}}, 422,
         "admin.invalid_request", ""),
        ("PATCH", f"{CLIENTS}/{public_id}", {"json": {"status": "gone"}}, 422, "admin.invalid_request", "status"),
        ("POST", f"{CLIENTS}/{public_id}/rotate-secret", {"json": {"overlap_hours": -1}}, 422,
         "admin.invalid_request", "overlap_hours"),
        ("GET", f"{CLIENTS}/bcl_{'A' * 22}", {}, 404, "admin.resource_not_found", None),
        ("PATCH", f"{CLIENTS}/bcl_{'A' * 22}", {"json": {"name": "y"}}, 404, "admin.resource_not_found", None),
        ("GET", CLIENTS, {"params": {"consumer": f"nobody-{unique()}"}}, 404, "admin.resource_not_found", None),
        ("GET", CLIENTS, {"params": {"limit": "0"}}, 422, "admin.invalid_request", "query.limit"),
        ("PUT", CLIENTS, {}, 405, "admin.method_not_allowed", None),
    ]
    before = env.identity.latest_seq()
    for method, path, options, status, code, field in cases:
        response = env.call(method, path, **options)
        assert response.status_code == status, (method, path, options, response.text)
        body = _safe_problem(response, code)
        if field is not None:
            assert field in [error["field"] for error in body["errors"]], body
    assert env.identity.latest_seq() == before, "a refused request changed something"
    assert env.call("GET", f"{CLIENTS}/{public_id}").json()["grant_types"] == ["authorization_code",
                                                                               "refresh_token"]


def _safe_problem(response: httpx.Response, code: str) -> dict[str, Any]:
    # The redirect-URI rule names the loopback addresses it allows; assert_safe_problem would take that
    # for an internal address leaking.
    rule = "http on 127.0.0.1/[::1]/localhost"
    if rule in response.text:
        cleaned = httpx.Response(response.status_code, headers=response.headers,
                                 content=response.content.replace(rule.encode(), b"http on loopback"))
        return assert_safe_problem(cleaned, code)
    return assert_safe_problem(response, code)


def test_deleting_a_client_revokes_its_tokens(env: OAuthEnv) -> None:
    consumer_id = env.consumer("batch", roles=[READER_ROLE])
    doomed, kept = env.client(consumer_id), env.client(consumer_id)
    doomed_token, kept_token = access_token(env.gateway, *doomed), access_token(env.gateway, *kept)
    assert echo_status(env.gateway, doomed_token) == echo_status(env.gateway, kept_token) == 200  # now cached
    cursor, _ = env.identity.run(env.store.revocations_since(0))

    assert env.call("DELETE", f"{CLIENTS}/{doomed[0]}").status_code == 204
    assert echo_status(env.gateway, doomed_token) == 401  # at once, not at the next poll
    assert echo_status(env.gateway, kept_token) == 200
    _, revoked = env.identity.run(env.store.revocations_since(cursor))  # what the other nodes poll
    assert token_id(doomed_token) in {jti for jti, _ in revoked}
    assert token_id(kept_token) not in {jti for jti, _ in revoked}
    with env.gateway.client() as client:
        refused = client.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=doomed)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"


def test_operators_cannot_reach_admin_consumers_clients(env: OAuthEnv) -> None:
    """A client's tokens carry its consumer's permissions: an admin's clients are for admins only."""
    admin_consumer = env.consumer("boss", admin_role="auditor")
    client_id, _ = env.client(admin_consumer)
    attempts = [
        ("POST", CLIENTS, {"consumer": admin_consumer, "name": "x", "kind": "confidential",
                           "grant_types": ["client_credentials"]}),
        ("PATCH", f"{CLIENTS}/{client_id}", {"scopes": ["admin:*"]}),
        ("POST", f"{CLIENTS}/{client_id}/rotate-secret", {}),
        ("DELETE", f"{CLIENTS}/{client_id}", None),
    ]
    before = env.identity.latest_seq()
    for method, path, body in attempts:
        response = env.call(method, path, "operator", json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert_safe_problem(response, "authz.permission_denied")
    assert env.identity.latest_seq() == before
    assert env.call("GET", f"{CLIENTS}/{client_id}", "operator").status_code == 200  # reading is fine
    assert env.call("PATCH", f"{CLIENTS}/{client_id}", "admin", json={"name": "ok"}).status_code == 200


# -- signing keys -----------------------------------------------------------------------------------------------


def _by_state(keys: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        grouped.setdefault(key["state"], []).append(key)
    return grouped


def test_signing_key_rotation(env: OAuthEnv) -> None:
    listed = env.call("GET", SIGNING_KEYS, "auditor")
    assert listed.status_code == 200, listed.text
    before = _by_state(listed.json()["items"])
    assert len(before["active"]) == 1 and len(before["next"]) == 1
    for key in listed.json()["items"]:
        assert set(key) == {"kid", "alg", "state", "created_at", "activated_at", "retired_at", "keep_until"}
        assert key["alg"] == "ES256"
    old_active, old_next = before["active"][0]["kid"], before["next"][0]["kid"]
    client = env.client(env.consumer("signed", roles=[READER_ROLE]))
    old_token = access_token(env.gateway, *client)
    assert signing_kid(old_token) == old_active
    assert jwks_kids(env.gateway) >= {old_active, old_next}  # the next key is published before it signs
    seq = env.identity.latest_seq()

    rotated = env.call("POST", f"{SIGNING_KEYS}/rotate")
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    after = _by_state(body["items"])
    # the published next key signs now; the old active one stays published past the tokens it signed
    assert body["active"]["kid"] == before["next"][0]["kid"] == after["active"][0]["kid"]
    assert near(body["active"]["activated_at"], datetime.now(UTC))
    retired = {key["kid"]: key for key in after["retired"]}[before["active"][0]["kid"]]
    # kept for the longest token lifetime the configuration allows (1 day), plus the margin
    assert near(retired["keep_until"], datetime.now(UTC) + timedelta(days=1, seconds=300))
    assert len(after["next"]) == 1 and after["next"][0]["kid"] not in {before["next"][0]["kid"],
                                                                       before["active"][0]["kid"]}
    assert env.call("GET", SIGNING_KEYS).json()["items"] == body["items"]
    new_token = access_token(env.gateway, *client)
    assert signing_kid(new_token) == old_next
    assert jwks_kids(env.gateway) >= {old_active, old_next, after["next"][0]["kid"]}
    # tokens of the retired key keep working until they expire: a rotation rejects no valid token
    assert echo_status(env.gateway, old_token) == echo_status(env.gateway, new_token) == 200

    entry = audit_entries(env, seq)[rotated.headers["x-request-id"]]
    assert entry["action"] == "oauth_signing_key.rotate" and entry["actor"] == "consumer:oauth-admin"
    assert entry["after"]["active"]["kid"] == body["active"]["kid"]
    private_members = {"d", "p", "q", "dp", "dq", "qi"}  # of EC, RSA and OKP private JWKs
    for snapshot in (entry["before"], entry["after"], listed.json(), body):
        names = _names(snapshot)
        assert not names & private_members and not any("private" in n or "encrypted" in n for n in names)


def test_emergency_rotation_refuses_the_withdrawn_keys_tokens_at_once(env: OAuthEnv) -> None:
    """A compromised active key: no token it signed is accepted any more, even one cached as verified."""
    client = env.client(env.consumer("compromised", roles=[READER_ROLE]))
    old_token = access_token(env.gateway, *client)
    withdrawn = signing_kid(old_token)
    assert echo_status(env.gateway, old_token) == echo_status(env.gateway, old_token) == 200  # cached now
    seq = env.identity.latest_seq()

    rotated = env.call("POST", f"{SIGNING_KEYS}/rotate", "operator", json={"emergency": True})
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    retired = {key["kid"]: key for key in body["items"]}[withdrawn]
    assert retired["state"] == "retired" and retired["keep_until"] == retired["retired_at"]
    assert withdrawn not in jwks_kids(env.gateway)
    assert echo_status(env.gateway, old_token) == 401
    new_token = access_token(env.gateway, *client)
    assert signing_kid(new_token) == body["active"]["kid"] != withdrawn
    assert echo_status(env.gateway, new_token) == 200
    entry = audit_entries(env, seq)[rotated.headers["x-request-id"]]
    assert entry["action"] == "oauth_signing_key.rotate" and entry["actor"] == "consumer:oauth-operator"
    assert entry["after"]["retired"]["keep_until"] == entry["after"]["retired"]["retired_at"]
    refused = env.call("POST", f"{SIGNING_KEYS}/rotate", json={"emergency": "at once"})
    assert refused.status_code == 422
    assert_safe_problem(refused, "admin.invalid_request")


def _names(value: Any) -> set[str]:
    """Every object member name in a JSON document."""
    if isinstance(value, dict):
        return set(value).union(*(_names(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_names(item) for item in value))
    return set()


# -- the gateway without the authorization server ---------------------------------------------------------------


def test_without_the_server_clients_work_but_signing_keys_do_not_exist(gateway: Gateway) -> None:
    with IdentityHandle(gateway) as identity, httpx.Client(base_url=gateway.admin_url, timeout=10.0) as http:
        headers = {"Authorization": f"Bearer {identity.admin_key('solo-admin')}"}
        consumer = identity.consumer(f"early-{unique()}")
        created = http.post(CLIENTS, headers=headers, json={
            "consumer": consumer.id, "name": "registered early", "kind": "confidential",
            "grant_types": ["client_credentials"]})
        assert created.status_code == 201, created.text
        assert http.delete(f"{CLIENTS}/{created.json()['client_id']}", headers=headers).status_code == 204
        for method, path in (("GET", SIGNING_KEYS), ("POST", f"{SIGNING_KEYS}/rotate")):
            refused = http.request(method, path, headers=headers)
            assert refused.status_code == 404, refused.text
            body = assert_safe_problem(refused, "admin.resource_not_found")
            assert "oauth.server.enabled" in body["detail"]
        assert http.get(SIGNING_KEYS).status_code == 401  # authentication still comes first


# -- OpenAPI ----------------------------------------------------------------------------------------------------


def test_openapi_describes_the_oauth_routes(env: OAuthEnv) -> None:
    document = env.http.get(f"{V1}/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert "client_secret" not in schemas["OAuthClientOut"]["properties"]
    assert "client_secret" in schemas["IssuedOAuthClient"]["properties"]
    assert "client_secret" in schemas["RotatedClientSecret"]["properties"]
    assert schemas["OAuthClientCreate"]["additionalProperties"] is False
    assert "default" not in schemas["OAuthClientUpdate"]["properties"]["status"]
    assert set(schemas["SigningKeyOut"]["properties"]) == {"kid", "alg", "state", "created_at", "activated_at",
                                                           "retired_at", "keep_until"}
    create = document["paths"][CLIENTS]["post"]
    assert create["x-required-permission"] == "oauth_clients:write"
    assert create["x-admin-roles"] == ["admin", "operator"]
    rotate = document["paths"][f"{SIGNING_KEYS}/rotate"]["post"]
    assert "oauth.server.enabled" in rotate["responses"]["404"]["description"]
    assert {"name": "signing-keys"} in document["tags"]


# -- the authorization matrix -----------------------------------------------------------------------------------


def _cell(env: OAuthEnv, row: Row) -> tuple[str, Any]:
    u = unique()
    tokens = {"u": u}
    text = row.path + str(row.body)
    if "{consumer}" in text or "{client_id}" in text:
        tokens["consumer"] = env.consumer("cell")
        if "{client_id}" in text:
            tokens["client_id"] = env.client(tokens["consumer"])[0]

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            for name, token in tokens.items():
                value = value.replace("{" + name + "}", token)
            return value
        if isinstance(value, dict):
            return {name: fill(item) for name, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    return fill(row.path), fill(row.body)


@pytest.mark.parametrize("row", OAUTH_ROWS, ids=lambda row: f"{row.method} {row.path}")
def test_oauth_authorization_matrix(env: OAuthEnv, row: Row) -> None:
    failures = []
    for caller in CALLERS:
        path, body = _cell(env, row)
        seq = env.identity.latest_seq()
        response = env.call(row.method, path, caller, json=body)
        expected = row.expected(caller)
        if response.status_code != expected:
            failures.append(f"{caller}: expected {expected}, got {response.status_code} {response.text[:200]}")
            continue
        if expected >= 400:
            code = {401: "auth.credentials_missing" if caller == "none" else "auth.credentials_invalid",
                    403: "authz.permission_denied"}[expected]
            assert_safe_problem(response, code)
            assert env.identity.latest_seq() == seq, f"{caller}: a refused request changed something"
        elif "client_secret" in response.text:
            env.secrets.append(response.json()["client_secret"])
    assert not failures, f"{row.method} {row.path}:\n" + "\n".join(failures)
