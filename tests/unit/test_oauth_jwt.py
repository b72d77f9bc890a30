"""JWT access-token verification: every structural, header, signature and claim rule, on real signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from bastion.config.model import TrustedIssuerConfig
from bastion.oauth.contracts import TokenFailure, VerificationKey
from bastion.oauth.jwt import VerifiedToken, looks_like_jwt, normalize_typ, parse_token, show, verify_jwt

ISSUER = "https://idp.example.com/realms/shop"
NOW = 1_900_000_000.0

EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
EC384 = ECKey.generate_key("P-384", parameters={"kid": "ec-384"})
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
KEYS = {
    "ec-1": VerificationKey("ec-1", "ES256", ECKey.import_key(EC.as_dict(private=False))),
    "ec-384": VerificationKey("ec-384", "ES384", ECKey.import_key(EC384.as_dict(private=False))),
    "rsa-1": VerificationKey("rsa-1", "RS256", RSAKey.import_key(RSA.as_dict(private=False))),
    "ed-1": VerificationKey("ed-1", "EdDSA", OKPKey.import_key(ED.as_dict(private=False))),
}
PRIVATE = {"ec-1": EC, "ec-384": EC384, "rsa-1": RSA, "ed-1": ED}


def issuer(**overrides: Any) -> TrustedIssuerConfig:
    settings: dict[str, Any] = {"name": "idp", "issuer": ISSUER, "audiences": ["shop-api", "other-api"],
                                "algorithms": ["ES256", "ES384", "RS256", "PS256", "EdDSA"], "leeway": 30}
    settings.update(overrides)
    return TrustedIssuerConfig.model_validate(settings)


def claims(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"iss": ISSUER, "aud": "shop-api", "sub": "user-1", "client_id": "app",
                              "iat": int(NOW), "exp": int(NOW) + 300, "jti": "t-1", "scope": "users:read"}
    for name, value in overrides.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    return values


def sign(kid: str = "ec-1", alg: str | None = None, header: dict[str, Any] | None = None,
         **claim_overrides: Any) -> str:
    algorithm = alg or KEYS[kid].algorithm
    protected: dict[str, Any] = {"alg": algorithm, "kid": kid, "typ": "at+jwt", **(header or {})}
    protected = {k: v for k, v in protected.items() if v is not None}
    # Signed by hand with joserfc's algorithm: its own serializer refuses the odd headers attacks need.
    signing_input = f"{b64(json.dumps(protected).encode())}.{b64(json.dumps(claims(**claim_overrides)).encode())}"
    signature = JWSRegistry.algorithms[algorithm].sign(signing_input.encode(), PRIVATE[kid])
    return f"{signing_input}.{b64(signature)}"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw(header: dict[str, Any] | str, payload: dict[str, Any] | str, signature: bytes = b"sig") -> str:
    head = header if isinstance(header, str) else json.dumps(header)
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return f"{b64(head.encode())}.{b64(body.encode())}.{b64(signature)}"


def verify(token: str, config: TrustedIssuerConfig | None = None, now: float = NOW) -> VerifiedToken | TokenFailure:
    return verify_jwt(token, config or issuer(), KEYS, now)


def refused(token: str, fragment: str, config: TrustedIssuerConfig | None = None, now: float = NOW) -> None:
    result = verify(token, config, now)
    assert isinstance(result, TokenFailure), result
    assert fragment in result.reason, result.reason
    assert not result.unavailable


@pytest.mark.parametrize("kid", ["ec-1", "ec-384", "rsa-1", "ed-1"])
def test_valid_tokens_of_each_key_type_verify(kid: str) -> None:
    result = verify(sign(kid))
    assert isinstance(result, VerifiedToken), result
    assert result.claims["sub"] == "user-1"
    assert result.expires_at == NOW + 300
    assert result.jti == "t-1"
    assert result.algorithm == KEYS[kid].algorithm


def test_audience_list_needs_one_accepted_audience() -> None:
    assert isinstance(verify(sign(aud=["someone-else", "other-api"])), VerifiedToken)
    refused(sign(aud=["someone-else"]), "aud")
    refused(sign(aud=None), "aud")
    refused(sign(aud=["shop-api", 7]), "aud")


def test_alg_none_is_refused_with_or_without_signature() -> None:
    for alg in ("none", "None", "NONE"):
        refused(raw({"alg": alg, "kid": "ec-1"}, claims(), b""), "")
        refused(raw({"alg": alg, "kid": "ec-1"}, claims()), "alg none")


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    """The classic confusion: the RSA public key (PEM or JWK text) used as an HMAC secret."""
    for secret in (RSA.as_pem(private=False), json.dumps(RSA.as_dict(private=False)).encode()):
        header = b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "at+jwt"}).encode())
        body = b64(json.dumps(claims()).encode())
        mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        refused(f"{header}.{body}.{b64(mac)}", "shared-secret")


def test_a_key_is_used_with_its_own_algorithm_only() -> None:
    """Validly signed by the IdP's RSA key, but with PS256 while the key is bound to RS256."""
    refused(sign("rsa-1", alg="PS256"), "bound to RS256")
    # the other direction, across families: an EC key named under an RSA algorithm
    refused(raw({"alg": "RS256", "kid": "ec-1"}, claims()), "bound to ES256")


def test_algorithm_outside_the_allow_list() -> None:
    refused(sign("ec-384"), "not allowed", issuer(algorithms=["ES256"]))


@pytest.mark.parametrize("member", ["jku", "x5u", "jwk", "x5c", "crit", "b64", "enc", "zip"])
def test_key_source_and_rule_headers_are_refused(member: str) -> None:
    value: Any = {"jwk": EC.as_dict(private=False), "x5c": ["MIIB"], "crit": ["exp"], "b64": False}.get(
        member, "https://attacker.example/keys")
    refused(sign(header={member: value}), member)


def test_kid_is_only_a_lookup_key() -> None:
    for kid in ("../../dev/null", "' OR 1=1 --", "https://attacker.example/key", "ec-1\x00"):
        refused(raw({"alg": "ES256", "kid": kid}, claims()), "unknown kid")
    refused(raw({"alg": "ES256", "kid": "k" * 300}, claims()), "kid of 300")
    refused(raw({"alg": "ES256", "kid": 1}, claims()), "no kid")
    refused(raw({"alg": "ES256"}, claims()), "no kid")


def test_signature_tampering() -> None:
    token = sign()
    head, body, signature = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged["scope"] = "users:read users:write admin"
    refused(f"{head}.{b64(json.dumps(forged).encode())}.{signature}", "bad signature")
    refused(f"{head}.{body}.", "base64url")  # signature stripped
    refused(f"{head}.{body}.{signature[:-4]}", "bad signature")
    flipped = bytearray(base64.urlsafe_b64decode(signature + "=="))
    flipped[5] ^= 1
    refused(f"{head}.{body}.{b64(bytes(flipped))}", "bad signature")


def test_shape_is_checked_before_anything_else() -> None:
    token = sign()
    refused(token + "." + token.split(".")[2], "segments")  # 4 segments (JWE has 5)
    refused("a.b", "segments")
    refused(token.replace(".", "=.", 1), "base64url")  # padding is not base64url
    refused(token[:10] + "*" + token[11:], "base64url")
    refused(raw("[1, 2]", claims()), "header is not a JSON object")
    refused(raw({"alg": "ES256", "kid": "ec-1"}, "not json"), "payload is not a JSON object")
    refused(raw('{"alg": "ES256", "kid": "ec-1", "alg": "none"}', claims()), "repeats a member")
    refused(raw({"alg": "ES256", "kid": "ec-1"}, '{"iss": "a", "iss": "b"}'), "repeats a member")
    deep = "[" * 20000 + "]" * 20000  # nesting far beyond the JSON parser's recursion limit
    refused(raw({"alg": "ES256", "kid": "ec-1"}, deep), "payload", issuer(max_token_bytes=65536))
    refused("é" + token, "ASCII")


def test_oversized_tokens_are_refused_unread() -> None:
    big = sign(padding="x" * 9000)
    refused(big, "exceeds 8192")
    assert isinstance(verify(big, issuer(max_token_bytes=16384)), VerifiedToken)


def test_time_claims_with_leeway() -> None:
    assert isinstance(verify(sign(exp=int(NOW) - 20)), VerifiedToken)  # within the 30 s leeway
    refused(sign(exp=int(NOW) - 31), "expired")
    refused(sign(exp=None), "no exp")
    refused(sign(exp="1900000300"), "exp is not a number")
    refused(sign(exp=True), "exp is not a number")
    assert isinstance(verify(sign(nbf=int(NOW) + 20)), VerifiedToken)
    refused(sign(nbf=int(NOW) + 60), "nbf")
    refused(sign(iat=int(NOW) + 60), "iat")
    refused(sign(), "expired", issuer(leeway=0), now=NOW + 300)


def test_issuer_must_match_exactly() -> None:
    for wrong in (ISSUER + "/", ISSUER.upper(), "https://attacker.example", None, ["x"]):
        refused(sign(iss=wrong), "iss")


def test_typ_when_required() -> None:
    strict = issuer(require_typ="at+jwt")
    for accepted in ("at+jwt", "application/at+jwt", "AT+JWT", "Application/At+Jwt"):
        assert isinstance(verify(sign(header={"typ": accepted}), strict), VerifiedToken), accepted
    for wrong in ("JWT", "dpop+jwt", None):
        refused(sign(header={"typ": wrong}), "typ", strict)


def test_typ_when_not_required_refuses_other_token_kinds() -> None:
    for accepted in ("JWT", "jwt", "at+jwt", "application/at+jwt", None):
        assert isinstance(verify(sign(header={"typ": accepted})), VerifiedToken), accepted
    for foreign in ("dpop+jwt", "logout+jwt", "secevent+jwt", "id_token+jwt", "token-introspection+jwt", "JOSE"):
        refused(sign(header={"typ": foreign}), "not an access token type")
    refused(sign(header={"typ": 5}), "typ is not a string")


def test_keycloak_payload_types_other_than_bearer_are_refused() -> None:
    assert isinstance(verify(sign(typ="Bearer")), VerifiedToken)
    for foreign in ("ID", "Refresh", "Logout", "Offline"):
        refused(sign(typ=foreign), "payload typ")


def test_helpers() -> None:
    assert looks_like_jwt("a.b.c") and not looks_like_jwt("opaque-token") and not looks_like_jwt("a.b.c.d.e")
    assert normalize_typ(" Application/AT+JWT ") == "at+jwt"
    assert show("a\r\nb" + "x" * 100).startswith("'a??b")
    assert len(show("x" * 1000)) < 60
    parsed = parse_token(sign(), 8192)
    assert not isinstance(parsed, TokenFailure)
    assert parsed.kid == "ec-1" and parsed.alg == "ES256"


def test_verification_is_independent_of_wall_clock_defaults() -> None:
    """Real time: a token minted now verifies now (no hidden clock in the verifier)."""
    now = time.time()
    token = sign(iat=int(now), exp=int(now) + 60)
    assert isinstance(verify(token, now=now), VerifiedToken)
