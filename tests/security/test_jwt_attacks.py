"""JWT attacks against the real gateway process, in front of the real demo upstream, one test per attack.

The tokens come from a real identity provider on a loopback socket (tests/support/test_idp.py) that the
gateway trusts as issuer `idp`. The suite is written against ``Target`` (how to mint a token, which keys
exist, how often the keys were fetched), so that the built-in authorization server can be added as a second
``target`` parameter: ``TARGETS`` names them (the test IdP, and the built-in authorization server as issuer
``bastion``), ``_start_target`` builds one.

Every refusal must be the same 401 (`auth.credentials_invalid`, `WWW-Authenticate: Bearer ...
error="invalid_token"`) with no hint of the reason, and the upstream must never see the request.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from joserfc.jwk import ECKey
from joserfc.jws import JWSRegistry

from tests.security.conftest import assert_gateway_healthy
from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config, start_gateway
from tests.support.test_idp import TestIdP, oauth_gateway_config

MAX_TOKEN_BYTES = 4096
TARGETS = ["external", "bastion"]  # a test IdP on loopback, and the built-in authorization server


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any] | str, claims: dict[str, Any] | str, sign: Callable[[bytes], bytes]) -> str:
    head = header if isinstance(header, str) else json.dumps(header)
    body = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{b64(head.encode())}.{b64(body.encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def signer(algorithm: str, key: Any) -> Callable[[bytes], bytes]:
    """Sign with joserfc's algorithm directly: its serializer refuses the headers the attacks need."""
    return lambda data: JWSRegistry.algorithms[algorithm].sign(data, key)


@dataclass
class Target:
    """A trusted issuer as the attacks see it."""

    name: str
    gateway: Gateway
    claims: Callable[..., dict[str, Any]]  # valid claims, with overrides (None removes a claim)
    keys: dict[str, tuple[str, Any]]  # kid -> (algorithm, private joserfc key) the issuer really signs with
    jwks_requests: Callable[[], int]
    max_token_bytes: int
    expected_reasons: list[tuple[str, str | tuple[str, ...]]] = field(default_factory=list)

    @property
    def kid(self) -> str:
        return next(iter(self.keys))

    def header(self, kid: str | None = None, **overrides: Any) -> dict[str, Any]:
        kid = kid or self.kid
        header = {"alg": self.keys[kid][0], "kid": kid, "typ": "at+jwt", **overrides}
        return {k: v for k, v in header.items() if v is not None}

    def token(self, *, kid: str | None = None, header: dict[str, Any] | None = None,
              algorithm: str | None = None, **claims: Any) -> str:
        """Signed with the issuer's real key (``algorithm`` may differ from the key's, for switch attacks)."""
        kid = kid or self.kid
        key_algorithm, key = self.keys[kid]
        head = self.header(kid, **(header or {}))
        if algorithm:
            head["alg"] = algorithm
        return compact(head, self.claims(**claims), signer(algorithm or key_algorithm, key))

    def get(self, token: str | None, path: str = "/v1/users", **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        with self.gateway.client() as client:
            return client.get(path, headers=headers, **kwargs)

    def assert_refused(self, token: str, reason: str | tuple[str, ...] | None = None) -> None:
        """The uniform 401; ``reason``: what the access log must say, or one of several (never the client)."""
        response = self.get(token)
        assert response.status_code == 401, (response.status_code, response.text)
        assert response.headers["www-authenticate"] == 'Bearer realm="bastion", error="invalid_token"'
        body = assert_safe_problem(response, "auth.credentials_invalid")
        assert body["detail"] == "The access token was not accepted."  # the same answer for every reason
        if reason is not None:
            self.expected_reasons.append((response.headers["x-request-id"], reason))

    def check_logged_reasons(self) -> None:
        """Read the access log once for the whole test (it is written in batches every 0.25 s)."""
        expected, self.expected_reasons = self.expected_reasons, []
        deadline = time.monotonic() + 5
        while expected:
            logged = {r.get("request_id"): str(r.get("reason")) for r in self.gateway.access_log()}
            if all(request_id in logged for request_id, _ in expected):
                for request_id, reason in expected:
                    options = reason if isinstance(reason, tuple) else (reason,)
                    assert any(o in logged[request_id] for o in options), (reason, logged[request_id])
                return
            assert time.monotonic() < deadline, "refused requests missing from the access log"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def attacker() -> Iterator[TestIdP]:
    """The attacker's own key server: tokens point the gateway at it (jku, x5u); it must never be asked."""
    server = TestIdP(algorithm="ES256")
    yield server
    server.stop()


def _start_target(kind: str, upstream: Upstream, workdir: Path) -> tuple[Target, Callable[[], None]]:
    if kind == "bastion":
        return _start_builtin_target(upstream, workdir)
    idp = TestIdP(algorithm="ES256")
    idp.add_key("RS256", kid="rsa-1")
    config = oauth_gateway_config(upstream.url, idp, issuer={
        "max_token_bytes": MAX_TOKEN_BYTES, "jwks_cache": {"refetch_interval": 300}},
        policy={"failed_auth": {"max_failures": 100000}})
    gateway = start_gateway(config, workdir)
    keys = {kid: (idp.key(kid).algorithm, idp.key(kid).key) for kid in ("key-1", "rsa-1")}
    target = Target("idp", gateway, idp.claims, keys, lambda: idp.count("jwks"), MAX_TOKEN_BYTES)

    def stop() -> None:
        gateway.stop()
        idp.stop()

    return target, stop


def _start_builtin_target(upstream: Upstream, workdir: Path) -> tuple[Target, Callable[[], None]]:
    """The built-in authorization server as issuer `bastion`. Its tokens are minted here with its real
    signing key, read from the store with the gateway's pepper, so that any claim can be tried."""
    config = base_config(upstream.url)
    v1 = config["apis"][0]
    v1["public"] = False
    v1["policies"] = {"oauth2": {"failed_auth": {"max_failures": 100000}}}
    config["oauth"] = {"server": {"enabled": True, "issuer": "http://127.0.0.1"}}

    def with_ports(config: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
        config["oauth"]["server"]["issuer"] = f"http://127.0.0.1:{ports['http']}"
        return config

    gateway = start_gateway(config, workdir, with_ports=with_ports)
    kid, algorithm, private = asyncio.run(_builtin_signing_key(gateway))
    issuer = gateway.config["oauth"]["server"]["issuer"]

    def claims(**overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        values: dict[str, Any] = {"iss": issuer, "aud": "bastion", "sub": "app-1", "client_id": "app-1",
                                  "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex, "scope": "users:read",
                                  "bst_consumer": "consumer-1"}
        values.update(overrides)
        return {k: v for k, v in values.items() if v is not None}

    target = Target("bastion", gateway, claims, {kid: (algorithm, private)}, lambda: 0, 8192)
    return target, gateway.stop


async def _builtin_signing_key(gateway: Gateway) -> tuple[str, str, Any]:
    from bastion.config.model import GatewayConfig
    from bastion.identity.service import IdentityService, identity_settings
    from bastion.oauth.server.keys import SigningKeys
    from bastion.oauth.server.store import OAuthStore

    config = GatewayConfig.model_validate(gateway.config)
    service = IdentityService(identity_settings(config, gateway.config_path.parent))
    try:
        await service.prepare()
        keys = SigningKeys(OAuthStore(service.store.engine, service.hasher), service.settings.pepper,
                           config.oauth.server.signing.algorithm)
        await keys.load()
        return keys.signing_key()
    finally:
        await service.close()


@pytest.fixture(scope="module", params=TARGETS)
def target(request: pytest.FixtureRequest, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Target]:
    built, stop = _start_target(request.param, upstream, tmp_path_factory.mktemp(f"jwt-{request.param}"))
    try:
        yield built
        assert_gateway_healthy(built.gateway, allowed_5xx=frozenset())  # no attack may cause a 5xx or a traceback
    finally:
        stop()


@pytest.fixture(autouse=True)
def logged_reasons_match(target: Target) -> Iterator[None]:
    """Each refusal's precise reason (log only) names the attack, so a test fails if a check is removed."""
    target.expected_reasons.clear()
    yield
    target.check_logged_reasons()


def attacker_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "attacker"})


# -- the baseline: a valid token works, so every refusal below is the attack's doing ------------------


def test_valid_tokens_are_accepted(target: Target) -> None:
    for kid in target.keys:
        response = target.get(target.token(kid=kid))
        assert response.status_code == 200, response.text


# -- the attacks ---------------------------------------------------------------------------------------


def test_alg_none(target: Target) -> None:
    for alg in ("none", "None", "nOnE"):
        target.assert_refused(compact(target.header(alg=alg), target.claims(), lambda _: b""), "base64url")
        target.assert_refused(compact(target.header(alg=alg), target.claims(), lambda _: b"x"), "alg none")


def test_hs256_signed_with_the_public_key_as_hmac_secret(target: Target) -> None:
    for kid, (_, private) in target.keys.items():
        public = type(private).import_key(private.as_dict(private=False))
        for secret in (public.as_pem(private=False), public.as_der(private=False),
                       json.dumps(public.as_dict(private=False)).encode()):
            for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
                def mac(data: bytes, secret: bytes = secret, digest: Any = digest) -> bytes:
                    return hmac.new(secret, data, digest).digest()

                target.assert_refused(compact(target.header(kid, alg=alg), target.claims(), mac), "shared-secret")


def test_jku_pointing_to_attacker_keys(target: Target, attacker: TestIdP) -> None:
    key = attacker.key().key
    header = target.header(kid=None, jku=attacker.jwks_uri) | {"kid": attacker.key().key.kid, "alg": "ES256"}
    before = attacker.count("jwks")
    target.assert_refused(compact(header, target.claims(), signer("ES256", key)), "jku")
    # and with the real kid: the header still names a key source
    target.assert_refused(compact(target.header(jku=attacker.jwks_uri) | {"alg": "ES256"}, target.claims(),
                                  signer("ES256", key)), "jku")
    assert attacker.count("jwks") == before  # never fetched


def test_x5u_pointing_to_attacker_certificate(target: Target, attacker: TestIdP) -> None:
    before = attacker.count("jwks")
    header = target.header(x5u=attacker.jwks_uri) | {"alg": "ES256"}
    target.assert_refused(compact(header, target.claims(), signer("ES256", attacker.key().key)), "x5u")
    assert attacker.count("jwks") == before


def test_embedded_jwk_of_the_attacker(target: Target) -> None:
    key = attacker_key()
    for kid in (target.kid, "attacker"):
        header = target.header(jwk=key.as_dict(private=False)) | {"alg": "ES256", "kid": kid}
        target.assert_refused(compact(header, target.claims(), signer("ES256", key)), "jwk")


def test_embedded_x5c_certificate_of_the_attacker(target: Target) -> None:
    key = attacker_key()
    private = key.private_key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, target.claims()["iss"])])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(1).not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=1)).sign(private, hashes.SHA256()))
    der = base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()
    header = target.header(x5c=[der]) | {"alg": "ES256"}
    target.assert_refused(compact(header, target.claims(), signer("ES256", key)), "x5c")


def test_crit_header_with_unknown_extension(target: Target) -> None:
    target.assert_refused(target.token(header={"crit": ["exp"], "exp": 1}), "crit")


def test_kid_path_traversal_and_injection(target: Target) -> None:
    key = attacker_key()

    def empty_hmac(data: bytes) -> bytes:  # /dev/null as the key file: an empty HMAC secret
        return hmac.new(b"", data, hashlib.sha256).digest()

    for kid in ("../../../../../../dev/null", "/dev/null", "../../etc/passwd", "x' UNION SELECT 'secret' --",
                "1; DROP TABLE keys", "https://attacker.example/key.pem", "key-1\u0000", "|cat /etc/passwd"):
        target.assert_refused(compact({"alg": "HS256", "kid": kid, "typ": "at+jwt"}, target.claims(), empty_hmac),
                              "shared-secret")
        target.assert_refused(compact({"alg": "ES256", "kid": kid, "typ": "at+jwt"}, target.claims(),
                                      signer("ES256", key)), "unknown kid")


def test_unknown_kid_flood_costs_at_most_one_refetch(target: Target) -> None:
    key = attacker_key()
    before = target.jwks_requests()
    with target.gateway.client() as client:
        for _ in range(40):
            token = compact(target.header(kid=None) | {"kid": uuid.uuid4().hex, "alg": "ES256"}, target.claims(),
                            signer("ES256", key))
            response = client.get("/v1/users", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 401
    assert target.jwks_requests() - before <= 1


def test_attacker_key_under_the_real_kid(target: Target) -> None:
    target.assert_refused(compact(target.header(), target.claims(), signer("ES256", attacker_key())), "bad signature")


def test_expired(target: Target) -> None:
    now = int(datetime.now(UTC).timestamp())
    target.assert_refused(target.token(exp=now - 120, iat=now - 420), "expired")
    target.assert_refused(target.token(exp=None), "no exp")


def test_not_yet_valid(target: Target) -> None:
    now = int(datetime.now(UTC).timestamp())
    target.assert_refused(target.token(nbf=now + 600), "nbf")
    target.assert_refused(target.token(iat=now + 600), "iat")


def test_wrong_issuer(target: Target) -> None:
    iss = target.claims()["iss"]
    for wrong in (iss + "/", iss.replace("127.0.0.1", "localhost"), "https://attacker.example", None):
        target.assert_refused(target.token(iss=wrong), "iss")


def test_wrong_audience(target: Target) -> None:
    for wrong in ("another-api", ["another-api", "third-api"], None, ""):
        target.assert_refused(target.token(aud=wrong), "aud")


def test_wrong_typ_where_required(target: Target) -> None:
    for typ in ("JWT", "dpop+jwt", "logout+jwt", None):
        target.assert_refused(target.token(header={"typ": typ}), "typ")


def test_id_token_presented_as_access_token(target: Target) -> None:
    target.assert_refused(target.token(header={"typ": "JWT"}, nonce="n-0S6_WzA2Mj", azp="app-1", typ="ID"), "typ")


def test_oversized_token(target: Target) -> None:
    token = target.token(padding="x" * target.max_token_bytes)
    assert len(token) > target.max_token_bytes
    target.assert_refused(token, "exceeds")


def test_token_in_query_string(target: Target) -> None:
    token = target.token()
    for params in ({"access_token": token}, {"token": token}, {"page": "1", "access_token": token}):
        response = target.get(None, params=params)
        assert response.status_code == 400
        assert_safe_problem(response, "auth.credentials_in_query")
    # also refused next to a valid header: the token in the URL is already exposed
    response = target.get(token, params={"access_token": token})
    assert response.status_code == 400
    request_id = response.headers["x-request-id"]
    records = target.gateway.wait_access_log(1)
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while not any(r.get("request_id") == request_id for r in records) and datetime.now(UTC) < deadline:
        records = target.gateway.access_log()
    assert any(r.get("request_id") == request_id for r in records)
    assert token not in target.gateway.access_log_path.read_text()  # redacted from the logged URL
    assert token.split(".")[2] not in target.gateway.logs()


def test_signature_stripped(target: Target) -> None:
    head, body, _ = target.token().split(".")
    target.assert_refused(f"{head}.{body}.", "base64url")
    target.assert_refused(f"{head}.{body}", "")


def test_payload_tampered(target: Target) -> None:
    head, _, signature = target.token().split(".")
    forged = target.claims(scope="users:read users:write admin", sub="admin")
    target.assert_refused(f"{head}.{b64(json.dumps(forged).encode())}.{signature}", "bad signature")


def test_signature_tampered(target: Target) -> None:
    head, body, signature = target.token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[-1] ^= 0x01
    target.assert_refused(f"{head}.{body}.{b64(bytes(raw))}", "bad signature")


def test_alg_switched_to_another_allowed_algorithm_for_the_same_key(target: Target) -> None:
    """Even validly signed by the issuer's own key: a key verifies with its one algorithm only."""
    for kid, (algorithm, _) in target.keys.items():
        if algorithm.startswith("RS"):
            target.assert_refused(target.token(kid=kid, algorithm="PS256"), f"bound to {algorithm}")
        header_only = target.token(kid=kid, header={"alg": "ES384" if algorithm != "ES384" else "ES256"})
        # an issuer allowing only one algorithm refuses the other before looking at the key
        target.assert_refused(header_only, (f"bound to {algorithm}", "not allowed for issuer"))


def test_duplicate_header_members(target: Target) -> None:
    algorithm, key = target.keys[target.kid]
    head = f'{{"alg":"{algorithm}","kid":"{target.kid}","typ":"at+jwt","alg":"none"}}'
    target.assert_refused(compact(head, target.claims(), signer(algorithm, key)), "repeats a member")


def test_not_a_token_at_all(target: Target) -> None:
    for junk in ("null", "a.b.c", "....", "eyJ" * 50, "opaque-but-no-introspection"):
        target.assert_refused(junk)
    with target.gateway.client() as client:
        response = client.get("/v1/users", headers={"authorization": "Bearer tokén".encode()})
        assert response.status_code == 401
