"""The built-in authorization server through the real gateway process, in front of the demo API.

Clients are registered directly in the gateway's store (as the CLI's local mode does). The user of the
authorization-code flow is played by the test-only HMAC sign-in step (tests/support/oauth_user.py), which the
gateway imports because the test puts the repository on its PYTHONPATH and gives it the secret. Tokens are
used on a route protected by the `oauth2` policy, so revocation and reuse detection are checked where they
matter: at the gateway, on the next request.
"""

from __future__ import annotations

import asyncio
import os
from base64 import b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import httpx
import pytest

from bastion.config.model import GatewayConfig
from bastion.identity.service import IdentityService, identity_settings
from bastion.oauth.server import pkce
from bastion.oauth.server.store import ClientKind, OAuthStore
from tests.support.identity import ACTOR, StoreHandle
from tests.support.oauth_user import SECRET_ENV, user_assertion
from tests.support.processes import REPO, Gateway, Upstream, assert_safe_problem, base_config

ISSUER = "https://auth.bastion.test"
REDIRECT = "http://127.0.0.1:8765/callback"
USER_SECRET = "e2e-user-secret"
VERIFIER = "e2e-verifier-" + "x" * 40


@dataclass
class Client:
    client_id: str
    secret: str | None

    @property
    def basic(self) -> dict[str, str]:
        raw = f"{quote_plus(self.client_id)}:{quote_plus(self.secret or '')}"
        return {"authorization": "Basic " + b64encode(raw.encode()).decode()}


def register(config: dict[str, Any], gateway: Gateway, consumer_id: str, *, kind: str = "confidential",
             grants: tuple[str, ...] = ("authorization_code", "client_credentials", "refresh_token"),
             scopes: tuple[str, ...] = ("users:read",)) -> Client:
    """A client in the gateway's store, as `bastion oauth clients create` would make it."""
    settings = identity_settings(GatewayConfig.model_validate(config), gateway.config_path.parent)

    async def work() -> Client:
        service = IdentityService(settings)
        try:
            store = OAuthStore(service.store.engine, service.hasher)
            client, secret = await store.create_client(
                consumer_id=consumer_id, name=f"app-{len(grants)}-{kind}-{os.urandom(3).hex()}", kind=ClientKind(kind),
                grant_types=grants, scopes=scopes, redirect_uris=[REDIRECT], actor=ACTOR)
            return Client(client.client_id, secret)
        finally:
            await service.close()

    return asyncio.run(work())


def oauth_config(upstream_url: str, **server: Any) -> dict[str, Any]:
    """The demo API's v1 behind the `oauth2` policy (listing users needs users:read); the built-in server on."""
    config = base_config(upstream_url)
    v1 = config["apis"][0]
    v1["public"] = False
    v1["policies"] = {"oauth2": {}}
    v1["operations"] = {"listUsers": {"permissions": ["users:read"]}}
    config["oauth"] = {"server": {"enabled": True, "issuer": ISSUER,
                                  "user_authentication": "tests.support.oauth_user:sign_in", **server}}
    return config


@pytest.fixture
def oauth(make_gateway: Callable[..., Gateway], upstream: Upstream,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[Gateway, dict[str, Any], str]]]:
    """Start a gateway with the authorization server; returns (gateway, config, consumer id)."""
    # The gateway imports the test sign-in step from this repository and reads its secret from the environment.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(SECRET_ENV, USER_SECRET)

    def start(**server: Any) -> tuple[Gateway, dict[str, Any], str]:
        config = oauth_config(upstream.url, **server)
        gateway = make_gateway(config)
        store = StoreHandle(config, gateway.config_path.parent)
        store.role("reader", ["users:read"])
        return gateway, config, store.consumer(f"mobile-{os.urandom(3).hex()}", ["reader"])

    yield start


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_oauth_error(response: httpx.Response, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert set(response.json()) == {"error", "error_description"}
    assert response.json()["error"] == error, response.text


def authorize(http: httpx.Client, client: Client, *, state: str = "st") -> str:
    params = {"response_type": "code", "client_id": client.client_id, "redirect_uri": REDIRECT, "state": state,
              "scope": "users:read", "code_challenge": pkce.s256(VERIFIER), "code_challenge_method": "S256"}
    response = http.get("/oauth2/authorize", params=params,
                        headers={"x-test-user": user_assertion("alice", USER_SECRET)})
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state] and query["iss"] == [ISSUER]
    return query["code"][0]


def test_client_credentials_token_opens_the_route_and_revocation_closes_it_at_once(
        oauth: Callable[..., tuple[Gateway, dict[str, Any], str]]) -> None:
    gateway, config, consumer = oauth()
    client = register(config, gateway, consumer)
    with gateway.client() as http:
        assert http.get("/v1/users").status_code == 401
        issued = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, headers=client.basic)
        assert issued.status_code == 200, issued.text
        assert issued.headers["cache-control"] == "no-store"
        token = issued.json()["access_token"]
        assert issued.json()["scope"] == "users:read" and "refresh_token" not in issued.json()
        assert http.get("/v1/users", headers=bearer(token)).status_code == 200
        assert http.get("/v1/users", headers=bearer(token)).status_code == 200  # now from the verified-token cache
        introspected = http.post("/oauth2/introspect", data={"token": token}, headers=client.basic).json()
        assert introspected["active"] is True and introspected["client_id"] == client.client_id
        assert introspected["sub"] == client.client_id and introspected["scope"] == "users:read"
        revoked = http.post("/oauth2/revoke", data={"token": token}, headers=client.basic)
        assert revoked.status_code == 200
        refused = http.get("/v1/users", headers=bearer(token))
        assert refused.status_code == 401
        assert_safe_problem(refused, "auth.credentials_invalid")
        introspected = http.post("/oauth2/introspect", data={"token": token}, headers=client.basic)
        assert introspected.json() == {"active": False}
    assert client.secret is not None and client.secret not in gateway.logs()
    assert token not in gateway.logs()


def test_code_flow_refresh_rotation_and_reuse_revoking_the_family(
        oauth: Callable[..., tuple[Gateway, dict[str, Any], str]]) -> None:
    gateway, config, consumer = oauth()
    client = register(config, gateway, consumer, kind="public", grants=("authorization_code", "refresh_token"))
    with gateway.client() as http:
        code = authorize(http, client)
        exchanged = http.post("/oauth2/token", data={"grant_type": "authorization_code", "code": code,
                                                     "code_verifier": VERIFIER, "redirect_uri": REDIRECT,
                                                     "client_id": client.client_id})
        assert exchanged.status_code == 200, exchanged.text
        first = exchanged.json()
        assert http.get("/v1/users", headers=bearer(first["access_token"])).status_code == 200
        rotated = http.post("/oauth2/token", data={"grant_type": "refresh_token", "client_id": client.client_id,
                                                   "refresh_token": first["refresh_token"]})
        assert rotated.status_code == 200, rotated.text
        second = rotated.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert http.get("/v1/users", headers=bearer(second["access_token"])).status_code == 200
        # The first refresh token again: someone else holds the family. Everything of it dies now.
        replay = http.post("/oauth2/token", data={"grant_type": "refresh_token", "client_id": client.client_id,
                                                  "refresh_token": first["refresh_token"]})
        assert_oauth_error(replay, "invalid_grant")
        for tokens in (first, second):
            assert http.get("/v1/users", headers=bearer(tokens["access_token"])).status_code == 401
        latest = http.post("/oauth2/token", data={"grant_type": "refresh_token", "client_id": client.client_id,
                                                  "refresh_token": second["refresh_token"]})
        assert_oauth_error(latest, "invalid_grant")
        # The code, redeemed again, is refused too.
        again = http.post("/oauth2/token", data={"grant_type": "authorization_code", "code": code,
                                                 "code_verifier": VERIFIER, "client_id": client.client_id})
        assert_oauth_error(again, "invalid_grant")
    assert "reused" in gateway.logs()
    for secret in (code, first["refresh_token"], second["refresh_token"]):
        assert secret not in gateway.logs()


def test_documents_and_error_shapes(oauth: Callable[..., tuple[Gateway, dict[str, Any], str]]) -> None:
    gateway, config, consumer = oauth()
    client = register(config, gateway, consumer)
    with gateway.client() as http:
        meta = http.get("/.well-known/oauth-authorization-server")
        assert meta.status_code == 200 and meta.json()["issuer"] == ISSUER
        assert meta.json()["code_challenge_methods_supported"] == ["S256"]
        keys = http.get("/oauth2/jwks").json()["keys"]
        assert len(keys) == 2 and {k["alg"] for k in keys} == {"ES256"}
        assert_safe_problem(http.get("/oauth2/unknown"), "route.not_found")
        wrong_method = http.get("/oauth2/token")
        assert_safe_problem(wrong_method, "route.method_not_allowed")
        assert wrong_method.headers["allow"] == "POST"
        in_url = http.post(f"/oauth2/token?client_secret={client.secret}", data={"grant_type": "client_credentials"},
                           headers=client.basic)
        assert_oauth_error(in_url, "invalid_request")
        assert_oauth_error(http.post("/oauth2/token", json={"grant_type": "client_credentials"},
                                     headers=client.basic), "invalid_request")
        duplicated = http.post("/oauth2/token", content=b"grant_type=client_credentials&scope=a&scope=b",
                               headers={**client.basic, "content-type": "application/x-www-form-urlencoded"})
        assert_oauth_error(duplicated, "invalid_request")
        assert_oauth_error(http.post("/oauth2/token", data={"grant_type": "password", "username": "u",
                                                            "password": "p"}, headers=client.basic),
                           "unsupported_grant_type")
        unauthenticated = http.post("/oauth2/token", data={"grant_type": "client_credentials"})
        assert_oauth_error(unauthenticated, "invalid_client", 401)
        assert unauthenticated.headers["www-authenticate"].startswith('Basic realm="bastion"')
        page = http.get("/oauth2/authorize", params={"client_id": client.client_id, "response_type": "code",
                                                     "redirect_uri": "https://evil.example/cb"})
        assert page.status_code == 400 and "location" not in page.headers
        inactive = http.post("/oauth2/introspect", data={"token": "nothing"}, headers=client.basic)
        assert inactive.status_code == 200 and inactive.json() == {"active": False}
    records = gateway.wait_access_log(11)  # one line per request above
    assert sum(r["path"] == "/oauth2/token" for r in records) == 6, records
    assert client.secret is not None
    assert client.secret not in gateway.logs() and client.secret not in gateway.access_log_path.read_text()


def test_the_brute_force_brake_answers_slow_down(oauth: Callable[..., tuple[Gateway, dict[str, Any], str]]) -> None:
    gateway, config, consumer = oauth(token_endpoint_limits={"max_failures": 3, "window": 60, "block": 30})
    client = register(config, gateway, consumer)
    wrong = Client(client.client_id, "bcs_" + "w" * 43)
    with gateway.client() as http:
        for _ in range(4):
            assert_oauth_error(http.post("/oauth2/token", data={"grant_type": "client_credentials"},
                                         headers=wrong.basic), "invalid_client", 401)
        blocked = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, headers=client.basic)
        assert_oauth_error(blocked, "slow_down", 429)
        assert 1 <= int(blocked.headers["retry-after"]) <= 30
