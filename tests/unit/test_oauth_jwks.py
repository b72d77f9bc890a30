"""Remote key sets against a real identity provider on a loopback socket (tests/support/test_idp.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc.jwk import ECKey, OctKey, RSAKey

from bastion.config.model import JwksCacheConfig, TrustedIssuerConfig
from bastion.oauth.jwks import (
    RemoteKeySet,
    bound_algorithm,
    cache_lifetime,
    discovery_urls,
    load_keys,
    url_problem,
)
from tests.support.test_idp import TestIdP


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def idp() -> Iterator[TestIdP]:
    server = TestIdP(path="/realms/shop")
    yield server
    server.stop()


def issuer_for(idp: TestIdP, *, pinned: bool = True, **cache: Any) -> TrustedIssuerConfig:
    settings: dict[str, Any] = {"refetch_interval": 30, "stale_for": 600, "min_ttl": 60, "default_ttl": 300,
                                "fetch_timeout": 2}
    settings.update(cache)
    return TrustedIssuerConfig(name="idp", issuer=idp.issuer, audiences=["shop-api"], algorithms=["ES256", "RS256"],
                               jwks_uri=idp.jwks_uri if pinned else None,
                               jwks_cache=JwksCacheConfig.model_validate(settings))


async def started(config: TrustedIssuerConfig, clock: Clock) -> RemoteKeySet:
    keys = RemoteKeySet(config, monotonic=clock)
    await keys.start()
    return keys


def test_pinned_jwks_is_fetched_and_keys_bound_to_their_algorithm(idp: TestIdP) -> None:
    async def scenario() -> None:
        keys = await started(issuer_for(idp), Clock())
        try:
            key = keys.get("key-1")
            assert key is not None and key.algorithm == "ES256"
            assert keys.usable()
            assert keys.get("unknown") is None
        finally:
            await keys.close()

    asyncio.run(scenario())
    assert idp.count("jwks") == 1
    assert idp.count("rfc8414") == idp.count("oidc") == 0


def test_discovery_rfc8414_inserts_the_well_known_segment(idp: TestIdP) -> None:
    async def scenario() -> None:
        keys = await started(issuer_for(idp, pinned=False), Clock())
        try:
            assert keys.get("key-1") is not None
        finally:
            await keys.close()

    asyncio.run(scenario())
    assert (idp.count("rfc8414"), idp.count("oidc"), idp.count("jwks")) == (1, 0, 1)


def test_discovery_falls_back_to_openid_configuration(idp: TestIdP) -> None:
    idp.set(rfc8414=False)

    async def scenario() -> None:
        keys = await started(issuer_for(idp, pinned=False), Clock())
        try:
            assert keys.get("key-1") is not None
            await keys.refresh("another-kid")  # discovery is done once: only the JWKS is fetched again
        finally:
            await keys.close()

    asyncio.run(scenario())
    assert (idp.count("rfc8414"), idp.count("oidc"), idp.count("jwks")) == (1, 1, 2)


def test_discovered_issuer_must_equal_the_configured_one(idp: TestIdP) -> None:
    idp.set(discovered_issuer="https://attacker.example")

    async def scenario() -> None:
        keys = await started(issuer_for(idp, pinned=False), Clock())
        try:
            assert not keys.usable()
            assert keys.get("key-1") is None
        finally:
            await keys.close()

    asyncio.run(scenario())
    assert idp.count("jwks") == 0


def test_cache_control_sets_the_lifetime_within_bounds(idp: TestIdP) -> None:
    async def lifetime(max_age: int | None) -> float:
        """When the fetched keys expire, probed around the expected lifetime."""
        idp.set(jwks_max_age=max_age)
        clock = Clock(0.0)
        keys = await started(issuer_for(idp, max_ttl=3600), clock)
        try:
            for ttl in (60, 120, 300, 3600):
                clock.now = ttl - 1
                alive = not keys.expired
                clock.now = ttl + 1
                if alive and keys.expired:
                    return ttl
            return -1
        finally:
            await keys.close()

    assert asyncio.run(lifetime(120)) == 120
    assert asyncio.run(lifetime(1)) == 60  # raised to min_ttl
    assert asyncio.run(lifetime(10**7)) == 3600  # lowered to max_ttl
    assert asyncio.run(lifetime(None)) == 300  # default_ttl
    config = JwksCacheConfig(min_ttl=60, max_ttl=3600, default_ttl=300)
    assert cache_lifetime("public, max-age=1", config) == 60
    assert cache_lifetime("max-age=999999", config) == 3600
    assert cache_lifetime('max-age="120"', config) == 120
    assert cache_lifetime("no-store", config) == 60
    assert cache_lifetime(None, config) == 300
    assert cache_lifetime("max-age=abc", config) == 300


def test_unknown_kids_refetch_at_most_once_per_interval_single_flight(idp: TestIdP) -> None:
    clock = Clock()

    async def scenario() -> None:
        keys = await started(issuer_for(idp), clock)
        try:
            # a flood of random kids, concurrently: one fetch between them all
            await asyncio.gather(*(keys.refresh(f"random-{i}") for i in range(200)))
            assert idp.count("jwks") == 2
            for i in range(50):  # and none more within the interval
                await keys.refresh(f"again-{i}")
            assert idp.count("jwks") == 2
            clock.now += 31
            await asyncio.gather(*(keys.refresh(f"later-{i}") for i in range(50)))
            assert idp.count("jwks") == 3
            # a kid already held never costs a fetch
            clock.now += 31
            await keys.refresh("key-1")
            assert idp.count("jwks") == 3
        finally:
            await keys.close()

    asyncio.run(scenario())


def test_a_new_key_is_found_by_the_refetch(idp: TestIdP) -> None:
    async def scenario() -> None:
        keys = await started(issuer_for(idp), Clock())
        try:
            kid = idp.add_key("ES256")
            assert keys.get(kid) is None
            first = keys.get("key-1")
            await keys.refresh(kid)
            assert keys.get(kid) is not None
            assert keys.get("key-1") is first  # an unchanged key keeps its object (cached tokens stay valid)
        finally:
            await keys.close()

    asyncio.run(scenario())


def test_stale_keys_serve_while_the_idp_is_down_then_fail_closed(idp: TestIdP) -> None:
    clock = Clock()

    async def scenario() -> None:
        keys = await started(issuer_for(idp, stale_for=600), clock)  # max-age 300
        try:
            idp.set(down=True)
            clock.now += 400  # expired, IdP down
            await keys.refresh("rotated")
            assert keys.usable() and keys.get("key-1") is not None
            clock.now += 499  # 899 s: within 300 + 600
            assert keys.usable()
            clock.now += 2
            assert not keys.usable()
            assert keys.get("key-1") is None
            idp.set(down=False)
            clock.now += 31
            await keys.refresh("key-1")  # recovery: the next allowed fetch restores the keys
            assert keys.usable() and keys.get("key-1") is not None
        finally:
            await keys.close()

    asyncio.run(scenario())


def test_an_idp_down_at_start_means_no_usable_keys(idp: TestIdP) -> None:
    idp.set(down=True)

    async def scenario() -> None:
        keys = await started(issuer_for(idp), Clock())
        try:
            assert not keys.usable()
        finally:
            await keys.close()

    asyncio.run(scenario())


def test_redirects_are_not_followed(idp: TestIdP) -> None:
    other = TestIdP()
    try:
        idp.set(redirect_jwks=other.jwks_uri)

        async def scenario() -> None:
            keys = await started(issuer_for(idp), Clock())
            try:
                assert not keys.usable()
            finally:
                await keys.close()

        asyncio.run(scenario())
        assert other.count("jwks") == 0
    finally:
        other.stop()


def test_oversized_jwks_is_refused(idp: TestIdP) -> None:
    idp.set(extra_jwks=[{"kty": "EC", "kid": f"k{i}", "x": "A" * 1000} for i in range(600)])

    async def scenario() -> None:
        keys = await started(issuer_for(idp), Clock())
        try:
            assert not keys.usable()
        finally:
            await keys.close()

    asyncio.run(scenario())


def test_url_rules() -> None:
    assert url_problem("https://idp.example.com/jwks") is None
    assert url_problem("http://127.0.0.1:8080/jwks") is None
    assert url_problem("http://[::1]/jwks") is None
    assert url_problem("http://localhost/jwks") is None
    assert url_problem("http://idp.example.com/jwks") is not None
    assert url_problem("http://10.0.0.1/jwks") is not None
    assert url_problem("file:///etc/passwd") is not None
    assert url_problem("https://user:pw@idp.example.com/jwks") is not None
    assert url_problem("https:///jwks") is not None


def test_discovery_urls() -> None:
    assert discovery_urls("https://idp.example.com/realms/shop") == [
        "https://idp.example.com/.well-known/oauth-authorization-server/realms/shop",
        "https://idp.example.com/realms/shop/.well-known/openid-configuration"]
    assert discovery_urls("https://idp.example.com") == [
        "https://idp.example.com/.well-known/oauth-authorization-server",
        "https://idp.example.com/.well-known/openid-configuration"]


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")  # generating the short RSA key
def test_which_keys_are_used_and_with_which_algorithm() -> None:
    ec = dict(ECKey.generate_key("P-256", parameters={"kid": "ec"}).as_dict(private=False))
    rsa_key = RSAKey.generate_key(2048, parameters={"kid": "rsa"})
    rsa = dict(rsa_key.as_dict(private=False))
    both = frozenset({"ES256", "RS256", "PS256"})
    assert bound_algorithm(ec, both) == "ES256"  # inferred from the curve
    assert bound_algorithm(rsa, both) is None  # RS256 or PS256: ambiguous
    assert bound_algorithm(rsa, frozenset({"RS256", "ES256"})) == "RS256"
    assert bound_algorithm({**rsa, "alg": "PS256"}, both) == "PS256"
    assert bound_algorithm({**ec, "alg": "ES384"}, both) is None  # curve and alg disagree
    assert bound_algorithm({**ec, "alg": "RS256"}, both) is None  # key type and alg disagree
    assert bound_algorithm({**ec, "alg": "HS256"}, both) is None
    assert bound_algorithm(ec, frozenset({"RS256"})) is None

    short = dict(RSAKey.generate_key(1024, parameters={"kid": "short"}).as_dict(private=False))
    document = {"keys": [
        ec, {**rsa, "alg": "RS256"},
        {**ec, "kid": "enc", "use": "enc"},
        {**ec, "kid": None},
        {**dict(rsa_key.as_dict(private=True)), "kid": "private", "alg": "RS256"},
        dict(OctKey.generate_key(256, parameters={"kid": "oct"}).as_dict(private=True)),
        {**short, "alg": "RS256"},
        {**ec, "kid": "dup"}, {**ec, "kid": "dup"},
        {**ec, "kid": "ops", "key_ops": ["encrypt"]},
        "not an object",
        {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
    ]}
    keys, ignored = load_keys(document, both)
    assert sorted(keys) == ["ec", "rsa"]
    assert keys["rsa"].algorithm == "RS256" and keys["ec"].algorithm == "ES256"
    assert len(ignored) == 9, ignored  # both copies of `dup` go, with one message
    assert load_keys({"keys": "nope"}, both) == ({}, ["no 'keys' list"])
