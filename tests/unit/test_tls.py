"""Tests for the TLS server context, certificate reload and the development certificate."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import queue
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.server.tls import (
    TlsConfigError,
    build_server_context,
    ensure_self_signed,
    reload_certificate,
    restrict_groups,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command-line tool is not installed")
# s_client prints "Cipher is (NONE)" when no handshake completed.
NEGOTIATED = re.compile(r"Cipher is (?!\(NONE\))\S+")


class LoopbackTlsServer:
    """Accepts one TLS connection at a time on 127.0.0.1 and records each handshake outcome."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._ctx = ctx
        # Bound to port 0 up front, so the port is known and listening before any client connects.
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.outcomes: queue.Queue[tuple[str, str]] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls-test-server", daemon=True)

    def __enter__(self) -> LoopbackTlsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_outcome(self) -> tuple[str, str]:
        return self.outcomes.get(timeout=10)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self._stopping.is_set():
                conn.close()
                return
            conn.settimeout(10)
            try:
                with self._ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    cipher = tls_conn.cipher()
                    self.outcomes.put(("ok", f"{tls_conn.version()} {cipher[0] if cipher else ''}"))
                    with contextlib.suppress(OSError):  # the client hanging up abruptly is fine
                        while tls_conn.recv(1024):
                            pass
            except OSError as exc:  # includes ssl.SSLError
                self.outcomes.put(("error", str(exc)))
            finally:
                conn.close()

    def stop(self) -> None:
        self._stopping.set()
        # Closing a listener does not wake a blocked accept(); a connection does, and the flag ends the loop.
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        self._thread.join(timeout=10)
        self._listener.close()
        assert not self._thread.is_alive()


class ClientResult:
    def __init__(self, tls_conn: ssl.SSLSocket) -> None:
        self.version = tls_conn.version()
        cipher = tls_conn.cipher()
        assert cipher is not None
        self.cipher: str = cipher[0]
        self.alpn = tls_conn.selected_alpn_protocol()
        self.peercert: dict[str, Any] = dict(tls_conn.getpeercert() or {})


def handshake(port: int, client: ssl.SSLContext) -> ClientResult:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls_conn,
    ):
        return ClientResult(tls_conn)


def trusting(cert_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert_path))


def serial_of(cert_path: Path) -> int:
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number


def is_aead(cipher: str) -> bool:
    # TLS 1.3 suites (TLS_*) are all AEAD; TLS 1.2 names carry the AEAD mode.
    return cipher.startswith("TLS_") or any(mode in cipher for mode in ("GCM", "CHACHA20-POLY1305", "CCM"))


def s_client(port: int, *args: str) -> tuple[int, str]:
    assert OPENSSL is not None
    proc = subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


@pytest.fixture
def dev_cert(tmp_path: Path) -> tuple[Path, Path]:
    return ensure_self_signed(tmp_path / "data")


@pytest.fixture
def server_ctx(dev_cert: tuple[Path, Path]) -> ssl.SSLContext:
    cert, key = dev_cert
    return build_server_context(str(cert), str(key))


@contextlib.contextmanager
def serving(ctx: ssl.SSLContext) -> Iterator[LoopbackTlsServer]:
    with LoopbackTlsServer(ctx) as srv:
        yield srv


# --- development certificate -----------------------------------------------------------------------------


def test_ensure_self_signed_creates_private_key_and_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    with caplog.at_level(logging.WARNING, logger="bastion.tls"):
        cert_path, key_path = ensure_self_signed(data_dir, hostnames=("gateway.internal", "10.0.0.7"))

    assert cert_path == data_dir / "tls" / "dev-cert.pem"
    assert key_path == data_dir / "tls" / "dev-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "tls").stat().st_mode) == 0o700
    assert not [p for p in (data_dir / "tls").iterdir() if p.name.endswith(".tmp")]
    warning = [r for r in caplog.records if r.name == "bastion.tls" and r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert str(cert_path) in warning[0].getMessage()
    assert "production" in warning[0].getMessage()

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert cert.public_key() == key.public_key()
    assert cert.subject == cert.issuer

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "gateway.internal"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.7"),
    }
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) <= lifetime <= datetime.timedelta(days=366)


def test_ensure_self_signed_second_call_reuses_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert_path, key_path = ensure_self_signed(tmp_path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (cert_path, key_path)}
    caplog.clear()

    with caplog.at_level(logging.WARNING, logger="bastion.tls"):
        again = ensure_self_signed(tmp_path)

    assert again == (cert_path, key_path)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (cert_path, key_path)} == before
    assert not caplog.records


def test_ensure_self_signed_regenerates_a_half_written_pair(tmp_path: Path) -> None:
    cert_path, key_path = ensure_self_signed(tmp_path)
    old_key = key_path.read_bytes()
    cert_path.unlink()

    ensure_self_signed(tmp_path)

    assert key_path.read_bytes() != old_key
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert cert.public_key() == key.public_key()


# --- context configuration --------------------------------------------------------------------------------


def test_restrict_groups_works_here(server_ctx: ssl.SSLContext) -> None:
    assert restrict_groups(server_ctx) is True


def test_server_context_settings(server_ctx: ssl.SSLContext) -> None:
    assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert server_ctx.options & ssl.OP_NO_COMPRESSION
    assert server_ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert server_ctx.options & ssl.OP_NO_RENEGOTIATION
    tls12 = [c for c in server_ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["aead"], cipher["name"]
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]


@pytest.mark.parametrize("bad", ["missing-cert", "missing-key", "garbage-cert", "garbage-key", "mismatch"])
def test_build_server_context_rejects_bad_files(tmp_path: Path, bad: str) -> None:
    cert, key = ensure_self_signed(tmp_path / "a")
    _, other_key = ensure_self_signed(tmp_path / "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("SECRET-CONTENT-NOT-FOR-CLIENTS\n")
    cert_file, key_file = {
        "missing-cert": (tmp_path / "nope.pem", key),
        "missing-key": (cert, tmp_path / "nope.pem"),
        "garbage-cert": (garbage, key),
        "garbage-key": (cert, garbage),
        "mismatch": (cert, other_key),
    }[bad]

    with pytest.raises(TlsConfigError) as info:
        build_server_context(str(cert_file), str(key_file))

    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "SECRET-CONTENT" not in message
    assert Path(cert_file).name in message or Path(key_file).name in message
    assert str(tmp_path) not in message  # names only, no filesystem layout


# --- handshakes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_default_client_handshake_uses_aead(
    server_ctx: ssl.SSLContext, dev_cert: tuple[Path, Path], max_version: ssl.TLSVersion
) -> None:
    client = trusting(dev_cert[0])
    client.maximum_version = max_version
    client.set_alpn_protocols(["h2", "http/1.1"])

    with serving(server_ctx) as srv:
        result = handshake(srv.port, client)
        assert srv.next_outcome()[0] == "ok"

    assert result.version in {"TLSv1.3", "TLSv1.2"}
    assert result.version == ("TLSv1.3" if max_version == ssl.TLSVersion.TLSv1_3 else "TLSv1.2")
    assert is_aead(result.cipher), result.cipher
    assert result.alpn == "http/1.1"
    assert int(result.peercert["serialNumber"], 16) == serial_of(dev_cert[0])


def test_tls11_client_is_refused(server_ctx: ssl.SSLContext) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            client.minimum_version = ssl.TLSVersion.TLSv1
            client.maximum_version = ssl.TLSVersion.TLSv1_1
            # Security level 0 lets a modern OpenSSL actually send a TLS 1.1 ClientHello.
            client.set_ciphers("DEFAULT:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            pass  # this OpenSSL cannot even configure TLS 1.1; the handshake must still fail below

    with serving(server_ctx) as srv:
        with pytest.raises(ssl.SSLError) as info:
            handshake(srv.port, client)
        kind, detail = srv.next_outcome()

    assert kind == "error"
    if "ALERT_PROTOCOL_VERSION" in str(info.value):  # the ClientHello reached the server, which refused it
        assert "UNSUPPORTED_PROTOCOL" in detail


def test_tls12_cbc_only_client_is_refused(server_ctx: ssl.SSLContext, dev_cert: tuple[Path, Path]) -> None:
    client = trusting(dev_cert[0])
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")

    with serving(server_ctx) as srv:
        with pytest.raises(ssl.SSLError):
            handshake(srv.port, client)
        kind, detail = srv.next_outcome()

    assert kind == "error"
    assert "NO_SHARED_CIPHER" in detail  # refused by the server, not by the client's own settings


@needs_openssl
@pytest.mark.parametrize(
    ("group", "version"),
    [("secp521r1", "-tls1_3"), ("secp521r1", "-tls1_2"), ("ffdhe2048", "-tls1_3")],
)
def test_client_with_only_other_groups_is_refused(
    server_ctx: ssl.SSLContext, group: str, version: str
) -> None:
    with serving(server_ctx) as srv:
        rc, output = s_client(srv.port, "-groups", group, version)
        kind, _ = srv.next_outcome()

    assert kind == "error", output
    assert rc != 0, output
    assert not NEGOTIATED.search(output), output


@needs_openssl
@pytest.mark.parametrize(
    ("group", "version", "temp_key"),
    [
        ("X25519", "-tls1_3", "X25519"),
        ("P-256", "-tls1_3", "prime256v1"),
        ("P-384", "-tls1_3", "secp384r1"),
        # TLS 1.2 also needs the ECDSA certificate's curve (P-256) in the client's list.
        ("X25519:P-256", "-tls1_2", "X25519"),
    ],
)
def test_client_with_allowed_group_succeeds(
    server_ctx: ssl.SSLContext, dev_cert: tuple[Path, Path], group: str, version: str, temp_key: str
) -> None:
    with serving(server_ctx) as srv:
        rc, output = s_client(
            srv.port, "-groups", group, version, "-CAfile", str(dev_cert[0]), "-servername", "localhost"
        )
        kind, _ = srv.next_outcome()

    assert kind == "ok", output
    assert rc == 0, output
    assert NEGOTIATED.search(output), output
    assert "Verify return code: 0 (ok)" in output, output
    temp_key_line = next(line for line in output.splitlines() if "Server Temp Key:" in line)
    assert temp_key in temp_key_line, output


# --- certificate reload ------------------------------------------------------------------------------------


def test_reload_certificate_serves_new_certificate(tmp_path: Path) -> None:
    old_cert, old_key = ensure_self_signed(tmp_path / "old")
    new_cert, new_key = ensure_self_signed(tmp_path / "new")
    ctx = build_server_context(str(old_cert), str(old_key))

    with serving(ctx) as srv:
        before = handshake(srv.port, trusting(old_cert))
        assert int(before.peercert["serialNumber"], 16) == serial_of(old_cert)

        reload_certificate(ctx, str(new_cert), str(new_key))

        result = handshake(srv.port, trusting(new_cert))
        assert int(result.peercert["serialNumber"], 16) == serial_of(new_cert)
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(srv.port, trusting(old_cert))


def test_failed_reload_raises_and_keeps_serving_old_certificate(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(tmp_path / "live")
    other_cert, other_key = ensure_self_signed(tmp_path / "other")
    garbage = tmp_path / "broken.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    ctx = build_server_context(str(cert), str(key))

    for bad_cert, bad_key in [
        (tmp_path / "missing.pem", other_key),
        (garbage, other_key),
        (other_cert, key),  # the live key does not match the new certificate
    ]:
        with pytest.raises(TlsConfigError) as info:
            reload_certificate(ctx, str(bad_cert), str(bad_key))
        assert bad_cert.name in str(info.value) or bad_key.name in str(info.value)

    with serving(ctx) as srv:
        result = handshake(srv.port, trusting(cert))
    assert int(result.peercert["serialNumber"], 16) == serial_of(cert)


def test_reload_refuses_a_key_type_change(tmp_path: Path) -> None:
    cert, key = ensure_self_signed(tmp_path / "ec")
    rsa_cert, rsa_key = _write_rsa_cert(tmp_path / "rsa")
    ctx = build_server_context(str(cert), str(key))

    with pytest.raises(TlsConfigError, match="key type"):
        reload_certificate(ctx, str(rsa_cert), str(rsa_key))

    with serving(ctx) as srv:
        result = handshake(srv.port, trusting(cert))
    assert int(result.peercert["serialNumber"], 16) == serial_of(cert)


def _write_rsa_cert(directory: Path) -> tuple[Path, Path]:
    directory.mkdir()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path
