"""openid-client (npm; a certified relying-party library, the strictest client we know) against Bastion:
discovery, client credentials, introspection, revocation, authorization code + PKCE, code replay, refresh
rotation and reuse detection, wrong PKCE verifier."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conformance.conftest import OAuthDeployment
from tests.support.oauth import REDIRECT_URI, user_headers

NODE_DIR = Path(__file__).parent / "node"


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "openid-client").is_dir():
        return "openid-client is not installed (make test runs npm ci in tests/conformance/node)"
    return None


@pytest.fixture(scope="module")
def steps(deployment: OAuthDeployment) -> dict[str, dict[str, Any]]:
    reason = _node_ready()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    clients = deployment.clients
    job = {
        "issuer": deployment.issuer,
        "confidential": {"client_id": clients.confidential_id, "client_secret": clients.confidential_secret,
                         "scope": "orders:read"},
        "public": {"client_id": clients.public_id, "redirect_uri": REDIRECT_URI, "scope": "orders:read"},
        "user_headers": user_headers(deployment.env),
        "api_url": deployment.gateway.url + "/v1/orders",
    }
    done = subprocess.run(["node", str(NODE_DIR / "flows.mjs"), json.dumps(job)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {r["step"]: r for r in results}


def _api(deployment: OAuthDeployment, token: str) -> httpx.Response:
    with deployment.gateway.client() as client:
        return client.get("/v1/orders", headers={"Authorization": f"Bearer {token}"})


def test_discovery_checks_the_issuer(steps: dict[str, dict[str, Any]], deployment: OAuthDeployment) -> None:
    assert steps["discovery"]["issuer"] == deployment.issuer
    assert steps["discovery"]["token_endpoint"] == deployment.issuer + "/oauth2/token"


def test_client_credentials_token_works_on_the_api(steps: dict[str, dict[str, Any]],
                                                   deployment: OAuthDeployment) -> None:
    cc = steps["client_credentials"]
    assert cc["ok"], cc
    assert cc["token_type"].lower() == "bearer"
    assert cc["refresh_token"] is None  # never for client credentials
    assert cc["scope"] == "orders:read"
    assert 0 < cc["expires_in"] <= 600
    assert steps["api_client_credentials"]["status"] == 200


def test_introspection_then_revocation(steps: dict[str, dict[str, Any]], deployment: OAuthDeployment) -> None:
    active = steps["introspect_active"]
    assert active["ok"] and active["active"] is True, active
    assert active["client_id"] == deployment.clients.confidential_id
    assert active["scope"] == "orders:read"
    assert steps["revoke_access"]["ok"], steps["revoke_access"]
    revoked = steps["introspect_revoked"]
    assert revoked["ok"], revoked
    assert {k: v for k, v in revoked.items() if k not in ("step", "ok")} == {"active": False}
    assert _api(deployment, steps["client_credentials"]["access_token"]).status_code == 401


def test_authorization_code_with_pkce(steps: dict[str, dict[str, Any]], deployment: OAuthDeployment) -> None:
    assert steps["authorize"]["ok"], steps["authorize"]
    code = steps["authorization_code"]
    assert code["ok"], code
    assert code["refresh_token"], code
    assert steps["api_authorization_code"]["status"] == 200


def test_a_code_is_redeemed_once(steps: dict[str, dict[str, Any]], deployment: OAuthDeployment) -> None:
    replay = steps["code_replay"]
    assert not replay["ok"] and replay["oauth"] == "invalid_grant", replay
    # the tokens issued from the first redemption are revoked with it (RFC 6749 4.1.2)
    assert _api(deployment, steps["authorization_code"]["access_token"]).status_code == 401


def test_refresh_rotation_and_reuse_detection(steps: dict[str, dict[str, Any]],
                                              deployment: OAuthDeployment) -> None:
    first = steps["authorization_code_2"]
    rotated = steps["refresh"]
    assert rotated["ok"], rotated
    assert rotated["refresh_token"] and rotated["refresh_token"] != first["refresh_token"]
    assert steps["api_refreshed"]["status"] == 200
    reuse = steps["refresh_reuse"]
    assert not reuse["ok"] and reuse["oauth"] == "invalid_grant", reuse
    after = steps["refresh_after_reuse"]  # the whole family is revoked, the newest token included
    assert not after["ok"] and after["oauth"] == "invalid_grant", after
    assert _api(deployment, rotated["access_token"]).status_code == 401


def test_a_wrong_pkce_verifier_is_refused(steps: dict[str, dict[str, Any]]) -> None:
    wrong = steps["wrong_verifier"]
    assert not wrong["ok"] and wrong["oauth"] == "invalid_grant", wrong
