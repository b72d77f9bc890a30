"""Pipelined requests on one connection: answered in order, once each, and a bad one ends the connection."""

from __future__ import annotations

import time

from tests.security.conftest import HEAD_TIMEOUT
from tests.security.corpus import chunked, get, post
from tests.security.rawclient import RawConnection, RawResponse, assert_safe_raw_problem
from tests.support.processes import Gateway

TIMEOUT = HEAD_TIMEOUT + 4.0


def _read_all(conn: RawConnection, count: int) -> list[RawResponse]:
    responses = []
    for _ in range(count):
        response = conn.read_response(TIMEOUT)
        assert response is not None, f"closed after {len(responses)} responses"
        responses.append(response)
    return responses


def _pipelined_gets(gateway: Gateway, count: int) -> None:
    with RawConnection(gateway.ports["http"]) as conn:
        conn.send(b"".join(get(b"/v1/echo?n=%d" % i) for i in range(count)))
        responses = _read_all(conn, count)
        assert [r.status for r in responses] == [200] * count
        assert [r.json()["query"] for r in responses] == [f"n={i}" for i in range(count)]  # in order
        ids = [r.header("x-request-id") for r in responses]
        assert len(set(ids)) == count and all(ids)
        # Still open and in sync.
        conn.send(get(b"/v1/echo?n=last"))
        last = conn.read_response(TIMEOUT)
        assert last is not None and last.json()["query"] == "n=last"
        assert conn.buffer == b""


def test_two_pipelined_gets(hardened_gateway: Gateway) -> None:
    _pipelined_gets(hardened_gateway, 2)


def test_ten_pipelined_gets(hardened_gateway: Gateway) -> None:
    _pipelined_gets(hardened_gateway, 10)


def test_pipelined_requests_with_bodies(hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(post(b"Content-Length: 5", body=b"hello")
                  + chunked(body=b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
                  + get(b"/v1/echo?after=bodies"))
        first, second, third = _read_all(conn, 3)
    assert (first.json()["method"], first.json()["body_length"]) == ("POST", 5)
    assert (second.json()["method"], second.json()["body_length"]) == ("POST", 7)
    assert third.json()["query"] == "after=bodies"


def test_good_then_malformed(hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(get(b"/v1/echo?n=1") + b"GET /v1/echo HTTP/1.1\r\nHost: gw.test\r\nBad Header: x\r\n\r\n")
        good, bad = _read_all(conn, 2)
        assert good.status == 200 and good.header("connection") != "close"
        assert bad.status == 400 and bad.header("connection") == "close"
        assert_safe_raw_problem(bad, "http.malformed")
        assert conn.closed_by_server(1.0)
        assert conn.buffer == b""


def test_queued_requests_are_answered_before_the_refusal(hardened_gateway: Gateway) -> None:
    """Two good requests and then a smuggling attempt: 200, 200, 400 in that order, then close."""
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(get(b"/v1/slow?ms=200") + get(b"/v1/echo?n=2")
                  + post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"))
        first, second, third = _read_all(conn, 3)
        assert (first.status, second.status, third.status) == (200, 200, 400)
        assert second.json()["query"] == "n=2"
        assert_safe_raw_problem(third, "http.ambiguous_framing")
        assert conn.closed_by_server(1.0) and conn.buffer == b""


def test_queued_request_with_broken_body_is_never_forwarded(hardened_gateway: Gateway) -> None:
    """A pipelined request whose body turns out malformed gets the refusal, and no handler runs for it."""
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(get(b"/v1/slow?ms=300")
                  + chunked(body=b"5\r\nhello\r\nzz\r\n").replace(b"/v1/echo", b"/v1/echo?tag=broken-queued"))
        first, second = _read_all(conn, 2)
        assert first.status == 200
        assert second.status == 400
        assert_safe_raw_problem(second, "http.malformed")
        assert conn.closed_by_server(1.0) and conn.buffer == b""
    time.sleep(0.2)
    records = hardened_gateway.access_log()
    assert not [r for r in records if r["query"] == "tag=broken-queued"], "the broken request reached a handler"
