"""OWASP API4 through a real gateway process in front of the demo API: concurrency caps (slots given back
when requests end, are refused later in the chain, or are abandoned by their client), query parameter
limits (reject and clamp, as the upstream sees them) and JSON body limits."""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config, start_gateway

CAP = 3
UPLOADS = 2
SLOW = "/v1/slow"


def resource_config(upstream_url: str) -> dict[str, Any]:
    config = base_config(upstream_url)
    # Requests held open on purpose must not end by upstream timeout while a test relies on them.
    config["upstreams"]["shop"]["timeouts"] = {"connect": 1.0, "read": 15.0, "total": 20.0}
    policies = {
        "slow": {
            "concurrency": {"limits": [{"name": "per-client", "key": ["consumer"], "max": CAP}]},
            "query-limits": {"params": {"ms": {"max": 9000}}},  # refuses after the slot was taken
        },
        "echo": {
            "concurrency": {"limits": [{"name": "uploads", "max": UPLOADS}]},
            "query-limits": {
                "params": {"limit": {"max": 100, "min": 1, "on_exceed": "clamp"}, "page_size": {"max": 50}},
                "max_params": 8,
                "max_value_length": 64,
            },
            "json-limits": {"max_depth": 16, "max_array_length": 1000, "max_string_length": 4096,
                            "max_keys": 500},
        },
    }
    for route in config["apis"][0]["routes"]:
        if route["name"] in policies:
            route["policies"] = policies[route["name"]]
    return config


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    gateway = start_gateway(resource_config(upstream.url), Path(tmp_path_factory.mktemp("resource-limits")))
    yield gateway
    gateway.stop()


def parallel(gateway: Gateway, count: int, target: str) -> list[httpx.Response]:
    """`count` requests on their own connections, released together."""
    barrier = threading.Barrier(count)

    def one(_: int) -> httpx.Response:
        with gateway.client(timeout=20.0) as client:
            barrier.wait()
            return client.get(target)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(r.status_code for r in responses)


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


# -- concurrency ---------------------------------------------------------------------------------------------
def test_concurrency_cap_admits_exactly_the_cap_and_slots_come_back(gw: Gateway) -> None:
    responses = parallel(gw, CAP + 4, f"{SLOW}?ms=2000")
    assert statuses(responses) == [200] * CAP + [429] * 4
    for refused in (r for r in responses if r.status_code == 429):
        body = assert_safe_problem(refused, "concurrency.exceeded")
        assert body["title"] == "Too many concurrent requests"
        assert refused.headers["retry-after"] == "1"
    # All of them ended: the whole cap is free again, and still enforced.
    assert statuses(parallel(gw, CAP, f"{SLOW}?ms=300")) == [200] * CAP
    assert statuses(parallel(gw, CAP + 1, f"{SLOW}?ms=1500")) == [200] * CAP + [429]


def test_requests_refused_later_in_the_chain_give_their_slot_back(gw: Gateway) -> None:
    with gw.client() as client:
        for _ in range(CAP * 3):
            refused = client.get(f"{SLOW}?ms=99999")  # query-limits (VALIDATE) refuses after concurrency
            assert_safe_problem(refused, "request.query_invalid")
    assert statuses(parallel(gw, CAP, f"{SLOW}?ms=300")) == [200] * CAP


OTHER_CLIENT = "127.0.0.2"  # Linux routes all of 127.0.0.0/8 to the loopback: a second address, own slots


def _connect(gateway: Gateway, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.ports["http"]), timeout=5, source_address=(source, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() resets
    return sock


def _cap_reached(client: httpx.Client, target: str) -> Callable[[], bool]:
    return lambda: client.get(target).status_code == 429


def _cap_free(client: httpx.Client, target: str) -> Callable[[], bool]:
    return lambda: client.get(target).status_code == 200


def test_slots_of_clients_that_disconnect_while_sending_the_body_are_released_at_once(gw: Gateway) -> None:
    started = time.monotonic()
    held = []
    for _ in range(UPLOADS):
        sock = _connect(gw, OTHER_CLIENT)
        sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"a\": ")  # the rest never comes
        held.append(sock)
    transport = httpx.HTTPTransport(local_address=OTHER_CLIENT)
    with httpx.Client(base_url=gw.url, transport=transport, timeout=5.0) as client:
        assert wait_until(_cap_reached(client, "/v1/echo"), 2.0), "the uploads never filled the cap"
        for sock in held:
            sock.close()
        assert wait_until(_cap_free(client, "/v1/echo"), 2.0), "slots of abandoned uploads were not released"
    assert time.monotonic() - started < 2.9  # before the body deadline (3 s) would have ended them


def test_slots_of_clients_that_disconnect_while_the_upstream_works_are_released(gw: Gateway) -> None:
    held = []
    for _ in range(CAP):
        sock = _connect(gw, OTHER_CLIENT)
        sock.sendall(f"GET {SLOW}?ms=1500 HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
        held.append(sock)
    transport = httpx.HTTPTransport(local_address=OTHER_CLIENT)
    with httpx.Client(base_url=gw.url, transport=transport, timeout=5.0) as client:
        assert wait_until(_cap_reached(client, f"{SLOW}?ms=0"), 2.0), "the held requests never filled the cap"
        for sock in held:
            sock.close()
        # At the latest when their exchanges end (the upstream answers, nobody reads it): no slot leaks.
        assert wait_until(_cap_free(client, f"{SLOW}?ms=0"), 6.0), "slots of abandoned requests leaked"
        responses = [client.get(f"{SLOW}?ms=0") for _ in range(CAP)]
    assert statuses(responses) == [200] * CAP


def test_slots_of_clients_that_disconnect_while_the_upstream_works_are_released_at_once(gw: Gateway) -> None:
    third = "127.0.0.3"
    held = []
    for _ in range(CAP):
        sock = _connect(gw, third)
        sock.sendall(f"GET {SLOW}?ms=3000 HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
        held.append(sock)
    transport = httpx.HTTPTransport(local_address=third)
    with httpx.Client(base_url=gw.url, transport=transport, timeout=5.0) as client:
        assert wait_until(_cap_reached(client, f"{SLOW}?ms=0"), 1.0)
        for sock in held:
            sock.close()
        assert wait_until(_cap_free(client, f"{SLOW}?ms=0"), 1.0)  # long before the upstream answers


# -- query limits ----------------------------------------------------------------------------------------------
def test_query_values_over_the_limit_are_clamped_in_what_the_upstream_receives(gw: Gateway) -> None:
    with gw.client() as client:
        response = client.get("/v1/echo?a=1&limit=500&b=%20x+y&c&limit=7")
        assert response.status_code == 200, response.text
        assert response.json()["query"] == "a=1&limit=100&b=%20x+y&c&limit=7"
        untouched = client.get("/v1/echo?limit=20&page_size=50&z=%E2%9C%93")
        assert untouched.json()["query"] == "limit=20&page_size=50&z=%E2%9C%93"

    def logged() -> bool:
        return any("query-limits:clamped:limit" in (r.get("events") or ()) for r in gw.access_log())

    assert wait_until(logged, 5.0), "the clamp is not in the access log"


@pytest.mark.parametrize(("query", "detail"), [
    ("page_size=51", "Query parameter 'page_size' must be at most 50."),
    ("limit=ten", "Query parameter 'limit' must be an integer."),
    ("limit=1e9", "Query parameter 'limit' must be an integer."),
    ("&".join(f"p{i}=1" for i in range(9)), "Too many query parameters (at most 8)."),
    ("q=" + "x" * 65, "A query parameter value is too long (at most 64 characters)."),
])
def test_query_values_outside_the_limits_are_refused(gw: Gateway, query: str, detail: str) -> None:
    with gw.client() as client:
        response = client.get(f"/v1/echo?{query}")
    body = assert_safe_problem(response, "request.query_invalid")
    assert response.status_code == 400 and body["detail"] == detail


# -- JSON limits -------------------------------------------------------------------------------------------------
def post_json(gateway: Gateway, body: bytes | Iterator[bytes],
              content_type: str = "application/json") -> httpx.Response:
    with gateway.client() as client:
        return client.post("/v1/echo", content=body, headers={"content-type": content_type})


@pytest.mark.parametrize(("body", "code", "status"), [
    (b"[" * 100_000, "request.json_too_complex", 413),
    (b"[" * 50_000 + b"]" * 50_000, "request.json_too_complex", 413),
    (json.dumps(list(range(1001))).encode(), "request.json_too_complex", 413),
    (json.dumps({"s": "x" * 4097}).encode(), "request.json_too_complex", 413),
    (json.dumps({f"k{i}": i for i in range(501)}).encode(), "request.json_too_complex", 413),
    (b'{"role": "user", "role": "admin"}', "request.json_invalid", 400),
    (b'{"a": [1, 2,]}', "request.json_invalid", 400),
    (b'{"a": NaN}', "request.json_invalid", 400),
    (b'{"a": "\xff"}', "request.json_invalid", 400),
])
def test_json_bodies_over_the_limits_or_invalid_are_refused(gw: Gateway, body: bytes, code: str,
                                                            status: int) -> None:
    response = post_json(gw, body)
    assert response.status_code == status
    assert_safe_problem(response, code)


def test_valid_json_is_forwarded_byte_for_byte(gw: Gateway) -> None:
    document = {"items": [{"id": i, "name": f"item {i}", "price": i * 1.25, "tags": ["a", "b"]}
                          for i in range(100)], "note": "caf\u00e9 \\\"[[[{{"}
    body = json.dumps(document, ensure_ascii=False, indent=1).encode()
    response = post_json(gw, body, "application/vnd.shop+json; charset=utf-8")
    assert response.status_code == 200, response.text
    echo = response.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    # A chunked body is read whole, checked, and forwarded with its own Content-Length.
    chunked = post_json(gw, iter([body[:1000], body[1000:]]))
    assert chunked.status_code == 200, chunked.text
    echo = chunked.json()
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert ["content-length", str(len(body))] in echo["headers"]
    assert not any(name == "transfer-encoding" for name, _ in echo["headers"])


def test_non_json_bodies_and_bodiless_requests_pass(gw: Gateway) -> None:
    body = b"[" * 10_000 + b' {"a": 1, "a": 2}'
    for content_type in ("text/plain", "application/octet-stream"):
        response = post_json(gw, body, content_type)
        assert response.status_code == 200, response.text
        assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    with gw.client() as client:
        assert client.get("/v1/echo", headers={"content-type": "application/json"}).status_code == 200
        assert client.delete("/v1/echo").status_code == 200
