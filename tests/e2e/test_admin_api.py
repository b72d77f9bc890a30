"""The admin REST API on the real gateway: the key lifecycle over HTTP, the audit trail it leaves, refusals
as problem+json, the OpenAPI document, and the authorization matrix in ``admin_matrix.py``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.admin.api import ROUTES
from tests.e2e.admin_matrix import CALLERS, MATRIX, OAUTH_ROWS, Row
from tests.support.admin import IdentityHandle
from tests.support.oauth_nodes import wait_for
from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config, start_gateway

V1 = "/admin/v1"


@dataclass
class AdminEnv:
    gateway: Gateway
    identity: IdentityHandle
    http: httpx.Client
    keys: dict[str, str | None]  # caller -> API key

    def call(self, method: str, path: str, caller: str = "admin", **kwargs: Any) -> httpx.Response:
        key = self.keys[caller]
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        return self.http.request(method, path, headers=headers, **kwargs)


def _callers(identity: IdentityHandle) -> dict[str, str | None]:
    admin = identity.consumer("matrix-admin", admin_role="admin")
    past = datetime.now(UTC) - timedelta(days=2)
    expired, _ = identity.key(admin.id, "admin", ttl=timedelta(days=1), clock=lambda: past)
    return {
        "none": None,
        "expired": expired,
        "read": identity.key(admin.id, "read")[0],
        "operator": identity.admin_key("matrix-operator", "operator"),
        "auditor": identity.admin_key("matrix-auditor", "auditor"),
        "admin": identity.key(admin.id, "admin")[0],
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[AdminEnv]:
    """One gateway for the module: every test makes its own uniquely named resources."""
    config = base_config(upstream.url)
    # The matrix sends hundreds of refused credentials from this address: the brake has its own test below.
    config["server"]["admin"]["failed_auth"] = {"max_failures": 100_000}
    gateway = start_gateway(config, Path(tmp_path_factory.mktemp("admin-api")))
    try:
        with IdentityHandle(gateway) as identity, httpx.Client(base_url=gateway.admin_url, timeout=10.0) as http:
            yield AdminEnv(gateway, identity, http, _callers(identity))
    finally:
        gateway.stop()


def unique() -> str:
    return uuid.uuid4().hex[:10]


def near(value: str, expected: datetime, tolerance: timedelta = timedelta(minutes=1)) -> bool:
    return abs(datetime.fromisoformat(value) - expected) < tolerance


def assert_no_secret(record: dict[str, Any]) -> None:
    assert "key" not in record and not any("digest" in name or "hash" in name for name in record), record


# -- the lifecycle ----------------------------------------------------------------------------------------------


def test_key_lifecycle_over_http_is_audited(env: AdminEnv) -> None:
    u = unique()
    first_seq = env.identity.latest_seq()
    mutations: dict[str, str] = {}  # audit action -> request id

    role = env.call("PUT", f"{V1}/roles/orders-reader-{u}",
                    json={"permissions": ["orders:read", "orders:list"], "description": "Reads orders"})
    assert role.status_code == 200, role.text
    assert role.json() == {"name": f"orders-reader-{u}", "permissions": ["orders:list", "orders:read"],
                           "description": "Reads orders"}
    mutations["role.create"] = role.headers["x-request-id"]

    created = env.call("POST", f"{V1}/consumers", json={
        "name": f"shop-{u}", "roles": [f"orders-reader-{u}"], "metadata": {"team": "shop"}, "plan": "gold"})
    assert created.status_code == 201, created.text
    consumer = created.json()
    assert created.headers["location"] == f"{V1}/consumers/{consumer['id']}"
    assert consumer["name"] == f"shop-{u}" and consumer["status"] == "active" and consumer["admin_role"] is None
    assert consumer["roles"] == [f"orders-reader-{u}"] and consumer["metadata"] == {"team": "shop"}
    mutations["consumer.create"] = created.headers["x-request-id"]
    by_name = env.call("GET", f"{V1}/consumers/shop-{u}")
    by_id = env.call("GET", f"{V1}/consumers/{consumer['id']}")
    assert by_name.json() == by_id.json() == consumer

    issued = env.call("POST", f"{V1}/keys", json={
        "consumer": f"shop-{u}", "level": "read", "scopes": ["orders:read"], "ttl_days": 30, "description": "ci"})
    assert issued.status_code == 201, issued.text
    assert issued.headers["cache-control"] == "no-store"
    key = issued.json()
    plaintext, key_id = key["key"], key["key_id"]
    assert plaintext.startswith("bst_r_" + key_id) and key["display_prefix"] == plaintext[:18]
    assert key["state"] == "active" and key["level"] == "read" and key["scopes"] == ["orders:read"]
    assert key["consumer_id"] == consumer["id"] and near(key["expires_at"], datetime.now(UTC) + timedelta(days=30))
    assert not any("digest" in name for name in key)
    mutations["key.create"] = issued.headers["x-request-id"]

    listed = env.call("GET", f"{V1}/keys", params={"consumer": consumer["id"]})
    assert listed.status_code == 200 and listed.headers["cache-control"] == "no-store"
    assert [k["key_id"] for k in listed.json()["items"]] == [key_id]
    shown = env.call("GET", f"{V1}/keys/{key_id}")
    assert shown.headers["cache-control"] == "no-store"
    for response in (listed, shown):
        assert plaintext not in response.text and plaintext[18:] not in response.text
    record = shown.json()
    assert_no_secret(record)
    assert record == listed.json()["items"][0] == {name: value for name, value in key.items() if name != "key"}

    patched = env.call("PATCH", f"{V1}/consumers/{consumer['id']}", json={"status": "disabled", "plan": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "disabled" and patched.json()["plan"] is None
    assert patched.json()["roles"] == consumer["roles"] and patched.json()["metadata"] == {"team": "shop"}
    mutations["consumer.update"] = patched.headers["x-request-id"]

    rotated = env.call("POST", f"{V1}/keys/{key_id}/rotate", json={"overlap_hours": 1})
    assert rotated.status_code == 201, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    successor = rotated.json()
    assert successor["key"].startswith("bst_r_" + successor["key_id"]) and successor["key"] != plaintext
    assert successor["predecessor_id"] == key_id and successor["scopes"] == ["orders:read"]
    assert successor["predecessor"]["successor_id"] == successor["key_id"]
    assert near(successor["predecessor"]["expires_at"], datetime.now(UTC) + timedelta(hours=1))
    mutations["key.rotate"] = rotated.headers["x-request-id"]
    again = env.call("POST", f"{V1}/keys/{key_id}/rotate")
    assert again.status_code == 409
    assert_safe_problem(again, "admin.conflict")

    revoked = env.call("POST", f"{V1}/keys/{successor['key_id']}/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked" and revoked.json()["revoked_at"] is not None
    assert_no_secret(revoked.json())
    mutations["key.revoke"] = revoked.headers["x-request-id"]

    entries = env.call("GET", f"{V1}/audit", params={"after": first_seq, "limit": 1000}).json()["items"]
    ours = {entry["request_id"]: entry for entry in entries}
    for action, request_id in mutations.items():
        entry = ours[request_id]
        assert entry["action"] == action
        assert entry["actor"] == "consumer:matrix-admin"
        assert entry["client_ip"] == "127.0.0.1"
    assert ours[mutations["key.create"]]["target"] == f"key:{key_id}"
    assert ours[mutations["consumer.update"]]["before"]["status"] == "active"
    assert plaintext not in str(entries) and successor["key"] not in str(entries)
    verified = env.call("GET", f"{V1}/audit/verify")
    assert verified.status_code == 200
    assert verified.json()["ok"] is True and verified.json()["last_seq"] >= max(e["seq"] for e in entries)

    assert env.call("DELETE", f"{V1}/roles/orders-reader-{u}").status_code == 409  # still granted
    deleted = env.call("DELETE", f"{V1}/consumers/{consumer['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    gone = env.call("GET", f"{V1}/consumers/{consumer['id']}")
    assert gone.status_code == 404
    assert_safe_problem(gone, "admin.resource_not_found")
    assert env.call("GET", f"{V1}/keys/{key_id}").status_code == 404  # its keys went with it
    assert env.call("DELETE", f"{V1}/roles/orders-reader-{u}").status_code == 204
    assert env.call("GET", f"{V1}/roles/orders-reader-{u}").status_code == 404


def test_revocation_and_role_changes_apply_at_once(env: AdminEnv) -> None:
    u = unique()
    created = env.call("POST", f"{V1}/consumers", json={"name": f"temp-{u}", "admin_role": "auditor"})
    consumer_id = created.json()["id"]
    key = env.call("POST", f"{V1}/keys", json={"consumer": consumer_id, "level": "admin"}).json()
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert env.http.get(f"{V1}/consumers", headers=headers).status_code == 200  # now cached by the gateway
    assert env.http.get(f"{V1}/audit", headers=headers).status_code == 200
    env.call("PATCH", f"{V1}/consumers/{consumer_id}", json={"admin_role": None})
    assert env.http.get(f"{V1}/audit", headers=headers).status_code == 403
    env.call("PATCH", f"{V1}/consumers/{consumer_id}", json={"admin_role": "auditor"})
    assert env.http.get(f"{V1}/audit", headers={"X-API-Key": key["key"]}).status_code == 200
    env.call("POST", f"{V1}/keys/{key['key_id']}/revoke")
    refused = env.http.get(f"{V1}/consumers", headers=headers)
    assert refused.status_code == 401
    assert_safe_problem(refused, "auth.credentials_invalid")


# -- refusals ---------------------------------------------------------------------------------------------------


def test_invalid_requests_are_problems(env: AdminEnv) -> None:
    u = unique()
    assert env.call("POST", f"{V1}/consumers", json={"name": f"dup-{u}"}).status_code == 201
    cases: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
        # method, path, request options, status, code, field named in `errors`
        ("POST", f"{V1}/consumers", {"content": b'{"name": ', "headers": {"content-type": "application/json"}},
         400, "admin.invalid_json", None),
        ("POST", f"{V1}/consumers", {"content": b'{"name": "x"}', "headers": {"content-type": "text/plain"}},
         415, "admin.unsupported_media_type", None),
        ("POST", f"{V1}/consumers", {"json": {"name": f"x-{u}", "bogus": 1}}, 422, "admin.invalid_request", "bogus"),
        ("POST", f"{V1}/consumers", {"json": {}}, 422, "admin.invalid_request", "name"),
        ("POST", f"{V1}/consumers", {"json": {"name": 5}}, 422, "admin.invalid_request", "name"),
        ("POST", f"{V1}/consumers", {"json": [1]}, 422, "admin.invalid_request", ""),
        ("POST", f"{V1}/consumers", {"json": {"name": f"x-{u}", "roles": ["no-such-role"]}}, 422,
         "admin.invalid_request", ""),
        ("POST", f"{V1}/consumers", {"json": {"name": f"dup-{u}"}}, 409, "admin.conflict", None),
        ("POST", f"{V1}/keys", {"json": {"consumer": f"dup-{u}", "level": "root"}}, 422, "admin.invalid_request",
         "level"),
        ("POST", f"{V1}/keys", {"json": {"consumer": f"dup-{u}", "level": "read", "ttl_days": 400}}, 422,
         "admin.invalid_request", ""),
        ("POST", f"{V1}/keys", {"json": {"consumer": f"nobody-{u}", "level": "read"}}, 422,
         "admin.invalid_request", ""),
        ("POST", f"{V1}/keys/{'A' * 12}/rotate", {"json": {"overlap_hours": -1}}, 422, "admin.invalid_request",
         "overlap_hours"),
        ("PUT", f"{V1}/roles/bad%20name", {"json": {"permissions": []}}, 422, "admin.invalid_request", ""),
        ("GET", f"{V1}/keys/{'A' * 12}", {}, 404, "admin.resource_not_found", None),
        ("GET", f"{V1}/keys", {"params": {"consumer": f"nobody-{u}"}}, 404, "admin.resource_not_found", None),
        ("GET", f"{V1}/audit", {"params": {"limit": "0"}}, 422, "admin.invalid_request", "query.limit"),
        ("GET", f"{V1}/audit", {"params": {"after": "-1"}}, 422, "admin.invalid_request", "query.after"),
        ("DELETE", f"{V1}/keys", {}, 405, "admin.method_not_allowed", None),
        ("GET", f"{V1}/nothing", {}, 404, "admin.not_found", None),
    ]
    for method, path, options, status, code, field in cases:
        response = env.call(method, path, **options)
        assert response.status_code == status, (method, path, options, response.text)
        body = assert_safe_problem(response, code)
        if field is not None:
            assert field in [error["field"] for error in body["errors"]], body
    too_long = env.call("POST", f"{V1}/keys", json={"consumer": f"dup-{u}", "level": "read", "ttl_days": 400})
    assert "at most 365 days" in too_long.json()["detail"]
    assert env.call("DELETE", f"{V1}/keys").headers["allow"] == "GET, HEAD, POST"  # every method of the path


def test_credentials_are_checked_before_anything_else(env: AdminEnv) -> None:
    missing = env.call("POST", f"{V1}/consumers", "none", json={"bogus": True})
    assert missing.status_code == 401
    assert_safe_problem(missing, "auth.credentials_missing")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    for header in ("Bearer bst_a_nonsense", "Basic dXNlcjpwYXNz"):
        refused = env.call("GET", f"{V1}/keys/{'A' * 12}", "none", headers={"Authorization": header})
        assert refused.status_code == 401
    in_query = env.call("GET", f"{V1}/consumers", params={"api_key": env.keys["admin"]})
    assert in_query.status_code == 400
    assert_safe_problem(in_query, "auth.credentials_in_query")
    assert env.call("GET", f"{V1}/consumers", "none", headers={"X-API-Key": env.keys["admin"] or ""}).status_code \
        == 200
    no_role = env.identity.consumer(f"plain-{unique()}")
    plain_admin_key, _ = env.identity.key(no_role.id, "admin")
    denied = env.http.get(f"{V1}/consumers", headers={"Authorization": f"Bearer {plain_admin_key}"})
    assert denied.status_code == 403
    assert_safe_problem(denied, "authz.permission_denied")


def test_repeated_invalid_credentials_block_the_address(make_gateway: Callable[..., Gateway],
                                                         upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["server"]["admin"]["failed_auth"] = {"max_failures": 3, "window": 60, "block": 2}
    gateway = make_gateway(config)
    with IdentityHandle(gateway) as identity, httpx.Client(base_url=gateway.admin_url, timeout=10.0) as http:
        good = identity.admin_key(f"brake-{unique()}")
        reader = identity.key(identity.consumer(f"reader-{unique()}").id, "read")[0]

        def consumers(key: str | None) -> httpx.Response:
            return http.get(f"{V1}/consumers", headers={"Authorization": f"Bearer {key}"} if key else {})

        assert consumers(None).status_code == 401  # no credential: nothing guessed, not counted
        # Unknown keys and a valid key of a lower level are refused alike, and counted alike: three are
        # tolerated, the fourth blocks the address.
        guesses = ("bst_a_" + "A" * 45, reader, "bst_a_" + "B" * 45)
        assert [consumers(key).status_code for key in guesses] == [401, 401, 401]
        assert consumers(good).status_code == 200
        assert consumers(reader).status_code == 401
        blocked = consumers(good)  # refused before any credential work, even a good key
        assert blocked.status_code == 429
        assert_safe_problem(blocked, "auth.too_many_failures")
        assert 1 <= int(blocked.headers["retry-after"]) <= 2
        assert consumers(None).status_code == 429
        assert wait_for(lambda: consumers(good).status_code == 200, timeout=5.0)  # the block ends
        # The window (60 s) still holds the earlier failures: the next one blocks the address again.
        assert consumers("bst_a_" + "C" * 45).status_code == 401
        assert consumers(good).status_code == 429


def test_operators_cannot_reach_admin_consumers(env: AdminEnv) -> None:
    """An operator must not turn itself (or anyone) into an admin, or mint keys for admins."""
    admin_id = env.call("GET", f"{V1}/consumers/matrix-admin").json()["id"]
    admin_key_id = env.call("GET", f"{V1}/keys", params={"consumer": admin_id}).json()["items"][0]["key_id"]
    attempts = [
        ("POST", f"{V1}/consumers", {"name": f"evil-{unique()}", "admin_role": "admin"}),
        ("PATCH", f"{V1}/consumers/matrix-operator", {"admin_role": "admin"}),
        ("PATCH", f"{V1}/consumers/matrix-auditor", {"status": "disabled"}),
        ("DELETE", f"{V1}/consumers/matrix-admin", None),
        ("POST", f"{V1}/keys", {"consumer": "matrix-admin", "level": "admin"}),
        ("POST", f"{V1}/keys/{admin_key_id}/rotate", {}),
        ("POST", f"{V1}/keys/{admin_key_id}/revoke", None),
    ]
    before = env.identity.latest_seq()
    for method, path, body in attempts:
        response = env.call(method, path, "operator", json=body)
        assert response.status_code == 403, (method, path, response.text)
        assert_safe_problem(response, "authz.permission_denied")
    assert env.identity.latest_seq() == before
    plain = env.call("POST", f"{V1}/consumers", "operator", json={"name": f"fine-{unique()}"})
    assert plain.status_code == 201
    assert env.call("PATCH", f"{V1}/consumers/{plain.json()['id']}", "operator",
                    json={"admin_role": None}).status_code == 200


# -- OpenAPI ----------------------------------------------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_document_lists_every_route(env: AdminEnv) -> None:
    response = env.http.get(f"{V1}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    operations = {(method.upper(), path): op for path, item in document["paths"].items()
                  for method, op in item.items()}
    assert set(operations) == {(route.method, route.path) for route in ROUTES}
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    for route in ROUTES:
        operation = operations[(route.method, route.path)]
        assert str(route.status) in operation["responses"]
        if route.permission is None:
            assert operation["security"] == []
        else:
            assert operation["x-required-permission"] == route.permission.value
            assert {"bearerAuth": []} in operation["security"] and "401" in operation["responses"]
        for name in re.findall(r"\{(\w+)\}", route.path):
            assert {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} \
                in operation["parameters"]
    assert not any("digest" in name or name == "key" for name in schemas["KeyOut"]["properties"])
    assert "key" in schemas["IssuedKey"]["properties"]
    assert schemas["ConsumerCreate"]["additionalProperties"] is False


# -- the authorization matrix -----------------------------------------------------------------------------------


def test_matrix_has_one_row_per_route() -> None:
    rows = [(row.method, row.path) for row in MATRIX]
    assert len(rows) == len(set(rows)), "duplicate rows in admin_matrix.py"
    routes = {(route.method, route.path) for route in ROUTES}
    assert routes - set(rows) == set(), "endpoints without a row in tests/e2e/admin_matrix.py"
    assert set(rows) - routes == set(), "rows in tests/e2e/admin_matrix.py without an endpoint"


def _fill(value: Any, tokens: dict[str, str]) -> Any:
    if isinstance(value, str):
        for name, token in tokens.items():
            value = value.replace("{" + name + "}", token)
        return value
    if isinstance(value, dict):
        return {name: _fill(item, tokens) for name, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, tokens) for item in value]
    return value


def _cell(env: AdminEnv, row: Row) -> tuple[str, Any]:
    """The row's path and body with fresh resources, created only when the row names them."""
    u = unique()
    tokens = {"u": u}
    text = row.path + str(row.body)
    if "{consumer}" in text or "{key_id}" in text:
        consumer = env.identity.consumer(f"cell-{u}")
        tokens["consumer"] = consumer.id
        if "{key_id}" in text:
            tokens["key_id"] = env.identity.key(consumer.id, "read")[1]
    if "{name}" in text:
        tokens["name"] = f"cell-role-{u}"
        env.identity.role(tokens["name"], ["orders:read"])
    return _fill(row.path, tokens), _fill(row.body, tokens)


@pytest.mark.parametrize("row", [row for row in MATRIX if row not in OAUTH_ROWS],
                         ids=lambda row: f"{row.method} {row.path}")  # OAuth rows: tests/e2e/test_oauth_admin.py
def test_authorization_matrix(env: AdminEnv, row: Row) -> None:
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
    assert not failures, f"{row.method} {row.path}:\n" + "\n".join(failures)
