"""requests-oauthlib (on oauthlib, an independent codebase) against Bastion's authorization server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from oauthlib.oauth2 import BackendApplicationClient, InvalidGrantError
from requests_oauthlib import OAuth2Session

from tests.conformance.conftest import OAuthDeployment
from tests.support.oauth import REDIRECT_URI, user_headers


@pytest.fixture(autouse=True)
def plain_http_on_loopback(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the test gateway listens on loopback HTTP
    yield


def metadata(deployment: OAuthDeployment) -> dict[str, Any]:
    answer = requests.get(deployment.issuer + "/.well-known/oauth-authorization-server", timeout=10)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    assert body["issuer"] == deployment.issuer
    return body


def api_status(deployment: OAuthDeployment, token: str) -> int:
    return requests.get(deployment.issuer + "/v1/orders", headers={"Authorization": f"Bearer {token}"},
                        timeout=10).status_code


def test_client_credentials_introspection_and_revocation(deployment: OAuthDeployment) -> None:
    meta = metadata(deployment)
    clients = deployment.clients
    session = OAuth2Session(client=BackendApplicationClient(client_id=clients.confidential_id,
                                                            scope=["orders:read"]))
    token = session.fetch_token(token_url=meta["token_endpoint"], client_id=clients.confidential_id,
                                client_secret=clients.confidential_secret)
    assert token["token_type"].lower() == "bearer" and "refresh_token" not in token
    assert api_status(deployment, token["access_token"]) == 200
    auth = (clients.confidential_id, clients.confidential_secret)
    active = requests.post(meta["introspection_endpoint"], data={"token": token["access_token"]}, auth=auth,
                           timeout=10).json()
    assert active["active"] is True and active["client_id"] == clients.confidential_id
    revoked = requests.post(meta["revocation_endpoint"], data={"token": token["access_token"]}, auth=auth,
                            timeout=10)
    assert revoked.status_code == 200
    assert api_status(deployment, token["access_token"]) == 401
    inactive = requests.post(meta["introspection_endpoint"], data={"token": token["access_token"]}, auth=auth,
                             timeout=10)
    assert inactive.json() == {"active": False}
    unknown = requests.post(meta["revocation_endpoint"], data={"token": "never-issued"}, auth=auth, timeout=10)
    assert unknown.status_code == 200  # RFC 7009: unknown tokens are not an error


def test_a_wrong_client_secret_is_invalid_client(deployment: OAuthDeployment) -> None:
    meta = metadata(deployment)
    clients = deployment.clients
    session = OAuth2Session(client=BackendApplicationClient(client_id=clients.confidential_id))
    with pytest.raises(Exception, match="invalid_client"):
        session.fetch_token(token_url=meta["token_endpoint"], client_id=clients.confidential_id,
                            client_secret="bcs_" + "x" * 43)


def _code_flow(deployment: OAuthDeployment, meta: dict[str, Any]) -> tuple[OAuth2Session, dict[str, Any]]:
    session = OAuth2Session(deployment.clients.public_id, redirect_uri=REDIRECT_URI, scope=["orders:read"],
                            pkce="S256")
    url, _state = session.authorization_url(meta["authorization_endpoint"])
    answer = requests.get(url, headers=user_headers(deployment.env), allow_redirects=False, timeout=10)
    assert answer.status_code in (302, 303), answer.text
    token = session.fetch_token(meta["token_endpoint"], authorization_response=answer.headers["location"],
                                include_client_id=True)
    return session, token


def test_authorization_code_with_pkce_then_refresh_rotation_and_reuse(deployment: OAuthDeployment) -> None:
    meta = metadata(deployment)
    session, token = _code_flow(deployment, meta)
    assert api_status(deployment, token["access_token"]) == 200
    first_refresh = token["refresh_token"]
    rotated = session.refresh_token(meta["token_endpoint"], refresh_token=first_refresh,
                                    client_id=deployment.clients.public_id)
    assert rotated["refresh_token"] != first_refresh
    assert api_status(deployment, rotated["access_token"]) == 200
    with pytest.raises(InvalidGrantError):
        session.refresh_token(meta["token_endpoint"], refresh_token=first_refresh,
                              client_id=deployment.clients.public_id)
    with pytest.raises(InvalidGrantError):  # reuse revoked the family: the newest token too
        session.refresh_token(meta["token_endpoint"], refresh_token=rotated["refresh_token"],
                              client_id=deployment.clients.public_id)
    assert api_status(deployment, rotated["access_token"]) == 401
