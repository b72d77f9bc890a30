"""The HTTPS listener of the real gateway (self-signed development certificate) and the HTTP redirect."""

from __future__ import annotations

import contextlib
import socket
import ssl
import stat
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Gateway, assert_safe_problem

HSTS = "max-age=31536000; includeSubDomains"


def cert_dir(gateway: Gateway) -> Path:
    return gateway.config_path.parent / ".bastion" / "tls"


def verifying_client(gateway: Gateway) -> httpx.Client:
    """Trusts only the gateway's generated certificate, and checks the name (127.0.0.1) against it."""
    context = ssl.create_default_context(cafile=str(cert_dir(gateway) / "dev-cert.pem"))
    return httpx.Client(base_url=gateway.url, verify=context, timeout=10.0)


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_https_with_a_verified_certificate(tls_gateway: Gateway) -> None:
    with verifying_client(tls_gateway) as client:
        response = client.get("/v1/users")
    assert response.status_code == 200
    assert response.json()[0]["id"] == 1
    assert response.extensions["http_version"] == b"HTTP/1.1"


def test_hsts_on_every_https_response_and_no_server_header(tls_gateway: Gateway) -> None:
    with verifying_client(tls_gateway) as client:
        responses = {
            "ok": client.get("/v1/users"),
            "head": client.head("/v1/users"),
            "not-found": client.get("/nope"),
            "method": client.delete("/v1/users"),
            "upstream-error": client.get("/v1/boom"),
            "too-large": client.post("/v1/echo", content=b"x" * (1024 * 1024 + 1)),
        }
        with client.stream("GET", "/v1/big", params={"kb": 64}) as streamed:
            streamed.read()
    assert [r.status_code for r in responses.values()] == [200, 200, 404, 405, 500, 413]
    for name, response in [*responses.items(), ("streamed", streamed)]:
        assert response.headers.get("strict-transport-security") == HSTS, name
        assert "server" not in response.headers, name
    assert_safe_problem(responses["not-found"], "route.not_found")


def test_plain_http_redirects_get_to_https(tls_gateway: Gateway) -> None:
    http_port, https_port = tls_gateway.ports["http"], tls_gateway.ports["https"]
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=5.0) as client:
        response = client.get("/v1/users/2?expand=orders&x=%2F")
    assert response.status_code == 308
    assert response.headers["location"] == f"https://127.0.0.1:{https_port}/v1/users/2?expand=orders&x=%2F"
    assert response.headers["connection"] == "close"
    assert "strict-transport-security" not in response.headers  # HSTS only means something over HTTPS
    with verifying_client(tls_gateway) as client:
        assert client.get(response.headers["location"]).status_code == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked", "huge-announced"])
def test_plain_http_redirects_post_without_reading_the_body(tls_gateway: Gateway, framing: str) -> None:
    http_port, https_port = tls_gateway.ports["http"], tls_gateway.ports["https"]
    body = b'{"name": "Eve", "password": "sent-in-clear"}'
    if framing == "chunked":
        length, body = "Transfer-Encoding: chunked", b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    elif framing == "huge-announced":
        length = "Content-Length: 50000000"  # 50 MB announced, a few bytes sent: the answer must not wait
    else:
        length = f"Content-Length: {len(body)}"
    head = (f"POST /v1/users?q=1 HTTP/1.1\r\nHost: localhost:{http_port}\r\nContent-Type: application/json\r\n"
            f"{length}\r\n\r\n").encode()
    raw = raw_http(http_port, head + body)
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 308 Permanent Redirect", raw
    headers = rest.split(b"\r\n\r\n", 1)[0].lower()
    assert f"location: https://localhost:{https_port}/v1/users?q=1".encode() in headers
    assert b"connection: close" in headers
    assert raw.count(b"HTTP/1.1") == 1  # the body was not read as a second request


def test_generated_key_is_private(tls_gateway: Gateway) -> None:
    key = cert_dir(tls_gateway) / "dev-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_dir(tls_gateway).stat().st_mode) == 0o700


def _client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = version
    context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer the old protocol at all
    return context


def _handshake(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            context.wrap_socket(sock, server_hostname="localhost") as tls:
        return str(tls.version())


def _old_protocol_server(gateway: Gateway) -> tuple[socket.socket, threading.Thread]:
    """A one-shot local TLS 1.1 server: proves this client can really speak TLS 1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.load_cert_chain(cert_dir(gateway) / "dev-cert.pem", cert_dir(gateway) / "dev-key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError), listener.accept()[0] as conn, \
                context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_client_is_refused(tls_gateway: Gateway) -> None:
    port = tls_gateway.ports["https"]
    assert _handshake(port, _client_context(ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"
    old = _client_context(ssl.TLSVersion.TLSv1_1)
    listener, thread = _old_protocol_server(tls_gateway)
    try:
        control = _handshake(listener.getsockname()[1], old)
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL build cannot speak TLS 1.1 at all: {exc}")
    finally:
        thread.join(5)
        listener.close()
    assert control == "TLSv1.1"
    with pytest.raises(ssl.SSLError):  # the gateway ends the handshake (an alert or a plain close)
        _handshake(port, old)
