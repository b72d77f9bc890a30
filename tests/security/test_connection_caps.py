"""Connection caps: per client address, per listener (idle keep-alive connections go first), pipelining."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest

from tests.security.conftest import assert_gateway_healthy, hardened_config
from tests.security.corpus import get
from tests.security.rawclient import RawConnection, RawResponse, assert_safe_raw_problem
from tests.support.processes import Gateway, Upstream

TIMEOUT = 5.0


@pytest.fixture
def capped(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Iterator[Callable[..., Gateway]]:
    """A gateway with the given limits; long enough head deadline that busy sockets stay busy."""
    started: list[Gateway] = []

    def factory(**limits: object) -> Gateway:
        gateway = make_gateway(hardened_config(upstream, head_timeout=10.0, idle_timeout=10.0, **limits))
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        assert_gateway_healthy(gateway, allowed_5xx=frozenset({503}))


def _busy(port: int, count: int) -> list[RawConnection]:
    """Connections that have sent part of a request line: busy, not idle."""
    conns = [RawConnection(port) for _ in range(count)]
    for conn in conns:
        conn.send(b"GET /v1/ec")
    time.sleep(0.2)
    return conns


def _assert_overloaded(response: RawResponse | None, conn: RawConnection) -> None:
    assert response is not None and response.status == 503, response
    assert_safe_raw_problem(response, "gateway.overloaded")
    assert response.header("retry-after") == "1"
    assert response.header("connection") == "close"
    assert conn.closed_by_server(1.0) and conn.buffer == b""


def _served(port: int, timeout: float = 3.0) -> RawResponse | None:
    """Retry until a new connection is served (the server notices closed sockets asynchronously)."""
    deadline = time.monotonic() + timeout
    response: RawResponse | None = None
    while time.monotonic() < deadline:
        with RawConnection(port) as conn:
            conn.send(get(b"/v1/echo"))
            with contextlib.suppress(AssertionError):
                response = conn.read_response(TIMEOUT)
        if response is not None and response.status == 200:
            return response
        time.sleep(0.05)
    return response


def test_per_address_cap(capped: Callable[..., Gateway]) -> None:
    gateway = capped(max_connections_per_ip=20)
    port = gateway.ports["http"]
    busy = _busy(port, 20)
    try:
        with RawConnection(port) as extra:
            _assert_overloaded(extra.read_response(TIMEOUT), extra)
        for conn in busy[:5]:
            conn.close()
        response = _served(port)
        assert response is not None and response.status == 200, response
        # The remaining 15 busy ones are untouched: each can still finish its request.
        busy[5].send(b"ho HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        finished = busy[5].read_response(TIMEOUT)
        assert finished is not None and finished.status == 200
    finally:
        for conn in busy:
            conn.close()


def test_idle_keep_alive_connections_do_not_starve_new_ones(capped: Callable[..., Gateway]) -> None:
    gateway = capped(max_connections=10)
    port = gateway.ports["http"]
    idle = []
    try:
        for _ in range(10):
            conn = RawConnection(port)
            idle.append(conn)
            conn.send(get(b"/v1/echo"))
            response = conn.read_response(TIMEOUT)
            assert response is not None and response.status == 200
        with RawConnection(port) as newcomer:
            newcomer.send(get(b"/v1/echo"))
            response = newcomer.read_response(TIMEOUT)
            assert response is not None and response.status == 200, response
        # The oldest idle connection made room: it was closed without a response.
        assert idle[0].closed_by_server(1.0) and idle[0].buffer == b""
        assert not idle[-1].closed_by_server(0.2)
    finally:
        for conn in idle:
            conn.close()


def test_busy_connections_at_the_cap_refuse_new_ones(capped: Callable[..., Gateway]) -> None:
    gateway = capped(max_connections=10)
    port = gateway.ports["http"]
    busy = _busy(port, 10)
    try:
        with RawConnection(port) as extra:
            _assert_overloaded(extra.read_response(TIMEOUT), extra)
        busy[0].close()
        response = _served(port)
        assert response is not None and response.status == 200, response
    finally:
        for conn in busy:
            conn.close()


def test_pipelining_depth_is_bounded(capped: Callable[..., Gateway]) -> None:
    """20 requests in one packet: one in progress and 16 queued are answered in order, then 503 and close."""
    gateway = capped()
    with RawConnection(gateway.ports["http"]) as conn:
        conn.send(b"".join(get(b"/v1/echo?n=%d" % i) for i in range(20)))
        responses = []
        while (response := conn.read_response(TIMEOUT)) is not None:
            responses.append(response)
    assert [r.status for r in responses] == [200] * 17 + [503]
    assert [r.json()["query"] for r in responses[:17]] == [f"n={i}" for i in range(17)]
    assert_safe_raw_problem(responses[-1], "gateway.overloaded")
    assert responses[-1].header("connection") == "close"
