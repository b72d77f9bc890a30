"""The bundled demo upstream (bastion.demo.api), tested in-process."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from bastion.config.model import GatewayConfig
from bastion.demo.api import BIG_CHUNK_BYTES, BIG_PATTERN, BOOM_BODY, MAX_BIG_KB, create_app

DEMO_DIR = Path(__file__).resolve().parents[2] / "src" / "bastion" / "demo"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(), raise_server_exceptions=True) as test_client:
        yield test_client


# -- health --------------------------------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# -- v1 users ------------------------------------------------------------------------------------------


def test_v1_list_users_seeded(client: TestClient) -> None:
    response = client.get("/v1/users")
    assert response.status_code == 200
    users = response.json()
    assert isinstance(users, list)
    assert [u["id"] for u in users] == [1, 2, 3]
    assert set(users[0]) == {"id", "name", "email"}


def test_v1_get_user(client: TestClient) -> None:
    response = client.get("/v1/users/2")
    assert response.status_code == 200
    assert response.json() == {"id": 2, "name": "Grace Hopper", "email": "grace@example.com"}


@pytest.mark.parametrize("user_id", ["99", "0", "abc", "-1", "1.5"])
def test_v1_get_user_not_found(client: TestClient, user_id: str) -> None:
    response = client.get(f"/v1/users/{user_id}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_v1_create_user(client: TestClient) -> None:
    response = client.post("/v1/users", json={"name": "Edsger Dijkstra", "email": "edsger@example.com"})
    assert response.status_code == 201
    created = response.json()
    assert created == {"id": 4, "name": "Edsger Dijkstra", "email": "edsger@example.com"}
    assert response.headers["location"] == "/v1/users/4"
    assert client.get("/v1/users/4").json() == created
    assert len(client.get("/v1/users").json()) == 4
    # v2 sees the same store, with the extra fields
    v2 = client.get("/v2/users/4").json()
    assert v2["display_name"] == "Edsger D."
    assert v2["created_at"].endswith("Z")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "x"}, "email: field required"),
        ({"email": "x@example.com"}, "name: field required"),
        ({"name": "", "email": "x@example.com"}, "name: must be a non-empty string"),
        ({"name": 5, "email": "x@example.com"}, "name: must be a non-empty string"),
        ({"name": "x", "email": "not-an-email"}, "email: not an email address"),
        ({"name": "x" * 101, "email": "x@example.com"}, "name: at most 100 characters"),
        ({"name": "x", "email": "x@example.com", "admin": True}, "admin: unknown field"),
        ([], "must be a JSON object"),
    ],
)
def test_v1_create_user_validation(client: TestClient, body: object, fragment: str) -> None:
    response = client.post("/v1/users", json=body)
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == "validation_failed"
    assert any(fragment in detail for detail in error["details"]), error
    assert len(client.get("/v1/users").json()) == 3


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"name": "x",}'])
def test_v1_create_user_bad_json(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/users", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_json"


def test_apps_do_not_share_state() -> None:
    with TestClient(create_app()) as first:
        assert first.post("/v1/users", json={"name": "A", "email": "a@example.com"}).status_code == 201
    with TestClient(create_app()) as second:
        assert len(second.get("/v1/users").json()) == 3


# -- v1 orders -----------------------------------------------------------------------------------------


def test_v1_list_orders_seeded(client: TestClient) -> None:
    orders = client.get("/v1/orders").json()
    assert [o["id"] for o in orders] == [1, 2, 3, 4]
    assert set(orders[0]) == {"id", "user_id", "item", "quantity"}


def test_v1_get_order(client: TestClient) -> None:
    response = client.get("/v1/orders/3")
    assert response.status_code == 200
    assert response.json() == {"id": 3, "user_id": 2, "item": "compiler manual", "quantity": 1}
    assert client.get("/v1/orders/5").status_code == 404


def test_v1_create_order(client: TestClient) -> None:
    response = client.post("/v1/orders", json={"user_id": 3, "item": "teapot", "quantity": 2})
    assert response.status_code == 201
    assert response.json() == {"id": 5, "user_id": 3, "item": "teapot", "quantity": 2}
    assert response.headers["location"] == "/v1/orders/5"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"user_id": 1, "item": "x"}, "quantity: field required"),
        ({"user_id": 1, "item": "x", "quantity": 0}, "quantity: must be between 1 and 1000"),
        ({"user_id": 1, "item": "x", "quantity": 1001}, "quantity: must be between 1 and 1000"),
        ({"user_id": 1, "item": "x", "quantity": "2"}, "quantity: must be an integer"),
        ({"user_id": 1, "item": "x", "quantity": True}, "quantity: must be an integer"),
        ({"user_id": 1, "item": "x", "quantity": 1.5}, "quantity: must be an integer"),
        ({"user_id": 42, "item": "x", "quantity": 1}, "user_id: unknown user"),
        ({"user_id": 1, "item": "", "quantity": 1}, "item: must be a non-empty string"),
        ({"user_id": 1, "item": "x", "quantity": 1, "price": 0}, "price: unknown field"),
    ],
)
def test_v1_create_order_validation(client: TestClient, body: object, fragment: str) -> None:
    response = client.post("/v1/orders", json=body)
    assert response.status_code == 422
    assert any(fragment in detail for detail in response.json()["details"]), response.json()


# -- v2 ------------------------------------------------------------------------------------------------


def test_v2_list_users_default_page(client: TestClient) -> None:
    response = client.get("/v2/users")
    assert response.status_code == 200
    page = response.json()
    assert page["next"] is None
    assert [u["id"] for u in page["items"]] == [1, 2, 3]
    assert set(page["items"][0]) == {"id", "name", "email", "display_name", "created_at"}
    assert page["items"][0]["display_name"] == "Ada L."
    assert page["items"][0]["created_at"] == "2024-01-15T09:30:00Z"


def test_v2_get_user(client: TestClient) -> None:
    user = client.get("/v2/users/3").json()
    assert user["name"] == "Alan Turing"
    assert user["display_name"] == "Alan T."
    assert client.get("/v2/users/4").status_code == 404


def test_v2_pagination_walks_every_order(client: TestClient) -> None:
    seen: list[int] = []
    pages = 0
    url = "/v2/orders?limit=3"
    while True:
        page = client.get(url).json()
        pages += 1
        seen += [o["id"] for o in page["items"]]
        if page["next"] is None:
            break
        url = f"/v2/orders?limit=3&cursor={page['next']}"
    assert seen == [1, 2, 3, 4]
    assert pages == 2


def test_v2_pagination_exact_fit_has_no_next(client: TestClient) -> None:
    page = client.get("/v2/orders?limit=4").json()
    assert len(page["items"]) == 4
    assert page["next"] is None
    assert client.get("/v2/users?limit=1").json()["next"] == "1"
    assert client.get("/v2/users?cursor=3").json() == {"items": [], "next": None}


def test_v2_default_limit_is_20_and_max_is_100(client: TestClient) -> None:
    for _ in range(130):
        assert client.post("/v2/orders", json={"user_id": 1, "item": "x", "quantity": 1}).status_code == 201
    default = client.get("/v2/orders").json()
    assert len(default["items"]) == 20
    assert default["next"] == "20"
    largest = client.get("/v2/orders?limit=100").json()
    assert len(largest["items"]) == 100
    rest = client.get(f"/v2/orders?limit=100&cursor={largest['next']}").json()
    assert len(rest["items"]) == 34
    assert rest["next"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=-5", "limit=abc", "limit=", "cursor=x",
                                   "cursor=-1"])
def test_v2_pagination_rejects_bad_parameters(client: TestClient, query: str) -> None:
    response = client.get(f"/v2/users?{query}")
    assert response.status_code == 422
    assert response.json()["error"] == "validation_failed"


def test_v2_orders(client: TestClient) -> None:
    order = client.get("/v2/orders/1").json()
    assert order == {"id": 1, "user_id": 1, "item": "notebook", "quantity": 2, "status": "placed",
                     "created_at": "2024-04-01T10:00:00Z"}
    response = client.post("/v2/orders", json={"user_id": 2, "item": "bug", "quantity": 1})
    assert response.status_code == 201
    assert response.json()["status"] == "placed"
    assert response.headers["location"] == "/v2/orders/5"
    assert client.post("/v2/orders", content=b"[", headers={"content-type": "application/json"}
                       ).status_code == 422


def test_v2_has_no_user_creation(client: TestClient) -> None:
    assert client.post("/v2/users", json={"name": "x", "email": "x@example.com"}).status_code == 405


# -- errors from the router ----------------------------------------------------------------------------


def test_unknown_path_is_json_404(client: TestClient) -> None:
    response = client.get("/v3/users")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


def test_method_not_allowed_lists_every_method(client: TestClient) -> None:
    response = client.delete("/v1/users")
    assert response.status_code == 405
    assert response.json() == {"error": "method_not_allowed"}
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed


# -- echo ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_v1_echo_reports_request(client: TestClient, method: str) -> None:
    body = b"" if method == "GET" else b'{"hello": "world"}'
    response = client.request(method, "/v1/echo?b=2&a=1&a=%20x", content=body,
                              headers={"X-Custom": "Value", "X-Trace": "t1"})
    assert response.status_code == 200
    echo = response.json()
    assert echo["method"] == method
    assert echo["path"] == "/v1/echo"
    assert echo["query"] == "b=2&a=1&a=%20x"
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    headers = [tuple(pair) for pair in echo["headers"]]
    assert ("x-custom", "Value") in headers
    assert ("x-trace", "t1") in headers
    assert all(name == name.lower() for name, _ in headers)


def test_echo_keeps_repeated_headers_in_order(client: TestClient) -> None:
    response = client.get("/debug/echo", headers=[("x-dup", "one"), ("x-dup", "two")])
    dup = [value for name, value in response.json()["headers"] if name == "x-dup"]
    assert dup == ["one", "two"]


def test_debug_echo_methods(client: TestClient) -> None:
    payload = bytes(range(256)) * 10
    echo = client.post("/debug/echo", content=payload).json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/debug/echo"
    assert echo["body_length"] == 2560
    assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert client.put("/debug/echo").status_code == 405


# -- other test hooks ----------------------------------------------------------------------------------


def test_boom_leaks_internals(client: TestClient) -> None:
    response = client.get("/v1/boom")
    assert response.status_code == 500
    assert response.text == BOOM_BODY
    assert "Traceback (most recent call last)" in response.text
    assert "SELECT" in response.text and "FROM orders" in response.text


def test_slow(client: TestClient) -> None:
    response = client.get("/v1/slow?ms=20")
    assert response.status_code == 200
    assert response.json() == {"slept_ms": 20}
    assert client.get("/v1/slow").json() == {"slept_ms": 0}
    assert client.get("/v1/slow?ms=-1").status_code == 422
    assert client.get("/v1/slow?ms=soon").status_code == 422


def test_slow_is_capped(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("bastion.demo.api.asyncio.sleep", fake_sleep)
    assert client.get("/v1/slow?ms=999999").json() == {"slept_ms": 30000}
    assert slept == [30.0]


@pytest.mark.parametrize("kb", [0, 1, 16, 17, 100])
def test_big_streams_exact_size(client: TestClient, kb: int) -> None:
    with client.stream("GET", f"/v1/big?kb={kb}") as response:
        assert response.status_code == 200
        assert "content-length" not in response.headers
        chunks = list(response.iter_raw())
    body = b"".join(chunks)
    assert len(body) == kb * 1024
    expected = (BIG_PATTERN * (kb // 16 + 1))[: kb * 1024]
    assert body == expected
    assert response.headers["x-expected-length"] == str(kb * 1024)


def test_big_default_and_cap(client: TestClient) -> None:
    assert len(client.get("/v1/big").content) == 1024
    with client.stream("GET", "/v1/big?kb=999999") as response:
        assert response.headers["x-expected-length"] == str(MAX_BIG_KB * 1024)
        total = sum(len(chunk) for chunk in response.iter_raw())
    assert total == MAX_BIG_KB * 1024
    assert BIG_CHUNK_BYTES == 16 * 1024
    assert client.get("/v1/big?kb=x").status_code == 422


@pytest.mark.parametrize("code", [200, 201, 302, 400, 404, 418, 429, 500, 502, 503, 599])
def test_status(client: TestClient, code: int) -> None:
    response = client.get(f"/v1/status/{code}", follow_redirects=False)
    assert response.status_code == code
    assert response.json() == {"status": code}


def test_status_without_body_and_invalid(client: TestClient) -> None:
    response = client.get("/v1/status/204")
    assert response.status_code == 204
    assert response.content == b""
    for bad in ("99", "100", "600", "abc", "2000"):
        assert client.get(f"/v1/status/{bad}").status_code == 422


# -- bundled documents ---------------------------------------------------------------------------------


def test_bundled_gateway_config_is_valid() -> None:
    config = GatewayConfig.model_validate(yaml.safe_load((DEMO_DIR / "bastion.yaml").read_text()))
    assert [api.name for api in config.apis] == ["shop-v1", "shop-v2"]
    for api in config.apis:
        assert api.openapi is not None
        assert (DEMO_DIR / api.openapi).is_file()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_openapi_documents_match_the_app(client: TestClient, version: str) -> None:
    document = yaml.safe_load((DEMO_DIR / f"openapi-{version}.yaml").read_text())
    assert document["openapi"].startswith("3.1")
    operation_ids: list[str] = []
    for path, item in document["paths"].items():
        assert not path.startswith(("/v1", "/v2"))
        for method, operation in item.items():
            if method == "parameters":
                continue
            operation_ids.append(operation["operationId"])
            concrete = f"/{version}" + path.replace("{user_id}", "1").replace("{order_id}", "1")
            body = None
            if "requestBody" in operation:
                schema = operation["requestBody"]["content"]["application/json"]["schema"]
                name = schema["$ref"].rsplit("/", 1)[1]
                assert document["components"]["schemas"][name]["additionalProperties"] is False
                body = {"name": "N", "email": "n@example.com"} if "User" in name else {
                    "user_id": 1, "item": "i", "quantity": 1}
            response = client.request(method.upper(), concrete, content=json.dumps(body) if body else None)
            assert str(response.status_code) in operation["responses"], (method, path)
    assert len(operation_ids) == len(set(operation_ids))
    assert {"listUsers", "getUser", "listOrders", "getOrder", "createOrder"} <= set(operation_ids)
