"""The `oauth2` policy's request handling: which credential it recognizes, the cache-hit path, headers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from bastion.config.model import OAuthConfig
from bastion.errors.codes import AUTH_CREDENTIALS_IN_QUERY, AUTH_CREDENTIALS_INVALID, AUTH_CREDENTIALS_MISSING
from bastion.identity.principal import Principal
from bastion.oauth.resource import OAuthResourceServer
from bastion.pipeline.context import Headers, RequestContext
from bastion.pipeline.policy import PENDING, PolicyServices, Reject
from bastion.policies.oauth2.config import OAuth2Config
from bastion.policies.oauth2.policy import OAuth2Policy
from bastion.proxy.headers import header_value
from tests.support.test_idp import TestIdP


def request(*headers: tuple[str, str], query: str = "") -> RequestContext:
    items = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers]
    return RequestContext(request_id="r", client_ip="127.0.0.1", method="GET", path="/v1/users", query=query,
                          host="h", headers=Headers(items), tls=False, started=0.0)


@pytest.fixture
def idp() -> Iterator[TestIdP]:
    server = TestIdP()
    yield server
    server.stop()


def test_recognizes_bearer_tokens_but_not_api_keys() -> None:
    policy = OAuth2Policy(OAuth2Config(), PolicyServices(clock=time.monotonic, extras={"check_only": True}))
    assert policy.recognizes(request(("Authorization", "Bearer eyJ.x.y")))
    assert policy.recognizes(request(("Authorization", "bearer  opaque")))
    assert not policy.recognizes(request(("Authorization", "Bearer bst_r_" + "A" * 45)))
    assert not policy.recognizes(request(("Authorization", "Basic dXNlcjpwdw==")))
    assert not policy.recognizes(request(("Authorization", "Bearer ")))
    assert not policy.recognizes(request(("X-API-Key", "bst_r_x")))


def test_header_values_cannot_inject() -> None:
    assert header_value("user-1") == "user-1"
    assert header_value("a\r\nX-Evil: 1") == "a%0D%0AX-Evil: 1"
    assert header_value("José 100%") == "Jos%C3%A9 100%25"


def test_policy_paths_with_a_real_validator(idp: TestIdP) -> None:
    async def scenario() -> None:
        server = OAuthResourceServer(wall_clock=time.time, monotonic=time.monotonic)
        await server.configure(OAuthConfig.model_validate({"issuers": [{
            "name": "idp", "issuer": idp.issuer, "audiences": [idp.audience], "algorithms": ["ES256"],
            "jwks_uri": idp.jwks_uri}]}), None)
        services = PolicyServices(clock=time.monotonic, extras={"oauth_validator": server.validator})
        try:
            with pytest.raises(ValueError, match="unknown issuers"):
                OAuth2Policy(OAuth2Config(issuers=["nobody"]), services)
            policy = OAuth2Policy(OAuth2Config(forward_roles_header=None), services)
            token = idp.sign(scope="users:read")
            first = request(("Authorization", f"Bearer {token}"), ("X-Authenticated-Subject", "spoof"))
            assert policy.try_sync(first) is PENDING  # not verified yet: the async path
            assert await policy.on_request(first) is None
            assert isinstance(first.identity, Principal)
            assert b"x-authenticated-subject: user-1\r\n" in first.upstream_lines
            assert {b"authorization", b"x-authenticated-subject"} <= first.strip_upstream_names
            again = request(("Authorization", f"Bearer {token}"))
            assert policy.try_sync(again) is None  # a cache hit, decided without a task
            assert again.identity is first.identity and again.upstream_lines == first.upstream_lines
            for ctx, code in ((request(), AUTH_CREDENTIALS_MISSING),
                              (request(("Authorization", "Bearer a b")), AUTH_CREDENTIALS_INVALID),
                              (request(("Authorization", f"Bearer {token}"), query=f"access_token={token}"),
                               AUTH_CREDENTIALS_IN_QUERY)):
                outcome = await policy.on_request(ctx)
                assert isinstance(outcome, Reject) and outcome.code is code
        finally:
            await server.close()

    asyncio.run(scenario())
