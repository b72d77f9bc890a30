"""TLS for the gateway listener: a hardened server context, live certificate reload, a dev certificate."""

from __future__ import annotations

import _ssl
import ctypes
import datetime
import ipaddress
import logging
import os
import secrets
import ssl
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ALPN_PROTOCOLS",
    "GROUPS",
    "TLS12_CIPHERS",
    "TlsConfigError",
    "build_server_context",
    "ensure_self_signed",
    "reload_certificate",
    "restrict_groups",
]

logger = logging.getLogger("bastion.tls")

# Mozilla "intermediate" TLS 1.2 suites: ECDHE key exchange with an AEAD cipher only (no CBC, no static
# RSA key exchange, no finite-field DHE).
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
GROUPS = "X25519:P-256:P-384"
ALPN_PROTOCOLS = ("http/1.1",)

DEV_CERT_NAME = "dev-cert.pem"
DEV_KEY_NAME = "dev-key.pem"
_DEV_CERT_DAYS = 365
_SSL_CTRL_SET_GROUPS_LIST = 92  # from openssl/ssl.h

# Key algorithm of the chain loaded into each context we manage; see reload_certificate.
_loaded_key_kind: weakref.WeakKeyDictionary[ssl.SSLContext, str] = weakref.WeakKeyDictionary()


class TlsConfigError(ValueError):
    """A certificate or key cannot be used. The message names files, never their contents."""


def build_server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Return a TLS 1.2/1.3 server context serving ``cert_file`` with ``key_file``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # set_ciphers only governs TLS 1.2 and below; OpenSSL's TLS 1.3 suites are all AEAD already.
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.set_alpn_protocols(list(ALPN_PROTOCOLS))
    restrict_groups(ctx)
    _loaded_key_kind[ctx] = _load_chain(ctx, cert_file, key_file)
    return ctx


def restrict_groups(ctx: ssl.SSLContext) -> bool:
    """Limit key exchange to X25519, P-256 and P-384. Returns False, with a warning, if that fails."""
    # Python 3.11's ssl module cannot set key-exchange groups, so we call OpenSSL's SSL_CTX_ctrl on the
    # SSL_CTX behind the SSLContext via ctypes. On failure OpenSSL's default groups (all still strong) stay
    # in place: the certificate still protects traffic, so we warn rather than refuse to start.
    if sys.implementation.name != "cpython":
        return _groups_not_restricted("not running on CPython")
    try:
        # dlsym on the _ssl extension also searches the libssl it is linked against, which guarantees we
        # reach the same OpenSSL that owns the context. No __file__ means _ssl is built into the binary.
        lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
        ctrl = lib.SSL_CTX_ctrl
        get_options = lib.SSL_CTX_get_options
    except (OSError, AttributeError) as exc:
        return _groups_not_restricted(f"OpenSSL symbols unavailable ({exc})")
    ctrl.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p)
    ctrl.restype = ctypes.c_long
    get_options.argtypes = (ctypes.c_void_p,)
    get_options.restype = ctypes.c_uint64
    # The PySSLContext struct stores its SSL_CTX pointer right after PyObject_HEAD.
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    # Guard against a changed struct layout before writing anything: the pointer must lead to the same
    # options the SSLContext reports.
    if not ssl_ctx or get_options(ssl_ctx) != int(ctx.options):
        return _groups_not_restricted("unexpected SSLContext memory layout")
    if ctrl(ssl_ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, GROUPS.encode("ascii")) != 1:
        return _groups_not_restricted("OpenSSL rejected the group list")
    return True


def _groups_not_restricted(reason: str) -> bool:
    logger.warning(
        "could not restrict TLS key-exchange groups to %s: %s; using OpenSSL defaults", GROUPS, reason
    )
    return False


def reload_certificate(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load a new certificate chain and key into ``ctx``; handshakes started afterwards use it.

    Call it from the thread that accepts connections: OpenSSL does not make changing an SSL_CTX safe
    against handshakes starting concurrently in other threads.
    """
    # Validate on a scratch context first: a failed load_cert_chain can leave the live context holding the
    # new certificate without a matching key, which breaks every new handshake.
    kind = _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_file, key_file)
    previous = _loaded_key_kind.get(ctx)
    # OpenSSL keeps one certificate per key type, so loading e.g. RSA over ECDSA would keep serving the old
    # ECDSA certificate to clients that prefer it.
    if previous is not None and previous != kind:
        raise TlsConfigError(
            f"TLS certificate {Path(cert_file).name!r} has a {kind} key but the running one has a {previous} "
            "key; restart the gateway to change key type"
        )
    _loaded_key_kind[ctx] = _load_chain(ctx, cert_file, key_file)


def _load_chain(ctx: ssl.SSLContext, cert_file: str, key_file: str) -> str:
    """Load the chain into ``ctx``, mapping every failure to TlsConfigError; returns the key algorithm."""
    cert_name, key_name = Path(cert_file).name, Path(key_file).name
    for label, path in (("certificate", cert_file), ("private key", key_file)):
        if not os.path.isfile(path):
            raise TlsConfigError(f"TLS {label} file {Path(path).name!r} does not exist or is not a file")
    try:
        with open(cert_file, "rb") as fh:
            leaf = x509.load_pem_x509_certificates(fh.read())[0]
    except (OSError, ValueError) as exc:
        raise TlsConfigError(f"TLS certificate file {cert_name!r} is not a readable PEM certificate") from exc
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TlsConfigError(
            f"TLS certificate {cert_name!r} and private key {key_name!r} could not be loaded: the key is "
            "unreadable, encrypted, or does not match the certificate"
        ) from exc
    return _key_kind(leaf.public_key())


def _no_password() -> bytes:
    # Encrypted keys are unsupported; an empty answer makes OpenSSL fail instead of prompting on a TTY.
    return b""


def _key_kind(public_key: object) -> str:
    kinds = (
        ("RSA", rsa.RSAPublicKey),
        ("EC", ec.EllipticCurvePublicKey),
        ("Ed25519", ed25519.Ed25519PublicKey),
        ("Ed448", ed448.Ed448PublicKey),
        ("DSA", dsa.DSAPublicKey),
    )
    for name, cls in kinds:
        if isinstance(public_key, cls):
            return name
    return type(public_key).__name__


def ensure_self_signed(data_dir: Path, hostnames: Sequence[str] = ("localhost",)) -> tuple[Path, Path]:
    """Return ``(cert_path, key_path)`` of the development certificate, generating it on first use."""
    tls_dir = data_dir / "tls"
    cert_path, key_path = tls_dir / DEV_CERT_NAME, tls_dir / DEV_KEY_NAME
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)  # mkdir's mode is masked by umask and ignored when the directory exists
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    if isinstance(hostnames, str):  # a bare string is a Sequence[str] of single characters
        hostnames = (hostnames,)
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Key first: if we stop in between, the certificate is missing and the next call regenerates both.
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(
        cert_path, _self_signed_cert(key, hostnames).public_bytes(serialization.Encoding.PEM), 0o644
    )
    logger.warning(
        "generated a self-signed development TLS certificate at %s; it must not be used in production",
        cert_path,
    )
    return cert_path, key_path


def _self_signed_cert(key: ec.EllipticCurvePrivateKey, hostnames: Sequence[str]) -> x509.Certificate:
    alt_names: list[x509.GeneralName] = []
    for host in ("localhost", *hostnames, "127.0.0.1", "::1"):
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in alt_names:
            alt_names.append(entry)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + datetime.timedelta(days=_DEV_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL refuses to write through anything planted at the temp name, and the mode applies at creation so
    # a private key is never readable by others, not even briefly. os.replace makes the file appear whole.
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # umask may have narrowed the creation mode; pin it exactly
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
