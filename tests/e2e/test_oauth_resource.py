"""OAuth 2 resource server through the real gateway, in front of the demo API, trusting a real test IdP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.processes import Gateway, Upstream, assert_safe_problem
from tests.support.test_idp import INTROSPECTION_CLIENT, TestIdP, oauth_gateway_config


@pytest.fixture
def idp() -> Iterator[TestIdP]:
    server = TestIdP()
    yield server
    server.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def echoed_headers(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return dict(response.json()["headers"])


def test_scopes_are_the_route_permissions(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                          idp: TestIdP) -> None:
    config = oauth_gateway_config(upstream.url, idp)
    status = next(r for r in config["apis"][0]["routes"] if r["name"] == "status")
    status["admin"] = True
    gateway = make_gateway(config)
    reader = idp.sign(scope="users:read")
    writer = idp.sign(scope="users:read users:write")
    new_user = {"name": "Lin", "email": "lin@example.com"}
    with gateway.client() as client:
        assert client.get("/v1/users", headers=bearer(reader)).status_code == 200  # OpenAPI security scope
        denied = client.post("/v1/users", headers=bearer(reader), json=new_user)
        assert denied.status_code == 403
        assert "users:write" in assert_safe_problem(denied, "authz.permission_denied")["detail"]
        assert denied.headers["www-authenticate"] == \
            'Bearer realm="bastion", error="insufficient_scope", scope="users:write"'
        assert client.post("/v1/users", headers=bearer(writer), json=new_user).status_code == 201
        # a route's own permission (echo:use), and an Okta-style `scp` list
        assert client.get("/v1/echo", headers=bearer(reader)).status_code == 403
        okta_style = idp.sign(scope=None, scp=["echo:use"])
        assert client.get("/v1/echo", headers=bearer(okta_style)).status_code == 200
        # no scope at all: authenticated, but granted nothing
        assert client.get("/v1/users", headers=bearer(idp.sign(scope=None))).status_code == 403
        # administrative routes need an admin-level API key, never an OAuth token
        admin = client.get("/v1/status/200", headers=bearer(idp.sign(scope="users:read users:write *")))
        assert_safe_problem(admin, "authz.level_insufficient")
        assert client.get("/v2/users").status_code == 200  # the public API is untouched


def test_missing_malformed_and_query_tokens(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                            idp: TestIdP) -> None:
    gateway = make_gateway(oauth_gateway_config(upstream.url, idp))
    token = idp.sign()
    with gateway.client() as client:
        missing = client.get("/v1/users")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="bastion"'
        assert_safe_problem(missing, "auth.credentials_missing")
        basic = client.get("/v1/users", auth=("user", "password"))
        assert basic.status_code == 401 and basic.headers["www-authenticate"] == 'Bearer realm="bastion"'
        two = client.get("/v1/users", headers=[("authorization", f"Bearer {token}"),
                                               ("authorization", f"Bearer {token}")])
        assert_safe_problem(two, "auth.credentials_invalid")
        assert client.get("/v1/users", headers={"authorization": f"bearer {token}"}).status_code == 200
        in_query = client.get("/v1/users", params={"access_token": token})
        assert_safe_problem(in_query, "auth.credentials_in_query")
    records = gateway.wait_access_log(5)
    assert records
    assert token not in gateway.access_log_path.read_text() and token not in gateway.logs()


def test_identity_is_forwarded_and_the_token_is_not(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                   idp: TestIdP) -> None:
    config = oauth_gateway_config(upstream.url, idp, issuer={"claims": {"roles": "realm_access.roles"}})
    gateway = make_gateway(config)
    token = idp.sign(scope="echo:use users:read", sub="user-42", client_id="mobile-app",
                     realm_access={"roles": ["buyer", "beta\r\nX-Injected: 1"]})
    spoofed = {"x-consumer-id": "admin", "x-authenticated-subject": "root", "x-authenticated-scope": "*",
               "x-authenticated-roles": "admin", "x-authenticated-issuer": "bastion"}
    with gateway.client() as client:
        seen = echoed_headers(client.get("/v1/echo", headers={**bearer(token), **spoofed}))
    assert "authorization" not in seen
    assert seen["x-consumer-id"] == "idp:mobile-app"
    assert seen["x-authenticated-subject"] == "user-42"
    assert seen["x-authenticated-client-id"] == "mobile-app"
    assert seen["x-authenticated-scope"] == "echo:use users:read"
    assert seen["x-authenticated-roles"] == "buyer,beta%0D%0AX-Injected: 1"  # no header injection
    assert seen["x-authenticated-issuer"] == "idp"
    assert "x-injected" not in seen

    # other names, some switched off: the client's copies of switched-off headers pass (nobody set them)
    config["apis"][0]["policies"]["oauth2"] = {"forward_consumer_header": "X-Caller", "forward_subject_header": None,
                                               "forward_roles_header": None}
    renamed = make_gateway(config)
    with renamed.client() as client:
        seen = echoed_headers(client.get("/v1/echo", headers={**bearer(token), "x-consumer-id": "mine"}))
    assert seen["x-caller"] == "idp:mobile-app"
    assert seen["x-consumer-id"] == "mine"
    assert "x-authenticated-subject" not in seen and "x-authenticated-roles" not in seen


def test_verified_tokens_are_cached_until_exp(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                              idp: TestIdP) -> None:
    gateway = make_gateway(oauth_gateway_config(upstream.url, idp, issuer={"leeway": 0}))
    token = idp.sign(exp=time.time() + 1.5)  # NumericDate may have a fraction
    with gateway.client() as client:
        for _ in range(50):
            assert client.get("/v1/users", headers=bearer(token)).status_code == 200
        assert idp.count("jwks") == 1  # fetched at start; every request after the first was a cache hit
        assert wait_until(lambda: client.get("/v1/users", headers=bearer(token)).status_code == 401, 4.0)
        assert client.get("/v1/users", headers=bearer(idp.sign())).status_code == 200


def test_idp_down_stale_keys_then_fail_closed_then_recovery(make_gateway: Callable[..., Gateway],
                                                            upstream: Upstream, idp: TestIdP) -> None:
    idp.set(jwks_max_age=0)  # raised to min_ttl
    cache = {"min_ttl": 0.5, "default_ttl": 0.5, "stale_for": 0.8, "refetch_interval": 0.2, "fetch_timeout": 1}
    gateway = make_gateway(oauth_gateway_config(upstream.url, idp, issuer={"jwks_cache": cache}))
    cached = idp.sign()
    with gateway.client() as client:
        assert client.get("/v1/users", headers=bearer(cached)).status_code == 200
        idp.set(down=True)
        # within ttl + stale_for: tokens still verify with the last keys
        assert client.get("/v1/users", headers=bearer(idp.sign())).status_code == 200
        # beyond: fail closed, for cached tokens too
        assert wait_until(lambda: client.get("/v1/users", headers=bearer(cached)).status_code == 503, 5.0)
        unavailable = client.get("/v1/users", headers=bearer(idp.sign()))
        assert unavailable.status_code == 503 and unavailable.headers["retry-after"]
        assert_safe_problem(unavailable, "auth.unavailable")
        idp.set(down=False)
        assert wait_until(lambda: client.get("/v1/users", headers=bearer(cached)).status_code == 200, 5.0)
    assert "no usable keys" in gateway.logs()


def test_discovery_with_issuer_path(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    realm = TestIdP(path="/realms/shop")
    try:
        realm.set(rfc8414=False)  # like many OpenID providers: only /.well-known/openid-configuration
        config = oauth_gateway_config(upstream.url, realm, issuer={"jwks_uri": None})
        gateway = make_gateway(config)
        with gateway.client() as client:
            assert client.get("/v1/users", headers=bearer(realm.sign())).status_code == 200
        assert (realm.count("rfc8414"), realm.count("oidc"), realm.count("jwks")) == (1, 1, 1)

        realm.set(discovered_issuer="https://attacker.example")  # a new gateway must not trust that document
        distrustful = make_gateway(config)
        with distrustful.client() as client:
            assert client.get("/v1/users", headers=bearer(realm.sign())).status_code == 503
        assert "discovered issuer" in distrustful.logs()
    finally:
        realm.stop()


def test_key_rotation_while_traffic_flows(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                          idp: TestIdP) -> None:
    """The IdP switches keys twice under load (once abruptly, once announced): no valid token is refused."""
    idp.set(jwks_max_age=0)  # raised to min_ttl
    cache = {"min_ttl": 0.5, "default_ttl": 0.5, "refetch_interval": 30}
    gateway = make_gateway(oauth_gateway_config(upstream.url, idp, issuer={"jwks_cache": cache}))
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with gateway.client() as client:
            while not stop.is_set():
                token = idp.sign()  # always the IdP's current signing key
                statuses.append(client.get("/v1/users", headers=bearer(token)).status_code)

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)
        second = idp.add_key("ES256")
        idp.use_key(second)  # abrupt: the gateway learns the key from the first token that names it
        time.sleep(0.3)
        third = idp.add_key("ES256")  # announced: published first, picked up by the JWKS refresh
        time.sleep(1.0)
        idp.use_key(third)
        time.sleep(0.3)
        idp.retire_key("key-1")
        idp.retire_key(second)
        time.sleep(0.7)
    finally:
        stop.set()
        for worker in workers:
            worker.join(10)
    assert len(statuses) > 50
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_opaque_tokens_through_introspection(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                             idp: TestIdP) -> None:
    introspection = {"endpoint": idp.introspection_endpoint, "client_id": INTROSPECTION_CLIENT,
                     "client_secret": "env:TEST_IDP_SECRET", "cache_ttl": 1}
    config = oauth_gateway_config(upstream.url, idp, issuer={"introspection": introspection})
    gateway = make_gateway(config, extra_env={"TEST_IDP_SECRET": idp.client_secret})
    token = idp.issue_opaque(scope="echo:use", sub="user-7", client_id="partner")
    with gateway.client() as client:
        seen = echoed_headers(client.get("/v1/echo", headers=bearer(token)))
        assert seen["x-consumer-id"] == "idp:partner" and seen["x-authenticated-scope"] == "echo:use"
        for _ in range(10):
            assert client.get("/v1/echo", headers=bearer(token)).status_code == 200
        assert idp.count("introspect") == 1
        idp.revoke_opaque(token)
        # revoked at the IdP: refused within introspection.cache_ttl (the documented revocation latency)
        assert wait_until(lambda: client.get("/v1/echo", headers=bearer(token)).status_code == 401, 3.0)
        assert_safe_problem(client.get("/v1/echo", headers=bearer("never-issued")), "auth.credentials_invalid")
        asked = idp.count("introspect")
        for own_secret in ("bst_r_" + "A" * 45, "brt_" + "B" * 43, "bcs_" + "C" * 43):
            assert_safe_problem(client.get("/v1/echo", headers=bearer(own_secret)), "auth.credentials_invalid")
        assert idp.count("introspect") == asked  # Bastion's own secrets are never shown to the IdP
        # JWTs of the same issuer keep working next to opaque tokens
        assert client.get("/v1/echo", headers=bearer(idp.sign(scope="echo:use"))).status_code == 200
    assert idp.client_secret not in gateway.logs()


def test_route_issuers_and_repeated_failures(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                             idp: TestIdP) -> None:
    other = TestIdP(audience="orders-api")
    try:
        config = oauth_gateway_config(upstream.url, idp, policy={"failed_auth": {"max_failures": 3, "window": 60,
                                                                                "block": 1}})
        config["oauth"]["issuers"].append({"name": "other", "issuer": other.issuer, "audiences": ["orders-api"],
                                           "algorithms": ["ES256"], "jwks_uri": other.jwks_uri})
        echo = next(r for r in config["apis"][0]["routes"] if r["name"] == "echo")
        echo["policies"] = {"oauth2": {"issuers": ["other"]}}
        gateway = make_gateway(config)
        with gateway.client() as client:
            assert client.get("/v1/users", headers=bearer(other.sign(aud="orders-api"))).status_code == 200
            assert client.get("/v1/echo", headers=bearer(other.sign(aud="orders-api", scope="echo:use"))
                              ).status_code == 200
            refused = client.get("/v1/echo", headers=bearer(idp.sign(scope="echo:use")))
            assert_safe_problem(refused, "auth.credentials_invalid")
            statuses = [client.get("/v1/users", headers=bearer(idp.sign(aud="nobody"))).status_code
                        for _ in range(4)]
            assert statuses[:2] == [401, 401] and statuses[-1] == 429
            blocked = client.get("/v1/users", headers=bearer(idp.sign()))
            assert_safe_problem(blocked, "auth.too_many_failures")
            assert wait_until(lambda: client.get("/v1/users", headers=bearer(idp.sign())).status_code == 200, 3.0)
    finally:
        other.stop()


def test_unknown_issuer_name_is_a_configuration_error(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                      idp: TestIdP) -> None:
    config: dict[str, Any] = oauth_gateway_config(upstream.url, idp, policy={"issuers": ["keycloak"]})
    gateway = make_gateway(config, expect_start=False)
    assert gateway.process.wait(20) == 2
    assert "unknown issuers ['keycloak']" in gateway.logs()


def test_unresolvable_introspection_secret_is_a_configuration_error(make_gateway: Callable[..., Gateway],
                                                                    upstream: Upstream, idp: TestIdP) -> None:
    introspection = {"endpoint": idp.introspection_endpoint, "client_id": INTROSPECTION_CLIENT,
                     "client_secret": "env:BASTION_TEST_UNSET_SECRET"}
    config = oauth_gateway_config(upstream.url, idp, issuer={"introspection": introspection})
    gateway = make_gateway(config, expect_start=False)
    assert gateway.process.wait(20) == 2
    assert "introspection.client_secret" in gateway.logs()


def test_reload_applies_issuer_changes_to_cached_tokens(make_gateway: Callable[..., Gateway], upstream: Upstream,
                                                        idp: TestIdP) -> None:
    config = oauth_gateway_config(upstream.url, idp)
    gateway = make_gateway(config)
    token = idp.sign()
    with gateway.client() as client:
        assert client.get("/v1/users", headers=bearer(token)).status_code == 200
        config["oauth"]["issuers"][0]["audiences"] = ["another-api"]
        gateway.write_config(config)
        gateway.reload()
        assert wait_until(lambda: client.get("/v1/users", headers=bearer(token)).status_code == 401, 5.0)
        assert client.get("/v1/users", headers=bearer(idp.sign(aud="another-api"))).status_code == 200
