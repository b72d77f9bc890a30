"""CPU cost of an access token on the gateway: a full ES256 verification (parse, header and claim checks,
signature) against a verified-token cache hit. Single-threaded, in-process; prints microseconds per call.

    .venv/bin/python bench/jwt_micro.py
"""

from __future__ import annotations

import time
import timeit

from joserfc import jwt
from joserfc.jwk import ECKey

from bastion.config.model import TrustedIssuerConfig
from bastion.identity.principal import Principal
from bastion.oauth.contracts import VerificationKey
from bastion.oauth.jwt import JwtVerifier, parse_token
from bastion.oauth.token_cache import CachedToken, TokenCache

ISSUER = "https://idp.bench"


def main() -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    now = int(time.time())
    token = jwt.encode({"typ": "at+jwt", "alg": "ES256", "kid": "k1"},
                       {"iss": ISSUER, "aud": "api", "sub": "client", "exp": now + 600, "iat": now, "jti": "j1",
                        "client_id": "client", "scope": "items:read"}, key)
    public = VerificationKey(kid="k1", algorithm="ES256", key=ECKey.import_key(key.as_dict(private=False)))
    verifier = JwtVerifier(TrustedIssuerConfig(name="bench", issuer=ISSUER, audiences=["api"],
                                               algorithms=["ES256"], require_typ="at+jwt"))

    def full() -> None:
        parsed = parse_token(token, 8192)
        assert not isinstance(parsed, Exception)
        verified = verifier.verify(parsed, public, time.time())  # type: ignore[arg-type]
        assert verified.__class__.__name__ == "VerifiedToken", verified

    cache = TokenCache()
    principal = Principal(consumer_id="bench:client", consumer_name="client", credential_id="j1",
                          credential_kind="jwt", level=None, permissions=frozenset({"items:read"}))
    cache.put(token, CachedToken(principal=principal, valid_until=now + 600.0))

    def hit() -> None:
        assert cache.get(token) is principal

    for name, fn, number in (("full ES256 verification", full, 2_000), ("cache hit", hit, 200_000)):
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number
        print(f"{name:26s} {best * 1e6:8.2f} us")


if __name__ == "__main__":
    main()
