"""Leveled API keys through the real gateway: lifecycle, no oracle, least privilege, revocation, two nodes."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.identity.keys import HEAD_LENGTH, KEY_ID_LENGTH, SECRET_LENGTH, _checksum
from tests.support.identity import StoreHandle, shared_pepper_env
from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config

REDIS = ("127.0.0.1", 6379)


def keyed_config(upstream_url: str) -> dict[str, Any]:
    """The demo API with key-auth on v1 (reads need shop:read, writes shop:write); v2 stays public."""
    config = base_config(upstream_url)
    v1 = config["apis"][0]
    v1["public"] = False
    v1["policies"] = {"key-auth": {"failed_auth": {"max_failures": 5, "window": 60, "block": 2}}}
    v1["operations"] = {"listUsers": {"permissions": ["users:read"]},
                        "createUser": {"permissions": ["users:write"]}}
    for route in v1["routes"]:
        if route["name"] == "echo":
            route["permissions"] = ["echo:use"]
        if route["name"] == "status":
            route["admin"] = True
    return config


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def keyed(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Iterator[tuple[Gateway, StoreHandle]]:
    config = keyed_config(upstream.url)
    gateway = make_gateway(config)
    store = StoreHandle(config, gateway.config_path.parent)
    store.role("reader", ["users:read", "echo:use"])
    store.role("writer", ["users:read", "users:write", "echo:use"])
    yield gateway, store


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_key_lifecycle_and_least_privilege(keyed: tuple[Gateway, StoreHandle]) -> None:
    gateway, store = keyed
    alice = store.consumer("alice", ["writer"])
    read_key, _ = store.key(alice, "read")
    write_key, _ = store.key(alice, "write")
    scoped_key, _ = store.key(alice, "write", scopes=["users:read"])
    with gateway.client() as client:
        assert client.get("/v1/users", headers=bearer(read_key)).status_code == 200
        assert client.get("/v1/users", headers={"x-api-key": write_key}).status_code == 200
        # a read key may only read, even when its consumer may write
        denied = client.post("/v1/users", headers=bearer(read_key), json={"name": "n", "email": "n@example.com"})
        assert denied.status_code == 403
        assert_safe_problem(denied, "authz.level_insufficient")
        created = client.post("/v1/users", headers=bearer(write_key), json={"name": "n", "email": "n@example.com"})
        assert created.status_code == 201
        # scopes narrow the consumer's rights: the intersection decides
        narrowed = client.post("/v1/users", headers=bearer(scoped_key), json={"name": "m", "email": "m@example.com"})
        assert narrowed.status_code == 403
        body = assert_safe_problem(narrowed, "authz.permission_denied")
        assert "users:write" in body["detail"]
        # administrative routes need an admin-level key
        admin_only = client.get("/v1/status/200", headers=bearer(write_key))
        assert_safe_problem(admin_only, "authz.level_insufficient")
        # public API untouched
        assert client.get("/v2/users").status_code == 200


def test_missing_invalid_and_query_credentials(keyed: tuple[Gateway, StoreHandle]) -> None:
    gateway, store = keyed
    bob = store.consumer("bob", ["reader"])
    key, key_id = store.key(bob, "read")
    with gateway.client() as client:
        missing = client.get("/v1/users")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert_safe_problem(missing, "auth.credentials_missing")
        malformed = key[:-8] + ("A" if key[-8] != "A" else "B") + key[-7:]  # checksum no longer matches
        head = key[:HEAD_LENGTH + KEY_ID_LENGTH]
        other_secret = head + "S" * SECRET_LENGTH
        wrong_secret = other_secret + _checksum(other_secret)  # well-formed, known id, wrong secret
        unknown = "bst_r_" + "A" * 45
        for bad in (malformed, wrong_secret, unknown, "not-a-key", key[:-1]):
            response = client.get("/v1/users", headers=bearer(bad))
            assert response.status_code == 401
            assert_safe_problem(response, "auth.credentials_invalid")
        in_query = client.get("/v1/users", params={"api_key": key})
        assert in_query.status_code == 400
        assert "header" in assert_safe_problem(in_query, "auth.credentials_in_query")["detail"]
    upstream_saw = gateway.client().get("/v1/echo", headers=bearer(key)).json()
    forwarded = dict(upstream_saw["headers"])
    assert "authorization" not in forwarded and "x-api-key" not in forwarded
    assert forwarded["x-consumer-id"] == bob
    assert forwarded["x-consumer-name"] == "bob"
    records = gateway.wait_access_log(8)
    text = gateway.access_log_path.read_text() + gateway.logs()
    assert key not in text and key[20:] not in text
    reasons = {r["reason"] for r in records if r.get("reject_code") == "auth.credentials_invalid"}
    assert any("wrong secret" in (r or "") for r in reasons), reasons
    assert any(key_id in (r or "") for r in reasons)


def test_revoked_expired_disabled_and_rotation(keyed: tuple[Gateway, StoreHandle]) -> None:
    gateway, store = keyed
    carol = store.consumer("carol", ["reader"])
    key, key_id = store.key(carol, "read")
    short, _ = store.key(carol, "read", ttl=timedelta(seconds=2))
    with gateway.client() as client:
        assert client.get("/v1/users", headers=bearer(key)).status_code == 200
        assert client.get("/v1/users", headers=bearer(short)).status_code == 200
        # rotation: the successor works at once, the predecessor until the overlap ends
        successor, successor_id = store.rotate(key_id, overlap=timedelta(seconds=3))
        assert client.get("/v1/users", headers=bearer(successor)).status_code == 200
        assert client.get("/v1/users", headers=bearer(key)).status_code == 200
        # revocation: refused on the very next request once the change is announced
        store.revoke(successor_id)
        assert wait_until(lambda: client.get("/v1/users", headers=bearer(successor)).status_code == 401, 1.5)
        assert wait_until(lambda: client.get("/v1/users", headers=bearer(short)).status_code == 401, 4.0)
        assert wait_until(lambda: client.get("/v1/users", headers=bearer(key)).status_code == 401, 4.0)
        dave = store.consumer("dave", ["reader"])
        dave_key, _ = store.key(dave, "read")
        assert client.get("/v1/users", headers=bearer(dave_key)).status_code == 200
        store.set_consumer_status(dave, "disabled")
        assert wait_until(lambda: client.get("/v1/users", headers=bearer(dave_key)).status_code == 401, 1.5)


def test_key_ip_allow_list(keyed: tuple[Gateway, StoreHandle]) -> None:
    gateway, store = keyed
    erin = store.consumer("erin", ["reader"])
    elsewhere, _ = store.key(erin, "read", allowed_cidrs=["10.0.0.0/8"])
    here, _ = store.key(erin, "read", allowed_cidrs=["127.0.0.0/8"])
    with gateway.client() as client:
        assert_safe_problem(client.get("/v1/users", headers=bearer(elsewhere)), "auth.credentials_invalid")
        assert client.get("/v1/users", headers=bearer(here)).status_code == 200


def test_repeated_failures_block_the_address(keyed: tuple[Gateway, StoreHandle]) -> None:
    gateway, store = keyed
    frank = store.consumer("frank", ["reader"])
    good, _ = store.key(frank, "read")
    with gateway.client() as client:
        statuses = [client.get("/v1/users", headers=bearer("bst_r_" + "B" * 45)).status_code for _ in range(7)]
        assert statuses[:5] == [401] * 5
        blocked = client.get("/v1/users", headers=bearer(good))
        assert blocked.status_code == 429
        assert int(assert_safe_problem(blocked, "auth.too_many_failures") and blocked.headers["retry-after"]) >= 1
        assert wait_until(lambda: client.get("/v1/users", headers=bearer(good)).status_code == 200, 4.0)


def test_database_never_holds_a_key(keyed: tuple[Gateway, StoreHandle]) -> None:
    gateway, store = keyed
    grace = store.consumer("grace", ["reader"])
    key, key_id = store.key(grace, "write")
    with gateway.client() as client:
        assert client.get("/v1/users", headers=bearer(key)).status_code == 200
    db = Path(store.settings.store_url.removeprefix("sqlite:///"))
    dump = "\n".join(sqlite3.connect(db).iterdump())
    assert key_id in dump
    assert key not in dump and key[18:-6] not in dump  # neither the key nor its secret part
    raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
    assert key.encode() not in raw and key[18:-6].encode() not in raw


def test_routes_without_authentication_are_refused_at_load(make_gateway: Callable[..., Gateway],
                                                           upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["apis"][0]["public"] = False
    gateway = make_gateway(config, expect_start=False)
    assert gateway.process.wait(20) == 2
    assert "not public and no authentication policy" in gateway.logs()


def _redis_available() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=0.5):
            return True
    except OSError:
        return False


def test_revocation_reaches_every_node_within_a_second(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                        tmp_path: Path) -> None:
    if not _redis_available():
        if os.environ.get("CI") == "true":
            pytest.fail("Redis must run on 127.0.0.1:6379 under CI")
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    config = keyed_config(upstream.url)
    config["store"] = f"sqlite:///{tmp_path / 'shared.db'}"
    config["keys"] = {"pepper": shared_pepper_env(tmp_path), "cache_ttl": 300}
    config["redis"] = "redis://127.0.0.1:6379/0"
    node_a = make_gateway(config)
    node_b = make_gateway(config)
    store = StoreHandle(config, node_a.config_path.parent)
    store.role("reader", ["users:read"])
    heidi = store.consumer("heidi", ["reader"])
    key, key_id = store.key(heidi, "read")
    clients = [httpx.Client(base_url=node.url, timeout=5.0) for node in (node_a, node_b)]
    try:
        for client in clients:  # warm both caches: from now on the key is served from memory
            assert client.get("/v1/users", headers=bearer(key)).status_code == 200
        # revoke through a third party (this process): each node learns it from Redis, well before the poll
        store.revoke(key_id)
        revoked_at = time.monotonic()
        for client in clients:
            assert wait_until(lambda c=client: c.get("/v1/users", headers=bearer(key)).status_code == 401, 1.0)
        assert time.monotonic() - revoked_at < 1.0
    finally:
        for client in clients:
            client.close()
