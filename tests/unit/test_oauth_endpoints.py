"""The authorization server's endpoints in-process: the real ASGI app, the real OAuth store on SQLite (a
copy of one migrated database per test), real signing keys and revocation list, driven with httpx.

The same flows run through the real gateway process in tests/e2e/test_oauth_server.py; here every error
shape and every branch of the grants is covered at in-process speed, with an injected clock for expiry.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from base64 import b64encode
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from starlette.requests import Request
from starlette.responses import Response

from bastion.config.model import AuthorizationServerConfig
from bastion.identity.keys import KeyHasher
from bastion.oauth.revocation import RevocationList
from bastion.oauth.server import pkce
from bastion.oauth.server.keys import SigningKeys
from bastion.oauth.server.service import AuthorizationServer
from bastion.oauth.server.steps import Approved, ConsentStep, Denied, SignedInUser, SignInStep
from bastion.oauth.server.store import ClientKind, OAuthClient, OAuthStore
from bastion.ratelimit.memory import MemoryCounterStore
from bastion.storage.audit import AuditActor
from bastion.storage.engine import create_engine
from bastion.storage.identity_store import IdentityStore
from bastion.storage.migrate import migrate
from tests.support.oauth_user import SECRET_ENV, HmacTestSignIn, user_assertion

PEPPER = b"test-pepper-" + b"x" * 32
ISSUER = "https://auth.example.test"
REDIRECT = "https://app.example.test/callback"
USER_SECRET = "user-assertion-secret"
ACTOR = AuditActor("test:setup")
CLIENT_ADDRESS = "192.0.2.10"
VERIFIER = "v" * 20 + "-._~" + "A1" * 10  # 44 characters of the RFC 7636 alphabet
CONFIDENTIAL_GRANTS = ("authorization_code", "client_credentials", "refresh_token")


class Clock:
    """Wall clock for the server and the store alike, so expiry can be reached without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


@dataclass
class Registered:
    client_id: str
    secret: str | None

    @property
    def basic(self) -> dict[str, str]:
        raw = f"{quote_plus(self.client_id)}:{quote_plus(self.secret or '')}"
        return {"authorization": "Basic " + b64encode(raw.encode()).decode()}


@dataclass
class Harness:
    http: httpx.AsyncClient
    store: OAuthStore
    identity: IdentityStore
    keys: SigningKeys
    revocations: RevocationList
    server: AuthorizationServer
    clock: Clock
    consumer_id: str

    async def register(self, *, kind: str = "confidential", grants: tuple[str, ...] = CONFIDENTIAL_GRANTS,
                       scopes: tuple[str, ...] = ("orders:read", "orders:write"),
                       redirect_uris: tuple[str, ...] = (REDIRECT,), consumer_id: str | None = None) -> Registered:
        if kind == "public":
            grants = tuple(g for g in grants if g != "client_credentials")
        client, secret = await self.store.create_client(
            consumer_id=consumer_id or self.consumer_id, name=f"app-{time.monotonic_ns()}", kind=ClientKind(kind),
            grant_types=grants, scopes=scopes, redirect_uris=redirect_uris, actor=ACTOR)
        return Registered(client.client_id, secret)

    async def token(self, data: dict[str, str], client: Registered | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if client is not None:
            if client.secret is None:
                data = {**data, "client_id": client.client_id}
            else:
                headers.update(client.basic)
        return await self.http.post("/oauth2/token", data=data, headers=headers, **kwargs)

    async def code(self, client: Registered, *, scope: str | None = "orders:read", user: str = "alice",
                   verifier: str = VERIFIER, state: str = "st-1") -> str:
        params = {"response_type": "code", "client_id": client.client_id, "redirect_uri": REDIRECT,
                  "code_challenge": pkce.s256(verifier), "code_challenge_method": "S256", "state": state}
        if scope is not None:
            params["scope"] = scope
        response = await self.http.get("/oauth2/authorize", params=params,
                                       headers={"x-test-user": user_assertion(user, USER_SECRET)})
        assert response.status_code == 302, response.text
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["state"] == [state] and query["iss"] == [ISSUER], query
        return query["code"][0]

    async def code_tokens(self, client: Registered, **kwargs: Any) -> dict[str, Any]:
        code = await self.code(client, **kwargs)
        response = await self.token({"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER,
                                     "redirect_uri": REDIRECT}, client)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def introspect(self, token: str, client: Registered) -> dict[str, Any]:
        response = await self.http.post("/oauth2/introspect", data={"token": token}, headers=client.basic)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def claims(self, token: str) -> dict[str, Any]:
        decoded = jwt.decode(token, KeySet.import_key_set(self.keys.jwks()), algorithms=["ES256"])
        assert decoded.header["typ"] == "at+jwt"
        return dict(decoded.claims)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("oauth-template") / "bastion.db"
    asyncio.run(migrate(f"sqlite:///{path}"))
    return path


@asynccontextmanager
async def harness(template: Path, workdir: Path, *, sign_in: SignInStep | None, consent: ConsentStep | None = None,
                  config: dict[str, Any] | None = None) -> AsyncIterator[Harness]:
    path = workdir / "bastion.db"
    shutil.copy(template, path)
    engine = create_engine(f"sqlite:///{path}")
    clock = Clock()
    store = OAuthStore(engine, KeyHasher(PEPPER), clock=clock.utc)
    identity = IdentityStore(engine)
    await identity.put_role("reader", ["orders:read"], actor=ACTOR)
    consumer = await identity.create_consumer("mobile-app", actor=ACTOR, roles=["reader"])
    keys = SigningKeys(store, PEPPER, "ES256", clock=clock.utc)
    await keys.ensure()
    revocations = RevocationList(store, redis_url=None, wall_clock=clock)
    settings = AuthorizationServerConfig.model_validate({"enabled": True, "issuer": ISSUER, **(config or {})})
    server = AuthorizationServer(settings, store=store, keys=keys, revocations=revocations,
                                 counters=MemoryCounterStore(), sign_in=sign_in, wall_clock=clock, consent=consent)
    transport = httpx.ASGITransport(app=server.app, client=(CLIENT_ADDRESS, 0))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        try:
            yield Harness(http, store, identity, keys, revocations, server, clock, consumer.id)
        finally:
            await revocations.close()
            await engine.dispose()


Scenario = Callable[[Harness], Awaitable[None]]


@pytest.fixture
def run(template_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    monkeypatch.setenv(SECRET_ENV, USER_SECRET)

    def runner(scenario: Scenario, *, sign_in: SignInStep | None = None, with_sign_in: bool = True,
               consent: ConsentStep | None = None, config: dict[str, Any] | None = None) -> None:
        async def main() -> None:
            step = sign_in if sign_in is not None else HmacTestSignIn() if with_sign_in else None
            async with harness(template_db, tmp_path, sign_in=step, consent=consent, config=config) as h:
                await scenario(h)

        asyncio.run(main())

    yield runner


def assert_oauth_error(response: httpx.Response, error: str, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "error_description"}, body
    assert body["error"] == error, body
    return body


# -- client credentials --------------------------------------------------------------------------------------


def test_client_credentials_issues_an_rfc9068_access_token(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        response = await h.token({"grant_type": "client_credentials"}, client)
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}  # no refresh token
        assert body["token_type"] == "Bearer" and body["expires_in"] == 600
        assert body["scope"] == "orders:read"  # orders:write is registered, but the consumer's role lacks it
        header = jwt.decode(body["access_token"], KeySet.import_key_set(h.keys.jwks()), algorithms=["ES256"]).header
        assert header["alg"] == "ES256" and header["kid"] == h.keys.signing_key()[0]
        claims = h.claims(body["access_token"])
        assert claims["iss"] == ISSUER and claims["aud"] == "bastion"
        assert claims["sub"] == client.client_id and claims["client_id"] == client.client_id
        assert claims["bst_consumer"] == h.consumer_id
        assert claims["scope"] == "orders:read"
        assert claims["exp"] - claims["iat"] == 600 and abs(claims["iat"] - h.clock.now) <= 1
        assert len(claims["jti"]) >= 16

    run(scenario)


def test_client_secret_post_and_scope_requests(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        post = {"client_id": client.client_id, "client_secret": client.secret or ""}
        response = await h.http.post("/oauth2/token", data={"grant_type": "client_credentials",
                                                            "scope": "orders:read", **post})
        assert response.status_code == 200 and response.json()["scope"] == "orders:read"
        outside = await h.http.post("/oauth2/token", data={"grant_type": "client_credentials",
                                                           "scope": "users:read", **post})
        assert_oauth_error(outside, "invalid_scope")
        lacking = await h.http.post("/oauth2/token", data={"grant_type": "client_credentials",
                                                           "scope": "orders:write", **post})
        assert_oauth_error(lacking, "invalid_scope")  # registered, but nothing of it is grantable

    run(scenario)


def test_client_authentication_failures(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        wrong = Registered(client.client_id, "bcs_" + "x" * 43)
        basic = await h.token({"grant_type": "client_credentials"}, wrong)
        assert_oauth_error(basic, "invalid_client", 401)
        assert basic.headers["www-authenticate"].startswith('Basic realm="bastion"')
        post = await h.http.post("/oauth2/token", data={"grant_type": "client_credentials",
                                                        "client_id": client.client_id, "client_secret": "nope"})
        assert_oauth_error(post, "invalid_client", 400)
        assert "www-authenticate" not in post.headers
        nothing = await h.http.post("/oauth2/token", data={"grant_type": "client_credentials"})
        assert_oauth_error(nothing, "invalid_client", 401)
        both = await h.http.post("/oauth2/token", headers=client.basic, data={
            "grant_type": "client_credentials", "client_secret": client.secret or ""})
        assert_oauth_error(both, "invalid_request")
        no_secret = await h.http.post("/oauth2/token", data={"grant_type": "client_credentials",
                                                             "client_id": client.client_id})
        assert_oauth_error(no_secret, "invalid_client")  # a confidential client must authenticate
        assert basic.json()["error_description"] == post.json()["error_description"]  # no oracle

    run(scenario)


def test_disabled_clients_and_consumers_are_invalid_client(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        await h.store.update_client(client.client_id, actor=ACTOR, status="disabled")
        assert_oauth_error(await h.token({"grant_type": "client_credentials"}, client), "invalid_client", 401)
        other = await h.register()
        await h.identity.update_consumer(h.consumer_id, actor=ACTOR, status="disabled")
        assert_oauth_error(await h.token({"grant_type": "client_credentials"}, other), "invalid_client", 401)

    run(scenario)


def test_grant_types_the_client_is_not_registered_for(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        code_only = await h.register(grants=("authorization_code",))
        assert_oauth_error(await h.token({"grant_type": "client_credentials"}, code_only), "unauthorized_client")
        public = await h.register(kind="public")
        response = await h.token({"grant_type": "client_credentials"}, public)
        assert_oauth_error(response, "unauthorized_client")  # public clients have no secret to prove themselves
        for grant in ("password", "implicit"):
            assert_oauth_error(await h.token({"grant_type": grant, "username": "a", "password": "b"}, code_only),
                               "unsupported_grant_type")

    run(scenario)


# -- request hygiene -----------------------------------------------------------------------------------------


def test_token_endpoint_request_hygiene(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        in_query = await h.http.post("/oauth2/token?grant_type=client_credentials", headers=client.basic,
                                     data={"grant_type": "client_credentials"})
        assert_oauth_error(in_query, "invalid_request")
        as_json = await h.http.post("/oauth2/token", headers=client.basic, json={"grant_type": "client_credentials"})
        assert_oauth_error(as_json, "invalid_request")
        duplicated = await h.http.post("/oauth2/token", headers={**client.basic, "content-type":
                                       "application/x-www-form-urlencoded"},
                                       content=b"grant_type=client_credentials&grant_type=client_credentials")
        assert_oauth_error(duplicated, "invalid_request")
        huge = await h.http.post("/oauth2/token", headers=client.basic,
                                 data={"grant_type": "client_credentials", "scope": "a" * 20000})
        assert_oauth_error(huge, "invalid_request")
        two_headers = await h.http.post("/oauth2/token", headers=[*client.basic.items(), *client.basic.items()],
                                        data={"grant_type": "client_credentials"})
        assert_oauth_error(two_headers, "invalid_request")
        missing = await h.token({}, client)
        assert_oauth_error(missing, "invalid_request")

    run(scenario)


def test_unknown_paths_and_methods_answer_problem_json(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        for path in ("/oauth2/nope", "/oauth2/token/", "/oauth2/", "/.well-known/oauth-authorization-server/x"):
            response = await h.http.get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "route.not_found"
        for method, path, allow in (("GET", "/oauth2/token", "POST"), ("PUT", "/oauth2/authorize", "GET, POST"),
                                    ("HEAD", "/oauth2/jwks", "GET"), ("DELETE", "/oauth2/revoke", "POST"),
                                    ("GET", "/oauth2/introspect", "POST")):
            response = await h.http.request(method, path)
            assert response.status_code == 405, (method, path)
            assert response.headers["allow"] == allow
            if method != "HEAD":
                assert response.json()["code"] == "route.method_not_allowed"

    run(scenario)


# -- authorization code + PKCE -------------------------------------------------------------------------------


def test_code_flow_with_pkce_issues_tokens_for_the_user(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        tokens = await h.code_tokens(client, scope="orders:read orders:write")
        assert set(tokens) == {"access_token", "token_type", "expires_in", "scope", "refresh_token"}
        assert tokens["scope"] == "orders:read"  # the consumer's role grants no orders:write
        assert tokens["refresh_token"].startswith("brt_")
        claims = h.claims(tokens["access_token"])
        assert claims["sub"] == "alice" and claims["client_id"] == client.client_id
        assert claims["bst_consumer"] == h.consumer_id

    run(scenario)


def test_a_code_works_once_and_a_second_redemption_revokes_its_family(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        code = await h.code(client)
        request = {"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER}
        first = await h.token(request, client)
        assert first.status_code == 200, first.text
        tokens = first.json()
        assert (await h.introspect(tokens["access_token"], client))["active"] is True
        second = await h.token(request, client)
        assert_oauth_error(second, "invalid_grant")
        jti = h.claims(tokens["access_token"])["jti"]
        assert h.revocations.is_revoked(jti)
        assert await h.introspect(tokens["access_token"], client) == {"active": False}
        assert await h.introspect(tokens["refresh_token"], client) == {"active": False}
        refresh = await h.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, client)
        assert_oauth_error(refresh, "invalid_grant")

    run(scenario)


def test_code_redemption_checks(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        other = await h.register()
        base = {"grant_type": "authorization_code"}
        no_verifier = await h.token({**base, "code": await h.code(client)}, client)
        assert_oauth_error(no_verifier, "invalid_request")
        short = await h.token({**base, "code": await h.code(client), "code_verifier": "a" * 42}, client)
        assert_oauth_error(short, "invalid_request")
        wrong = await h.token({**base, "code": await h.code(client), "code_verifier": "w" * 43}, client)
        assert_oauth_error(wrong, "invalid_grant")
        elsewhere = await h.token({**base, "code": await h.code(client), "code_verifier": VERIFIER,
                                   "redirect_uri": "https://app.example.test/other"}, client)
        assert_oauth_error(elsewhere, "invalid_grant")
        stolen = await h.token({**base, "code": await h.code(client), "code_verifier": VERIFIER}, other)
        assert_oauth_error(stolen, "invalid_grant")
        unknown = await h.token({**base, "code": "bac_" + "x" * 43, "code_verifier": VERIFIER}, client)
        assert_oauth_error(unknown, "invalid_grant")
        late = await h.code(client)
        h.clock.now += 61  # authorization_code_ttl is 60 s
        expired = await h.token({**base, "code": late, "code_verifier": VERIFIER}, client)
        assert_oauth_error(expired, "invalid_grant")

    run(scenario)


def test_public_clients_use_pkce_and_refresh_without_a_secret(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register(kind="public")
        assert client.secret is None
        tokens = await h.code_tokens(client)
        refreshed = await h.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, client)
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["refresh_token"] != tokens["refresh_token"]

    run(scenario)


# -- refresh tokens ------------------------------------------------------------------------------------------


def test_refresh_rotates_and_reuse_revokes_the_whole_family(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        first = await h.code_tokens(client)
        second_response = await h.token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
                                         client)
        assert second_response.status_code == 200, second_response.text
        second = second_response.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert h.claims(second["access_token"])["sub"] == "alice"
        replay = await h.token({"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}, client)
        assert_oauth_error(replay, "invalid_grant")
        for tokens in (first, second):  # every access token of the family, on this node at once
            assert h.revocations.is_revoked(h.claims(tokens["access_token"])["jti"])
        latest = await h.token({"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}, client)
        assert_oauth_error(latest, "invalid_grant")

    run(scenario)


def test_refresh_scope_may_narrow_but_never_widen(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        await h.identity.put_role("reader", ["orders:read", "orders:write"], actor=ACTOR)
        client = await h.register()
        tokens = await h.code_tokens(client, scope="orders:read orders:write")
        assert tokens["scope"] == "orders:read orders:write"
        narrowed = await h.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                  "scope": "orders:read"}, client)
        assert narrowed.status_code == 200 and narrowed.json()["scope"] == "orders:read"
        latest = narrowed.json()["refresh_token"]
        widened = await h.token({"grant_type": "refresh_token", "refresh_token": latest,
                                 "scope": "orders:read users:read"}, client)
        assert_oauth_error(widened, "invalid_scope")
        # The refused request did not spend the token, and the family keeps its original scope.
        again = await h.token({"grant_type": "refresh_token", "refresh_token": latest}, client)
        assert again.status_code == 200 and again.json()["scope"] == "orders:read orders:write"
        # Permissions are re-read at every refresh: a role change reaches the next token.
        await h.identity.put_role("reader", ["orders:read"], actor=ACTOR)
        reduced = await h.token({"grant_type": "refresh_token", "refresh_token": again.json()["refresh_token"]},
                                client)
        assert reduced.status_code == 200 and reduced.json()["scope"] == "orders:read"

    run(scenario)


def test_refresh_tokens_are_bound_to_their_client(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client, other = await h.register(), await h.register()
        tokens = await h.code_tokens(client)
        stolen = await h.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, other)
        assert_oauth_error(stolen, "invalid_grant")
        own = await h.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, client)
        assert own.status_code == 200  # the other client's attempt did not burn it
        garbage = await h.token({"grant_type": "refresh_token", "refresh_token": "x" * 300}, client)
        assert_oauth_error(garbage, "invalid_grant")

    run(scenario)


# -- the authorization endpoint ------------------------------------------------------------------------------


def authorize_params(client: Registered, **overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code", "client_id": client.client_id, "redirect_uri": REDIRECT, "state": "s1",
        "code_challenge": pkce.s256(VERIFIER), "code_challenge_method": "S256", "scope": "orders:read"}
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def user_headers(user: str = "alice") -> dict[str, str]:
    return {"x-test-user": user_assertion(user, USER_SECRET)}


def test_authorize_never_redirects_to_an_unchecked_uri(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        evil = "https://evil.example/cb"
        for params in (authorize_params(client, redirect_uri=evil),
                       authorize_params(client, redirect_uri=REDIRECT + "/"),
                       authorize_params(client, client_id="bcl_unknown"),
                       authorize_params(client, client_id=None),
                       {**authorize_params(client), "redirect_uri": evil, "response_type": "token"}):
            response = await h.http.get("/oauth2/authorize", params=params, headers=user_headers())
            assert response.status_code == 400, params
            assert "location" not in response.headers
            assert response.headers["content-type"].startswith("text/html")
            assert "evil.example" not in response.text
        duplicate = await h.http.get("/oauth2/authorize?" + httpx.QueryParams(authorize_params(client)).__str__()
                                     + "&client_id=" + client.client_id, headers=user_headers())
        assert duplicate.status_code == 400 and "location" not in duplicate.headers

    run(scenario)


@pytest.mark.parametrize(("overrides", "error"), [
    ({"response_type": None}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"response_type": "code id_token"}, "unsupported_response_type"),
    ({"code_challenge": None}, "invalid_request"),
    ({"code_challenge_method": None}, "invalid_request"),
    ({"code_challenge_method": "plain", "code_challenge": VERIFIER}, "invalid_request"),
    ({"code_challenge": "short"}, "invalid_request"),
    ({"scope": "users:read"}, "invalid_scope"),
    ({"scope": "orders:read\tx"}, "invalid_scope"),
])
def test_authorize_errors_go_back_to_the_client_with_state_and_iss(
        run: Callable[..., None], overrides: dict[str, str | None], error: str) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        response = await h.http.get("/oauth2/authorize", params=authorize_params(client, **overrides),
                                    headers=user_headers())
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        assert location.startswith(REDIRECT + "?")
        query = parse_qs(urlsplit(location).query)
        assert query["error"] == [error] and query["state"] == ["s1"] and query["iss"] == [ISSUER]
        assert "code" not in query
        assert response.headers["cache-control"] == "no-store"

    run(scenario)


def test_authorize_for_a_client_without_the_code_grant(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register(grants=("client_credentials",), redirect_uris=(REDIRECT,))
        response = await h.http.get("/oauth2/authorize", params=authorize_params(client), headers=user_headers())
        assert parse_qs(urlsplit(response.headers["location"]).query)["error"] == ["unauthorized_client"]

    run(scenario)


def test_authorize_by_post_answers_303_and_keeps_the_redirect_query(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        with_query = "https://app.example.test/cb?tenant=a"
        client = await h.register(redirect_uris=(with_query,))
        response = await h.http.post("/oauth2/authorize", data=authorize_params(client, redirect_uri=None),
                                     headers=user_headers())
        assert response.status_code == 303, response.text
        location = response.headers["location"]
        assert location.startswith(with_query + "&")
        query = parse_qs(urlsplit(location).query)
        assert query["tenant"] == ["a"] and query["code"][0].startswith("bac_")

    run(scenario)


def test_the_sign_in_steps_own_response_is_passed_through(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        response = await h.http.get("/oauth2/authorize", params=authorize_params(client))
        assert response.status_code == 401 and response.text == "sign in required"
        forged = await h.http.get("/oauth2/authorize", params=authorize_params(client),
                                  headers={"x-test-user": user_assertion("mallory", "not-the-secret")})
        assert forged.status_code == 401

    run(scenario)


def test_without_a_sign_in_step_the_client_gets_temporarily_unavailable(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        response = await h.http.get("/oauth2/authorize", params=authorize_params(client))
        assert response.status_code == 302
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["error"] == ["temporarily_unavailable"] and query["state"] == ["s1"]

    run(scenario, with_sign_in=False)


def test_test_sign_in_refuses_everything_without_its_secret(run: Callable[..., None],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(h: Harness) -> None:
        monkeypatch.delenv(SECRET_ENV)
        client = await h.register()
        response = await h.http.get("/oauth2/authorize", params=authorize_params(client), headers=user_headers())
        assert response.status_code == 403

    run(scenario)


# -- revocation and introspection ----------------------------------------------------------------------------


def test_revoking_an_access_token(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client, other = await h.register(), await h.register()
        token = (await h.token({"grant_type": "client_credentials"}, client)).json()["access_token"]
        jti = h.claims(token)["jti"]
        by_other = await h.http.post("/oauth2/revoke", data={"token": token}, headers=other.basic)
        assert by_other.status_code == 200 and not h.revocations.is_revoked(jti)  # left alone
        anonymous = await h.http.post("/oauth2/revoke", data={"token": token})
        assert_oauth_error(anonymous, "invalid_client", 401)
        revoked = await h.http.post("/oauth2/revoke", data={"token": token, "token_type_hint": "access_token"},
                                    headers=client.basic)
        assert revoked.status_code == 200 and revoked.content == b""
        assert h.revocations.is_revoked(jti)
        assert await h.introspect(token, client) == {"active": False}
        _, entries = await h.store.revocations_since(0)
        assert jti in {j for j, _ in entries}  # durable, for the other nodes' poll
        for unknown in ("bogus", "brt_" + "x" * 43, "a.b.c", token[:-4] + "AAAA"):
            response = await h.http.post("/oauth2/revoke", data={"token": unknown}, headers=client.basic)
            assert response.status_code == 200, unknown

    run(scenario)


def test_revoking_a_refresh_token_revokes_its_family(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register(kind="public")
        tokens = await h.code_tokens(client)
        response = await h.http.post("/oauth2/revoke", data={"token": tokens["refresh_token"],
                                                             "client_id": client.client_id})
        assert response.status_code == 200
        assert h.revocations.is_revoked(h.claims(tokens["access_token"])["jti"])
        refresh = await h.token({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, client)
        assert_oauth_error(refresh, "invalid_grant")

    run(scenario)


def test_introspection(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client, resource_server = await h.register(), await h.register(grants=("client_credentials",))
        tokens = await h.code_tokens(client)
        active = await h.introspect(tokens["access_token"], resource_server)  # any confidential client may ask
        claims = h.claims(tokens["access_token"])
        assert active == {"active": True, "scope": "orders:read", "client_id": client.client_id, "sub": "alice",
                          "exp": claims["exp"], "iat": claims["iat"], "iss": ISSUER, "aud": "bastion",
                          "token_type": "Bearer", "jti": claims["jti"]}
        refresh = await h.introspect(tokens["refresh_token"], client)
        assert refresh["active"] is True and refresh["client_id"] == client.client_id and refresh["sub"] == "alice"
        for inactive in ("nope", "brt_" + "y" * 43, tokens["access_token"][:-4] + "AAAA"):
            assert await h.introspect(inactive, client) == {"active": False}
        h.clock.now += 601
        assert await h.introspect(tokens["access_token"], client) == {"active": False}

    run(scenario)


def test_introspection_requires_a_confidential_client(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        public = await h.register(kind="public")
        token = (await h.token({"grant_type": "client_credentials"}, client)).json()["access_token"]
        anonymous = await h.http.post("/oauth2/introspect", data={"token": token})
        assert_oauth_error(anonymous, "invalid_client", 401)
        assert anonymous.headers["www-authenticate"].startswith("Basic")
        as_public = await h.http.post("/oauth2/introspect", data={"token": token, "client_id": public.client_id})
        assert_oauth_error(as_public, "invalid_client", 401)
        wrong_post = await h.http.post("/oauth2/introspect", data={"token": token, "client_id": client.client_id,
                                                                   "client_secret": "wrong"})
        assert_oauth_error(wrong_post, "invalid_client", 401)  # RFC 7662 2.3: always 401 here
        bearer = await h.http.post("/oauth2/introspect", data={"token": token},
                                   headers={"authorization": f"Bearer {token}"})
        assert_oauth_error(bearer, "invalid_client", 401)
        missing = await h.http.post("/oauth2/introspect", data={}, headers=client.basic)
        assert_oauth_error(missing, "invalid_request")

    run(scenario)


# -- documents -----------------------------------------------------------------------------------------------


def test_metadata_and_jwks(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        response = await h.http.get("/.well-known/oauth-authorization-server")
        assert response.status_code == 200 and response.headers["cache-control"] == "public, max-age=300"
        meta = response.json()
        assert meta["issuer"] == ISSUER
        assert meta["token_endpoint"] == ISSUER + "/oauth2/token"
        assert meta["authorization_endpoint"] == ISSUER + "/oauth2/authorize"
        assert meta["jwks_uri"] == ISSUER + "/oauth2/jwks"
        assert meta["revocation_endpoint"] == ISSUER + "/oauth2/revoke"
        assert meta["introspection_endpoint"] == ISSUER + "/oauth2/introspect"
        assert meta["response_types_supported"] == ["code"]
        assert meta["code_challenge_methods_supported"] == ["S256"]
        assert set(meta["grant_types_supported"]) == {"authorization_code", "client_credentials", "refresh_token"}
        assert "none" not in meta["introspection_endpoint_auth_methods_supported"]
        assert meta["authorization_response_iss_parameter_supported"] is True
        jwks = await h.http.get("/oauth2/jwks")
        assert jwks.headers["cache-control"] == "public, max-age=60"
        keys = jwks.json()["keys"]
        assert len(keys) == 2  # the active key and the next one, published before it signs
        assert all(k["use"] == "sig" and k["alg"] == "ES256" and "d" not in k for k in keys)

    run(scenario)


# -- the brute-force brake -----------------------------------------------------------------------------------


def test_repeated_failures_block_the_address_with_slow_down(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        wrong = Registered(client.client_id, "bcs_" + "z" * 43)
        for _ in range(3):
            assert_oauth_error(await h.token({"grant_type": "client_credentials"}, wrong), "invalid_client", 401)
        for _ in range(2):  # bad refresh tokens count as well
            garbage = await h.token({"grant_type": "refresh_token", "refresh_token": "brt_" + "q" * 43}, client)
            assert_oauth_error(garbage, "invalid_grant")
        blocked = await h.token({"grant_type": "client_credentials"}, client)  # even the right secret
        body = assert_oauth_error(blocked, "slow_down", 429)
        assert "retry" in body["error_description"].lower()
        assert blocked.headers["retry-after"] == "120"
        revoke = await h.http.post("/oauth2/revoke", data={"token": "x"}, headers=client.basic)
        assert revoke.status_code == 429

    run(scenario, config={"token_endpoint_limits": {"max_failures": 4, "window": 60, "block": 120}})


class ScriptedConsent:
    """A consent step answering what the test says (the default step approves everything offered)."""

    def __init__(self) -> None:
        self.answer: Approved | Denied | Response = Denied()
        self.offered: list[tuple[str, tuple[str, ...]]] = []

    async def decide(self, request: Request, user: SignedInUser, client: OAuthClient,
                     scopes: Sequence[str]) -> Approved | Denied | Response:
        self.offered.append((user.subject, tuple(scopes)))
        return self.answer


def test_the_consent_step_decides_within_what_was_offered(run: Callable[..., None]) -> None:
    consent = ScriptedConsent()

    async def scenario(h: Harness) -> None:
        await h.identity.put_role("reader", ["orders:read", "orders:write"], actor=ACTOR)
        client = await h.register()
        params = authorize_params(client, scope="orders:read orders:write")
        denied = await h.http.get("/oauth2/authorize", params=params, headers=user_headers("bob"))
        assert parse_qs(urlsplit(denied.headers["location"]).query)["error"] == ["access_denied"]
        assert consent.offered == [("bob", ("orders:read", "orders:write"))]
        consent.answer = Response("consent screen", status_code=200)
        screen = await h.http.get("/oauth2/authorize", params=params, headers=user_headers("bob"))
        assert screen.status_code == 200 and screen.text == "consent screen"
        consent.answer = Approved(("orders:read", "admin:everything"))  # more than offered is ignored
        approved = await h.http.get("/oauth2/authorize", params=params, headers=user_headers("bob"))
        code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
        tokens = (await h.token({"grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER},
                                client)).json()
        assert tokens["scope"] == "orders:read" and h.claims(tokens["access_token"])["sub"] == "bob"
        consent.answer = Approved(("admin:everything",))
        nothing = await h.http.get("/oauth2/authorize", params=params, headers=user_headers("bob"))
        assert parse_qs(urlsplit(nothing.headers["location"]).query)["error"] == ["access_denied"]

    run(scenario, consent=consent)


def test_tokens_of_a_retired_key_stay_valid_after_rotation(run: Callable[..., None]) -> None:
    async def scenario(h: Harness) -> None:
        client = await h.register()
        before = (await h.token({"grant_type": "client_credentials"}, client)).json()["access_token"]
        old_kid, _, _ = h.keys.signing_key()
        next_kid = next(k.kid for k in h.keys.info() if k.state == "next")
        await h.keys.rotate(actor=ACTOR, keep_for=timedelta(seconds=900))
        after = (await h.token({"grant_type": "client_credentials"}, client)).json()["access_token"]
        assert jwt.decode(after, KeySet.import_key_set(h.keys.jwks()), algorithms=["ES256"]).header["kid"] == next_kid
        published = {k["kid"] for k in (await h.http.get("/oauth2/jwks")).json()["keys"]}
        assert old_kid in published and next_kid in published and len(published) == 3
        for token in (before, after):
            assert (await h.introspect(token, client))["active"] is True
        revoked = await h.http.post("/oauth2/revoke", data={"token": before}, headers=client.basic)
        assert revoked.status_code == 200 and h.revocations.is_revoked(h.claims(before)["jti"])

    run(scenario)


def test_a_token_issued_after_its_client_was_cut_off_is_never_handed_out(run: Callable[..., None]) -> None:
    """The race a token request can lose against a disable: the token is recorded as revoked, and refused."""
    from bastion.oauth.server.errors import OAuthError
    from bastion.oauth.server.tokens import AccessTokens

    async def scenario(h: Harness) -> None:
        registered = await h.register()
        client = await h.store.get_client(registered.client_id)
        assert client is not None
        await h.store.update_client(client.client_id, actor=ACTOR, status="disabled")
        tokens = AccessTokens(h.store, h.keys, h.server.settings, wall_clock=h.clock)
        with pytest.raises(OAuthError) as refused:
            await tokens.issue(client, subject=client.client_id, scopes=["orders:read"], family_id=None)
        assert refused.value.error == "invalid_grant"

    run(scenario)
