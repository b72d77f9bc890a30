"""Hostile and malformed requests, over raw sockets, against the real gateway process.

One parametrized test walks the table in ``corpus.py``; the gateway is shared by the module and its
survival (process alive, no traceback, no unexpected 5xx in the access log) is asserted at teardown and by
the last test here.
"""

from __future__ import annotations

import time

import pytest

from bastion.errors.codes import by_code
from tests.security.conftest import HEAD_TIMEOUT, assert_gateway_healthy
from tests.security.corpus import CLOSE_WITHOUT_RESPONSE, CORPUS, SMUGGLED, Case, get, post
from tests.security.rawclient import HALF_CLOSE, RawConnection, RawResponse, assert_safe_raw_problem
from tests.support.processes import Gateway

ALLOWED_5XX = (501, 505)  # documented refusals: upgrade/CONNECT and HTTP versions


def test_corpus_is_large_and_ids_are_unique() -> None:
    assert len(CORPUS) >= 110
    assert len({case.id for case in CORPUS}) == len(CORPUS)
    categories = {case.category for case in CORPUS}
    assert categories >= {"framing", "host", "request-line", "headers", "uri", "path", "limits", "slow-client"}


def _check_response(case: Case, response: RawResponse) -> None:
    assert response.status == case.expect, (case.id, response.status, response.body[:300])
    assert response.status < 500 or response.status in ALLOWED_5XX, response.status
    assert response.interim == list(case.interim), response.interim
    if response.status >= 400:
        body = assert_safe_raw_problem(response, case.code)
        assert by_code(body["code"]).status == response.status  # a registered code with its own status
        return
    assert case.code is None
    if case.upstream_path is not None:  # proxied to the demo echo: what did the upstream see?
        echoed = response.json()
        assert echoed["path"] == case.upstream_path, echoed
        if case.upstream_query is not None:
            assert echoed["query"] == case.upstream_query, echoed
        if case.body_length is not None:
            assert echoed["body_length"] == case.body_length, echoed


@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_hostile_request(case: Case, hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        if isinstance(case.send, bytes):
            conn.send(case.send)
        else:
            conn.send_background(case.send)  # slow clients keep typing while the answer is awaited
        is_head = isinstance(case.send, bytes) and case.send.startswith(b"HEAD ")
        response = conn.read_response(case.timeout, head_request=is_head)
        if case.expect == CLOSE_WITHOUT_RESPONSE:
            assert response is None, (response.status, response.body[:300]) if response else None
        else:
            assert response is not None, f"closed without a response (reset={conn.reset})"
            _check_response(case, response)

        if case.close:
            assert conn.closed_by_server(1.0), "the connection must be closed after this response"
            # Nothing after the one response: a smuggled or leftover request is never answered.
            assert conn.buffer == b"", conn.buffer[:300]
            half_closed = not isinstance(case.send, bytes) and HALF_CLOSE in case.send
            if response is not None and not half_closed:  # after a FIN the header is a race
                assert response.header("connection") == "close", response.headers
        else:
            assert response is not None and response.header("connection") != "close", response
            assert conn.buffer == b"", conn.buffer[:300]
            # The connection is still in sync: a second request gets its own, fresh answer.
            conn.send(get(b"/v1/follow-up"))
            follow_up = conn.read_response(HEAD_TIMEOUT + 2.0)
            assert follow_up is not None and follow_up.status == 404, follow_up
            assert_safe_raw_problem(follow_up, "route.not_found")
            if response.header("x-request-id"):
                assert follow_up.header("x-request-id") != response.header("x-request-id")
        if case.within is not None:
            elapsed = time.monotonic() - conn.opened
            assert elapsed <= case.within, f"answered/closed after {elapsed:.2f}s (limit {case.within}s)"


@pytest.mark.parametrize("smuggle", [
    post(b"Content-Length: %d" % (5 + len(SMUGGLED)), b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED),
    post(b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n" + SMUGGLED),
    post(b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n" + SMUGGLED, version=b"HTTP/1.0"),
    post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", body=b"0\r\n\r\n" + SMUGGLED),
    post(b"Content-Length: 0", b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED),
    post(b"Transfer-Encoding: chunked", b" chunked", body=b"0\r\n\r\n" + SMUGGLED),
    # The smuggled request in a second packet, after the refusal has been written.
    (post(b"Content-Length: %d" % (5 + len(SMUGGLED)), b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), SMUGGLED),
], ids=["cl-te", "te-cl", "cl-te-http10", "te-te", "cl-cl", "te-fold", "cl-te-two-packets"])
def test_smuggled_request_is_never_answered(smuggle: bytes | tuple[bytes, bytes], hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        if isinstance(smuggle, tuple):
            conn.send(smuggle[0])
            time.sleep(0.05)
            conn.send(smuggle[1])
        else:
            conn.send(smuggle)
        assert conn.wait_closed(HEAD_TIMEOUT + 2.0) is not None, "the connection must be closed"
    everything = conn.buffer
    assert everything.count(b"HTTP/1.1 ") == 1, everything
    assert everything.startswith(b"HTTP/1.1 400 "), everything[:100]
    assert b"smuggled" not in everything


def test_refused_requests_never_reach_the_upstream(hardened_gateway: Gateway) -> None:
    """A refusal happens before any handler: the access log has no upstream status for it."""
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(get(b"/v1/echo?refused-upgrade=1", b"Upgrade: websocket", b"Connection: upgrade"))
        response = conn.read_response(HEAD_TIMEOUT + 2.0)
        assert response is not None and response.status == 501
        request_id = response.header("x-request-id")
    records = hardened_gateway.wait_access_log(1)
    deadline = time.monotonic() + 5
    while not any(r["request_id"] == request_id for r in records) and time.monotonic() < deadline:
        time.sleep(0.05)
        records = hardened_gateway.access_log()
    [record] = [r for r in records if r["request_id"] == request_id]
    assert record["status"] == 501 and record["reject_code"] == "http.upgrade_unsupported"
    assert record["upstream_status"] is None


def test_gateway_survived_the_corpus(hardened_gateway: Gateway) -> None:
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(get(b"/v1/echo"))
        response = conn.read_response(HEAD_TIMEOUT + 2.0)
    assert response is not None and response.status == 200
    assert_gateway_healthy(hardened_gateway)


def test_broken_bodies_do_not_eject_the_upstream(hardened_gateway: Gateway) -> None:
    """Refused bodies stop the proxying at once: no upstream timeout is charged to the (healthy) target."""
    broken = [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhello0\r\n\r\n", b"3\r\nhello\r\n0\r\n\r\n"]
    for i in range(8):
        for target in (b"/v1/echo", b"/v1/nope"):
            with RawConnection(hardened_gateway.ports["http"]) as conn:
                conn.send(post(b"Transfer-Encoding: chunked", target=target, body=broken[i % len(broken)]))
                response = conn.read_response(HEAD_TIMEOUT + 2.0)
                # An undeclared route may be answered from the head alone, before the body breaks.
                expected = {400} if target == b"/v1/echo" else {400, 404}
                assert response is not None and response.status in expected
    time.sleep(0.5)
    with RawConnection(hardened_gateway.ports["http"]) as conn:
        conn.send(get(b"/v1/echo"))
        response = conn.read_response(HEAD_TIMEOUT + 2.0)
    assert response is not None and response.status == 200
    logs = hardened_gateway.logs()
    assert "ejected" not in logs
    assert "failed (request_id=" not in logs
