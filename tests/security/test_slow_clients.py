"""Deadlines against slow and idle clients, measured on the wire (head 1 s, body 1.5 s, idle 2 s)."""

from __future__ import annotations

import time

from tests.security.conftest import BODY_TIMEOUT, HEAD_TIMEOUT, IDLE_TIMEOUT
from tests.security.corpus import get, post
from tests.security.rawclient import RawConnection, assert_safe_raw_problem
from tests.support.processes import Gateway

SLACK = 1.0


def test_slowloris_gets_408_within_the_head_deadline(hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send_background([b"GET /v1/echo HTTP/1.1\r\nHost: gw.test\r\n",
                              *(part for i in range(100) for part in (0.3, b"X-Drip-%d: 1\r\n" % i))])
        response = conn.read_response(HEAD_TIMEOUT + 2 * SLACK)
        elapsed = time.monotonic() - conn.opened
        assert response is not None and response.status == 408
        assert_safe_raw_problem(response, "http.request_timeout")
        assert conn.closed_by_server(1.0)
    assert HEAD_TIMEOUT - 0.2 <= elapsed <= HEAD_TIMEOUT + SLACK, elapsed


def test_silent_connection_is_closed_within_the_head_deadline(hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        closed_after = conn.wait_closed(HEAD_TIMEOUT + 2 * SLACK)
    assert closed_after is not None, "a silent connection was kept open"
    assert closed_after <= HEAD_TIMEOUT + SLACK
    # Whatever it sent on the way out is a complete 408 problem, nothing else.
    assert conn.buffer.startswith(b"HTTP/1.1 408 ") or conn.buffer == b"", conn.buffer[:100]


def test_body_trickle_gets_408_within_the_body_deadline(hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send_background([post(b"Content-Length: 1000"), *(part for _ in range(100) for part in (0.3, b"a"))])
        response = conn.read_response(BODY_TIMEOUT + 2 * SLACK)
        elapsed = time.monotonic() - conn.opened
        assert response is not None and response.status == 408
        assert_safe_raw_problem(response, "http.request_timeout")
        assert conn.closed_by_server(1.0)
    assert BODY_TIMEOUT - 0.2 <= elapsed <= BODY_TIMEOUT + SLACK, elapsed


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(get(b"/v1/echo"))
        response = conn.read_response(HEAD_TIMEOUT + 2)
        assert response is not None and response.status == 200
        started = time.monotonic()
        closed_after = conn.wait_closed(IDLE_TIMEOUT + 2 * SLACK)
        assert closed_after is not None, "an idle keep-alive connection was kept open"
        assert IDLE_TIMEOUT - 0.2 <= time.monotonic() - started <= IDLE_TIMEOUT + SLACK
        assert conn.buffer == b"", "an idle connection is closed silently, without a 408"


def test_each_request_restarts_the_idle_timer(hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        for i in range(2):  # 2 x 0.75 idle_timeout apart: longer than idle_timeout in total
            conn.send(get(b"/v1/echo?n=%d" % i))
            response = conn.read_response(HEAD_TIMEOUT + 2)
            assert response is not None and response.status == 200
            time.sleep(IDLE_TIMEOUT * 0.75)
        conn.send(get(b"/v1/echo?n=last"))
        response = conn.read_response(HEAD_TIMEOUT + 2)
        assert response is not None and response.status == 200


def test_second_request_head_has_its_own_deadline(hardened_gateway: Gateway) -> None:
    """After a good request, a trickling second head is cut at the head deadline, not the idle timeout."""
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(get(b"/v1/echo"))
        assert (first := conn.read_response(HEAD_TIMEOUT + 2)) is not None and first.status == 200
        started = time.monotonic()
        conn.send_background([b"GET /v1/echo HTTP/1.1\r\n", *(part for i in range(100) for part in
                                                               (0.2, b"X-Drip-%d: 1\r\n" % i))])
        response = conn.read_response(HEAD_TIMEOUT + 2 * SLACK)
        assert response is not None and response.status == 408
        assert time.monotonic() - started <= HEAD_TIMEOUT + SLACK
        assert conn.closed_by_server(1.0)


def test_partial_request_line_then_silence(hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(b"GET /v1/ec")
        response = conn.read_response(HEAD_TIMEOUT + 2 * SLACK)
        elapsed = time.monotonic() - conn.opened
        assert response is not None and response.status == 408
        assert_safe_raw_problem(response, "http.request_timeout")
        assert conn.closed_by_server(1.0)
    assert elapsed <= HEAD_TIMEOUT + SLACK


def test_many_slow_clients_at_once_do_not_delay_others(hardened_gateway: Gateway) -> None:
    """Fifty slowloris connections in flight; a normal request is still answered at once."""
    port = hardened_gateway.ports["http"]
    slow = [RawConnection(port) for _ in range(50)]
    try:
        for conn in slow:
            conn.send(b"GET /v1/echo HTTP/1.1\r\nHost: gw.test\r\nX-A: 1\r\n")
        with RawConnection(port) as conn:
            started = time.monotonic()
            conn.send(get(b"/v1/echo"))
            response = conn.read_response(HEAD_TIMEOUT + 2)
            assert response is not None and response.status == 200
            assert time.monotonic() - started < 0.5
        for conn in slow:
            late = conn.read_response(HEAD_TIMEOUT + 2 * SLACK)
            assert late is not None and late.status == 408
    finally:
        for conn in slow:
            conn.close()
