"""Authlib's OAuth 2 client (httpx) against Bastion's authorization server: the third voice (it shares code
lineage with Authlib's server, which Bastion does not use)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from tests.conformance.conftest import OAuthDeployment
from tests.support.oauth import REDIRECT_URI, user_headers


def metadata(deployment: OAuthDeployment) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(deployment.issuer + "/.well-known/oauth-authorization-server").json()
    assert body["issuer"] == deployment.issuer
    assert body["code_challenge_methods_supported"] == ["S256"]
    return body


def api_status(deployment: OAuthDeployment, token: str) -> int:
    return httpx.get(deployment.issuer + "/v1/orders", headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_client_credentials_with_each_client_authentication(deployment: OAuthDeployment, auth_method: str) -> None:
    meta = metadata(deployment)
    clients = deployment.clients
    with OAuth2Client(clients.confidential_id, clients.confidential_secret, scope="orders:read",
                      token_endpoint_auth_method=auth_method) as client:
        token = client.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
        assert token["scope"] == "orders:read"
        assert api_status(deployment, token["access_token"]) == 200
        info = client.introspect_token(meta["introspection_endpoint"], token=token["access_token"]).json()
        assert info["active"] is True and info["token_type"].lower() == "bearer"
        assert client.revoke_token(meta["revocation_endpoint"], token=token["access_token"],
                                   token_type_hint="access_token").status_code == 200
        assert api_status(deployment, token["access_token"]) == 401


def test_a_scope_beyond_the_clients_is_invalid_scope(deployment: OAuthDeployment) -> None:
    meta = metadata(deployment)
    clients = deployment.clients
    with OAuth2Client(clients.confidential_id, clients.confidential_secret, scope="orders:write") as client, \
            pytest.raises(OAuthError, match="invalid_scope"):
        client.fetch_token(meta["token_endpoint"], grant_type="client_credentials")


def test_code_flow_refresh_and_revocation_of_the_family(deployment: OAuthDeployment) -> None:
    meta = metadata(deployment)
    verifier = generate_token(64)
    with OAuth2Client(deployment.clients.public_id, scope="orders:read", redirect_uri=REDIRECT_URI,
                      code_challenge_method="S256", token_endpoint_auth_method="none") as client:
        url, state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
        answer = httpx.get(url, headers=user_headers(deployment.env))
        assert answer.status_code in (302, 303), answer.text
        location = answer.headers["location"]
        assert httpx.URL(location).params["iss"] == deployment.issuer  # RFC 9207
        assert httpx.URL(location).params["state"] == state
        token = client.fetch_token(meta["token_endpoint"], authorization_response=location, code_verifier=verifier)
        assert api_status(deployment, token["access_token"]) == 200
        refreshed = client.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
        assert api_status(deployment, refreshed["access_token"]) == 200
        # Revoking the refresh token ends the family: its access tokens stop working at once.
        assert client.revoke_token(meta["revocation_endpoint"], token=refreshed["refresh_token"],
                                   token_type_hint="refresh_token").status_code == 200
        assert api_status(deployment, refreshed["access_token"]) == 401
        with pytest.raises(OAuthError, match="invalid_grant"):
            client.refresh_token(meta["token_endpoint"], refresh_token=refreshed["refresh_token"])
