"""Upstream failure handling through the real gateway: timeouts, retries, ejection, health checks, balancing."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config
from tests.support.servers import ControlledUpstream, RawUpstream, refused_port


@pytest.fixture
def dead_url() -> Iterator[str]:
    sock, port = refused_port()
    yield f"http://127.0.0.1:{port}"
    sock.close()


def with_upstream(config: dict[str, Any], urls: list[str], **settings: Any) -> dict[str, Any]:
    """Point the `shop` upstream (both demo APIs) at ``urls`` with extra settings."""
    shop = config["upstreams"]["shop"]
    shop["targets"] = [{"url": url} for url in urls]
    shop.update(settings)
    return config


def app_config(urls: list[str], **settings: Any) -> dict[str, Any]:
    """A gateway in front of controllable upstreams: every GET under /app is forwarded as is."""
    config = base_config(urls[0])
    config["upstreams"] = {"app": {"targets": [{"url": url} for url in urls],
                                   "timeouts": {"connect": 1.0, "read": 2.0, "total": 4.0}, **settings}}
    config["apis"] = [{"name": "app", "base_path": "/app", "upstream": "app", "public": True,
                       "routes": [{"name": "any", "path": "/**", "methods": ["GET"]}]}]
    return config


def upstream_status(gateway: Gateway, name: str) -> dict[str, int]:
    response = httpx.get(gateway.admin_url + "/readyz", timeout=5.0)
    assert response.status_code == 200
    upstreams: dict[str, dict[str, int]] = response.json()["upstreams"]
    return upstreams[name]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_connection_refused_is_502(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                   dead_url: str) -> None:
    gateway = make_gateway(with_upstream(base_config(upstream.url), [dead_url]))
    with gateway.client() as client:
        response = client.get("/v1/users")
    assert response.status_code == 502
    assert_safe_problem(response, "upstream.connect_failed")  # the target's address is not revealed
    record = gateway.wait_access_log(1)[0]
    assert record["upstream"] == "shop" and record["reason"].startswith("connect failed")


def test_read_timeout_is_504_promptly(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = with_upstream(base_config(upstream.url), [upstream.url],
                           timeouts={"connect": 1.0, "read": 0.5, "total": 5.0})
    gateway = make_gateway(config)
    with gateway.client() as client:
        started = time.monotonic()
        response = client.get("/v1/slow", params={"ms": 3000})
        elapsed = time.monotonic() - started
        fast = client.get("/v1/slow", params={"ms": 100})
    assert response.status_code == 504
    assert_safe_problem(response, "upstream.timeout")
    assert 0.4 < elapsed < 2.5, elapsed  # the 0.5 s read timeout, not the upstream's 3 s
    assert fast.status_code == 200  # the timeout is silence, not the whole exchange


def test_total_timeout_bounds_the_exchange(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = with_upstream(base_config(upstream.url), [upstream.url],
                           timeouts={"connect": 1.0, "read": 5.0, "total": 0.7})
    gateway = make_gateway(config)
    with gateway.client() as client:
        started = time.monotonic()
        response = client.get("/v1/slow", params={"ms": 3000})
        elapsed = time.monotonic() - started
        after = client.get("/v1/users")
    assert response.status_code == 504
    assert_safe_problem(response, "upstream.timeout")
    assert 0.6 < elapsed < 2.5, elapsed  # the 0.7 s total timeout, not the upstream's 3 s
    assert after.status_code == 200


def test_dead_target_is_retried_around_then_ejected(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                    dead_url: str) -> None:
    config = with_upstream(base_config(upstream.url), [dead_url, upstream.url],
                           health_check={"passive": {"consecutive_failures": 3, "ejection_time": 30}})
    gateway = make_gateway(config)
    assert upstream_status(gateway, "shop") == {"healthy_targets": 2, "targets": 2}
    with gateway.client() as client:
        statuses = [client.get("/v1/users").status_code for _ in range(12)]
    assert statuses == [200] * 12
    assert wait_for(lambda: "ejected" in gateway.logs(), 3.0), gateway.logs()
    assert f"target {dead_url} ejected" in gateway.logs()
    assert upstream_status(gateway, "shop") == {"healthy_targets": 1, "targets": 2}


def test_non_idempotent_request_with_body_is_not_retried(make_gateway: Callable[..., Gateway],
                                                         upstream: Upstream, dead_url: str) -> None:
    gateway = make_gateway(with_upstream(base_config(upstream.url), [dead_url, upstream.url]))
    with gateway.client() as client:
        post = client.post("/v1/echo", json={"n": 1})  # round robin starts with the dead target
        get = client.get("/v1/echo")  # next in turn is the live target: no retry needed
        get_retried = client.get("/v1/echo")  # the dead one again: retried on the live target
    assert post.status_code == 502
    assert_safe_problem(post, "upstream.connect_failed")
    assert get.status_code == 200
    assert get_retried.status_code == 200


def test_all_targets_dead_gives_503_with_retry_after(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                     dead_url: str) -> None:
    sock, port = refused_port()
    try:
        config = with_upstream(base_config(upstream.url), [dead_url, f"http://127.0.0.1:{port}"],
                               health_check={"passive": {"consecutive_failures": 1, "ejection_time": 30}})
        gateway = make_gateway(config)
        with gateway.client() as client:
            first = client.get("/v1/users")
            second = client.get("/v1/users")
    finally:
        sock.close()
    assert first.status_code == 502
    assert_safe_problem(first, "upstream.connect_failed")
    assert second.status_code == 503
    assert_safe_problem(second, "upstream.unavailable")
    assert second.headers["retry-after"] == "1"
    assert upstream_status(gateway, "shop") == {"healthy_targets": 0, "targets": 2}


def test_round_robin_spreads_requests(make_gateway: Callable[..., Gateway]) -> None:
    with ControlledUpstream("a") as a, ControlledUpstream("b") as b:
        gateway = make_gateway(app_config([a.url, b.url]))
        with gateway.client() as client:
            names = [client.get(f"/app/item/{i}").json()["name"] for i in range(10)]
    assert sorted(names) == ["a"] * 5 + ["b"] * 5
    assert all(names[i] != names[i + 1] for i in range(9)), names


def test_weights_share_requests(make_gateway: Callable[..., Gateway]) -> None:
    with ControlledUpstream("a") as a, ControlledUpstream("b") as b:
        config = app_config([a.url, b.url])
        config["upstreams"]["app"]["targets"][0]["weight"] = 3
        gateway = make_gateway(config)
        with gateway.client() as client:
            names = [client.get("/app/x").json()["name"] for _ in range(12)]
    assert names.count("a") == 9 and names.count("b") == 3


def test_active_health_checks_take_a_target_out_and_back(make_gateway: Callable[..., Gateway]) -> None:
    active = {"enabled": True, "interval": 0.2, "timeout": 0.5, "unhealthy_threshold": 1, "healthy_threshold": 1}
    with ControlledUpstream("a") as a, ControlledUpstream("b") as b:
        gateway = make_gateway(app_config([a.url, b.url], health_check={"active": active}))
        assert wait_for(lambda: a.health_probes > 0 and b.health_probes > 0)

        def spread(count: int) -> dict[str, int]:
            with gateway.client() as client:
                names = [client.get("/app/x").json()["name"] for _ in range(count)]
            return {name: names.count(name) for name in ("a", "b")}

        assert spread(6) == {"a": 3, "b": 3}
        a.set_healthy(False)
        assert wait_for(lambda: upstream_status(gateway, "app")["healthy_targets"] == 1)
        assert spread(6) == {"a": 0, "b": 6}
        assert "failed 1 health checks: marked unhealthy" in gateway.logs()
        a.set_healthy(True)
        assert wait_for(lambda: upstream_status(gateway, "app")["healthy_targets"] == 2)
        assert spread(6) == {"a": 3, "b": 3}
        assert f"target {a.url} is healthy again" in gateway.logs()


UNPARSEABLE = "unparseable upstream response"
TOO_LARGE = "upstream response head too large"
BAD_RESPONSES = {
    "invalid-content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", UNPARSEABLE),
    "not-http": (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", UNPARSEABLE),
    "oversized-head": (b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 4096 + b"\r\nContent-Length: 2\r\n\r\nok", TOO_LARGE),
    "endless-head": (b"HTTP/1.1 200 OK\r\n" + b"X-More: yes\r\n" * 400, TOO_LARGE),  # never ends
}


@pytest.mark.parametrize("kind", sorted(BAD_RESPONSES))
def test_broken_upstream_response_is_502_and_connection_dropped(make_gateway: Callable[..., Gateway],
                                                                kind: str) -> None:
    answer, reason = BAD_RESPONSES[kind]
    with RawUpstream(answer) as raw:
        gateway = make_gateway(app_config([raw.url], max_response_header_bytes=2048))
        with gateway.client() as client:
            responses = [client.get("/app/x") for _ in range(2)]
        connections, requests = raw.counts()
    for response in responses:
        assert response.status_code == 502
        assert_safe_problem(response, "upstream.bad_response")
    assert requests == 2
    assert connections == 2, "a connection that carried a broken response was reused"
    assert [r["reason"] for r in gateway.wait_access_log(2)] == [reason, reason]


def test_upstream_closing_mid_body_aborts_the_client_response(make_gateway: Callable[..., Gateway]) -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n" + b"z" * 1000
    with RawUpstream(partial, close_after=True) as raw:
        gateway = make_gateway(app_config([raw.url]))
        with gateway.client() as client:
            for _ in range(2):
                with pytest.raises(httpx.RemoteProtocolError):  # a truncated body, never a short "200"
                    client.get("/app/x")
        connections, requests = raw.counts()
    assert (connections, requests) == (2, 2)
    records = gateway.wait_access_log(2)
    assert [r["upstream_status"] for r in records] == [200, 200]
    assert [r["reason"] for r in records] == ["upstream closed mid-body"] * 2


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read one Content-Length framed response: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, len(body)
        body += chunk
    return head, body


def test_head_arriving_with_a_large_body_part_is_accepted(make_gateway: Callable[..., Gateway]) -> None:
    body = bytes(range(256)) * 1200  # 300 KiB sent at once: one read holds the head and much of the body
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
    with RawUpstream(response + body) as raw:
        gateway = make_gateway(app_config([raw.url]))
        with gateway.client() as client:
            results = [client.get("/app/x") for _ in range(5)]
        assert raw.counts() == (1, 5)
    for result in results:
        assert result.status_code == 200, result.text
        assert result.content == body


def test_connection_released_while_the_client_reads_slowly_is_reused(make_gateway: Callable[..., Gateway]) -> None:
    body = b"s" * 100_000
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with RawUpstream(response) as raw:
        gateway = make_gateway(app_config([raw.url], timeouts={"connect": 1.0, "read": 0.5, "total": 2.0}))
        # Accepted sockets inherit the listener's send buffer: a small one makes the gateway's writes to a
        # slow client back up at once, so it pauses the upstream in the read that completes the response.
        gateway.sockets["http"].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for _ in range(3):
            with socket.socket() as slow:
                slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                slow.settimeout(5)
                slow.connect(("127.0.0.1", gateway.ports["http"]))
                slow.sendall(b"GET /app/slow-reader HTTP/1.1\r\nHost: gateway\r\n\r\n")
                time.sleep(0.1)
                head, received = read_response(slow)
            assert head.startswith(b"HTTP/1.1 200") and received == body
            with gateway.client() as client:
                assert client.get("/app/next").status_code == 200  # the pooled connection still reads
        assert raw.counts() == (1, 6)


def test_close_delimited_upstream_response_is_forwarded_whole(make_gateway: Callable[..., Gateway]) -> None:
    with RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", close_after=True) as raw:
        gateway = make_gateway(app_config([raw.url]))
        with gateway.client() as client:
            responses = [client.get("/app/x") for _ in range(2)]
        assert raw.counts() == (2, 2)  # ended by the close: never pooled
    for response in responses:
        assert response.status_code == 200
        assert response.text == "until the end"
        assert response.headers["transfer-encoding"] == "chunked"


def test_response_size_cap(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["upstreams"]["shop"]["max_response_bytes"] = 100
    gateway = make_gateway(config)
    with gateway.client() as client:
        declared = client.get("/v1/users")  # Content-Length ~174 > 100: refused before anything is sent
        assert declared.status_code == 502
        assert_safe_problem(declared, "upstream.response_too_large")
        with pytest.raises(httpx.HTTPError):  # chunked past the cap: the response is cut, never completed
            client.get("/v1/big", params={"kb": 8}).read()
    with gateway.client() as client:
        assert client.get("/v1/status/204").status_code == 204
    records = gateway.wait_access_log(3)
    assert any("max_response_bytes" in (r.get("reason") or "") for r in records)


def test_upstream_bulkhead(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["upstreams"]["shop"]["max_concurrent_requests"] = 2
    gateway = make_gateway(config)

    def slow() -> httpx.Response:
        with gateway.client() as client:
            return client.get("/v1/slow", params={"ms": 800})

    with ThreadPoolExecutor(max_workers=5) as pool:
        responses = list(pool.map(lambda _: slow(), range(5)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 503, 503, 503], statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert_safe_problem(busy, "upstream.busy")
    assert busy.headers["retry-after"] == "1"
    with gateway.client() as client:  # the slots came back
        assert [client.get("/v1/users").status_code for _ in range(3)] == [200, 200, 200]
