"""Proxying through the real gateway: forwarded headers, header hygiene, streaming bodies, errors, framing."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bastion.demo.api import BIG_PATTERN
from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config
from tests.support.servers import ControlledUpstream

MIB = 1024 * 1024
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
}
GENERATED_ID = re.compile(r"^[0-9a-f]{24}$")


def received_headers(echo: dict[str, Any]) -> dict[str, list[str]]:
    """The header fields the upstream received, by lower-case name."""
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name, []).append(value)
    return out


def with_echo_limit(config: dict[str, Any], limit: int) -> dict[str, Any]:
    for route in config["apis"][0]["routes"]:
        if route["name"] == "echo":
            route["max_body_bytes"] = limit
    return config


def test_forwarded_headers_and_request_id_are_set(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/v1/echo?a=1")
    assert response.status_code == 200
    seen = received_headers(response.json())
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{gateway.ports['http']}"]
    request_id = response.headers["x-request-id"]
    assert GENERATED_ID.match(request_id)
    assert seen["x-request-id"] == [request_id]
    assert response.json()["query"] == "a=1"


def test_client_forwarding_headers_are_replaced_from_untrusted_peer(gateway: Gateway) -> None:
    spoofed = {"x-forwarded-for": "6.6.6.6", "x-request-id": "client-chosen-id", "x-real-ip": "6.6.6.6",
               "x-forwarded-host": "evil.example", "x-forwarded-proto": "https", "forwarded": "for=6.6.6.6"}
    with gateway.client() as client:
        response = client.get("/v1/echo", headers=spoofed)
    assert response.status_code == 200
    seen = received_headers(response.json())
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{gateway.ports['http']}"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert "x-real-ip" not in seen and "forwarded" not in seen
    assert response.headers["x-request-id"] != "client-chosen-id"
    assert seen["x-request-id"] == [response.headers["x-request-id"]]
    record = next(r for r in gateway.wait_access_log(1) if r["request_id"] == response.headers["x-request-id"])
    assert record["client"] == "127.0.0.1"


def test_trusted_proxy_chain_and_request_id_are_honoured(make_gateway: Callable[..., Gateway],
                                                         upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["server"]["trusted_proxies"] = ["127.0.0.1/32", "10.0.0.0/8"]
    gateway = make_gateway(config)
    with gateway.client() as client:
        # Right to left: 10.1.2.3 is a trusted proxy, 198.51.100.7 is the first untrusted hop.
        chained = client.get("/v1/echo", headers={"x-forwarded-for": "203.0.113.9, 198.51.100.7, 10.1.2.3",
                                                  "x-request-id": "edge-4f2a.9_Z"})
        malformed = client.get("/v1/echo", headers={"x-forwarded-for": "198.51.100.8",
                                                    "x-request-id": "not a valid id\t<script>"})
        too_long = client.get("/v1/echo", headers={"x-request-id": "a" * 129})
    assert chained.status_code == malformed.status_code == too_long.status_code == 200
    seen = received_headers(chained.json())
    assert seen["x-forwarded-for"] == ["203.0.113.9, 198.51.100.7, 10.1.2.3, 127.0.0.1"]
    assert chained.headers["x-request-id"] == "edge-4f2a.9_Z"
    assert seen["x-request-id"] == ["edge-4f2a.9_Z"]
    assert GENERATED_ID.match(malformed.headers["x-request-id"])
    assert received_headers(malformed.json())["x-request-id"] == [malformed.headers["x-request-id"]]
    assert GENERATED_ID.match(too_long.headers["x-request-id"])
    records = {r["request_id"]: r for r in gateway.wait_access_log(3)}
    assert records["edge-4f2a.9_Z"]["client"] == "198.51.100.7"
    assert records["edge-4f2a.9_Z"]["peer"] == "127.0.0.1"
    assert records[malformed.headers["x-request-id"]]["client"] == "198.51.100.8"
    assert records[too_long.headers["x-request-id"]]["client"] == "127.0.0.1"


def test_hop_by_hop_request_headers_are_not_forwarded(gateway: Gateway) -> None:
    headers = {"connection": "keep-alive, X-Secret-Hop", "x-secret-hop": "1", "keep-alive": "timeout=5",
               "te": "trailers", "upgrade": "h2c", "proxy-connection": "keep-alive", "x-end-to-end": "kept"}
    with gateway.client() as client:
        response = client.get("/v1/echo", headers=headers)
    assert response.status_code == 200, response.text
    seen = received_headers(response.json())
    assert seen["x-end-to-end"] == ["kept"]
    for name in ("x-secret-hop", "keep-alive", "te", "upgrade", "proxy-connection"):
        assert name not in seen, name
    # The gateway's own connection to the upstream is keep-alive; the client's Connection never crosses.
    assert all("secret" not in value.lower() for value in seen.get("connection", []))


def test_upstream_internals_and_hop_by_hop_response_headers_are_stripped(
        make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    leaky = [("X-Powered-By", "Express 4.17"), ("Connection", "X-Upstream-Hop"), ("X-Upstream-Hop", "internal"),
             ("Keep-Alive", "timeout=5"), ("X-End-To-End", "kept"), ("X-Request-ID", "upstream-chosen"),
             ("X-AspNet-Version", "4.0.30319")]
    with ControlledUpstream("leaky", extra_headers=leaky) as backend:
        config = base_config(upstream.url)
        config["upstreams"]["leaky"] = {"targets": [{"url": backend.url}]}
        config["apis"].append({"name": "leaky", "base_path": "/leaky", "upstream": "leaky", "public": True,
                               "routes": [{"name": "any", "path": "/**", "methods": ["GET"]}]})
        gateway = make_gateway(config)
        with gateway.client() as client:
            response = client.get("/leaky/thing")
    assert response.status_code == 200
    assert response.json()["name"] == "leaky"
    assert response.headers["x-end-to-end"] == "kept"
    for name in ("server", "x-powered-by", "x-upstream-hop", "keep-alive", "x-aspnet-version"):
        assert name not in response.headers, name
    assert response.headers.get_list("x-request-id") == [response.headers["x-request-id"]]
    assert GENERATED_ID.match(response.headers["x-request-id"])  # the gateway's id, not the upstream's
    assert "x-upstream-hop" not in response.headers.get("connection", "").lower()


def test_response_carries_request_id_and_security_headers(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/v1/users")
    assert response.status_code == 200
    assert GENERATED_ID.match(response.headers["x-request-id"])
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert response.headers["cache-control"] == "no-store"
    assert "server" not in response.headers


@pytest.fixture
def big_body_gateway(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Gateway:
    return make_gateway(with_echo_limit(base_config(upstream.url), 6 * MIB))


def test_request_body_with_content_length_streams_intact(big_body_gateway: Gateway) -> None:
    body = os.urandom(5 * MIB)
    with big_body_gateway.client(timeout=30.0) as client:
        response = client.post("/v1/echo", content=body)
    assert response.status_code == 200, response.text
    echo = response.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert received_headers(echo)["content-length"] == [str(len(body))]


def test_chunked_request_body_streams_intact(big_body_gateway: Gateway) -> None:
    body = os.urandom(5 * MIB)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100_000):  # odd sizes: chunk boundaries move around
            yield body[start:start + 100_000]

    with big_body_gateway.client(timeout=30.0) as client:
        response = client.post("/v1/echo", content=chunks())
    assert response.status_code == 200, response.text
    echo = response.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    seen = received_headers(echo)
    assert seen["transfer-encoding"] == ["chunked"]
    assert "content-length" not in seen


def test_large_chunked_response_comes_through_intact(gateway: Gateway) -> None:
    size = 2 * MIB
    expected = (BIG_PATTERN * (size // len(BIG_PATTERN) + 1))[:size]
    with gateway.client(timeout=30.0) as client:
        response = client.get("/v1/big", params={"kb": size // 1024})
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert len(response.content) == size
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(expected).digest()


@pytest.fixture
def small_body_gateway(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Gateway:
    return make_gateway(with_echo_limit(base_config(upstream.url), 64 * 1024))


def test_body_over_route_limit_with_content_length_is_413(small_body_gateway: Gateway) -> None:
    with small_body_gateway.client() as client:
        accepted = client.post("/v1/echo", content=b"x" * 64 * 1024)
        response = client.post("/v1/echo", content=b"x" * (64 * 1024 + 1))
    assert accepted.status_code == 200
    assert response.status_code == 413
    assert_safe_problem(response, "http.body_too_large")


def test_chunked_body_over_route_limit_is_413(small_body_gateway: Gateway) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"y" * 16 * 1024  # 80 KiB in all, no length announced

    with small_body_gateway.client() as client:
        response = client.post("/v1/echo", content=chunks())
    assert response.status_code == 413
    assert_safe_problem(response, "http.body_too_large")


def test_upstream_server_error_is_masked_but_keeps_its_status(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/v1/boom")
    assert response.status_code == 500
    body = assert_safe_problem(response, "upstream.server_error")
    assert body["status"] == 500
    for needle in ("card_number", "password_hash", "shop-db-primary", "asyncpg", "shop-backend"):
        assert needle not in response.text
    assert "x-powered-by" not in response.headers


def test_route_can_pass_upstream_error_bodies_through(make_gateway: Callable[..., Gateway],
                                                      upstream: Upstream) -> None:
    config = base_config(upstream.url)
    for route in config["apis"][0]["routes"]:
        if route["name"] == "boom":
            route["mask_upstream_errors"] = False
    gateway = make_gateway(config)
    with gateway.client() as client:
        response = client.get("/v1/boom")
        masked = client.get("/v1/status/503")
    assert response.status_code == 500
    assert "UndefinedColumnError" in response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert "x-powered-by" not in response.headers
    assert masked.status_code == 503  # other routes keep masking
    assert_safe_problem(masked, "upstream.server_error")


def test_head_and_bodyless_statuses_keep_the_connection_usable(gateway: Gateway) -> None:
    with gateway.client() as client:
        head = client.head("/v1/users")
        get = client.get("/v1/users")
        head_streamed = client.head("/v1/big", params={"kb": 512})
        no_content = client.get("/v1/status/204")
        not_modified = client.get("/v1/status/304")
        after = client.get("/v1/status/200")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(get.content) > 0
    assert get.json()[0]["id"] == 1
    assert head_streamed.status_code == 200 and head_streamed.content == b""
    assert no_content.status_code == 204 and no_content.content == b""
    assert "transfer-encoding" not in no_content.headers
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert after.status_code == 200 and after.json() == {"status": 200}


def test_keep_alive_connection_serves_many_requests(gateway: Gateway) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.ports["http"], timeout=10)
    try:
        conn.connect()
        first_socket = conn.sock
        for index in range(40):
            path = ("/v1/users", f"/v1/echo?i={index}", "/v1/status/204", "/v1/nope")[index % 4]
            method = "HEAD" if index % 10 == 9 else "GET"
            conn.request(method, path)
            response = conn.getresponse()
            body = response.read()
            expected = 404 if path == "/v1/nope" else 204 if path.endswith("204") else 200
            assert response.status == expected, (index, path, body)
            assert response.getheader("connection") != "close"
            assert conn.sock is first_socket, f"connection was not reused at request {index}"
    finally:
        conn.close()
