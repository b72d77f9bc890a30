"""Disabling a client, disabling a consumer and deleting a consumer cut their OAuth tokens off at the real
gateway: an access token that worked on an `oauth2` route is refused on the next request (the verified-token
cache notwithstanding), a refresh token stops working (and stays dead when the client or consumer is enabled
again), and the tokens of everyone else keep working. Through the admin API (the revocation is broadcast at
once) and through the CLI's local mode (the gateway learns it from the revocation table it polls)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bastion.oauth.server import pkce
from bastion.oauth.server.store import OAuthStore
from tests.e2e.test_cli_identity import Cli, sqlite_secrets
from tests.e2e.test_cli_oauth import eventually
from tests.e2e.test_oauth_admin import READER_ROLE, access_token, echo_status, oauth_config, token_id
from tests.support.admin import SETUP_ACTOR, IdentityHandle
from tests.support.oauth_user import SECRET_ENV, user_assertion
from tests.support.processes import REPO, Gateway, Upstream, start_gateway

V1 = "/admin/v1"
REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the test reads the Location header
USER_SECRET = secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Client:
    client_id: str
    secret: str

    @property
    def auth(self) -> tuple[str, str]:
        return self.client_id, self.secret


@dataclass
class DisableEnv:
    gateway: Gateway
    identity: IdentityHandle
    store: OAuthStore  # the gateway's OAuth tables, opened from the test process
    admin: httpx.Client

    def consumer(self, prefix: str) -> str:
        return self.identity.consumer(f"{prefix}-{secrets.token_hex(5)}", roles=[READER_ROLE]).id

    def client(self, consumer_id: str) -> Client:
        client, secret = self.identity.run(self.store.create_client(
            consumer_id=consumer_id, name="app", kind="confidential",
            grant_types=["client_credentials", "authorization_code", "refresh_token"], scopes=["orders:read"],
            redirect_uris=[REDIRECT], actor=SETUP_ACTOR))
        assert secret is not None
        return Client(client.client_id, secret)

    def revoked_in_store(self) -> set[str]:
        """What every other node polls."""
        return {jti for jti, _ in self.identity.run(self.store.revocations_since(0))[1]}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[DisableEnv]:
    config = oauth_config(upstream.url)
    config["oauth"]["server"]["user_authentication"] = "tests.support.oauth_user:sign_in"
    # These tests present refused tokens on purpose, all from one address: the brute-force brakes are tested
    # elsewhere (test_oauth_server.py, test_oauth_resource.py).
    config["oauth"]["server"]["token_endpoint_limits"] = {"max_failures": 1000}
    config["apis"][0]["policies"]["oauth2"]["failed_auth"] = {"max_failures": 1000}
    # The gateway imports the test-only sign-in step from this repository and shares its secret with the test.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    gateway = start_gateway(config, Path(tmp_path_factory.mktemp("oauth-disable")),
                            extra_env={"PYTHONPATH": pythonpath, SECRET_ENV: USER_SECRET})
    try:
        with IdentityHandle(gateway) as identity, httpx.Client(base_url=gateway.admin_url, timeout=10.0) as admin:
            identity.role(READER_ROLE, ["orders:read"])
            admin.headers["authorization"] = f"Bearer {identity.admin_key('disable-admin')}"
            yield DisableEnv(gateway, identity, OAuthStore(identity.store.engine, identity.service.hasher), admin)
    finally:
        gateway.stop()


def code_flow_tokens(gateway: Gateway, client: Client) -> tuple[str, str]:
    """(access token, refresh token) of an authorization-code grant for the user alice."""
    verifier = secrets.token_urlsafe(48)
    with gateway.client() as http:
        authorized = http.get("/oauth2/authorize", params={
            "response_type": "code", "client_id": client.client_id, "redirect_uri": REDIRECT, "state": "s",
            "scope": "orders:read", "code_challenge": pkce.s256(verifier), "code_challenge_method": "S256",
        }, headers={"x-test-user": user_assertion("alice", USER_SECRET)})
        assert authorized.status_code == 302, authorized.text
        code = parse_qs(urlsplit(authorized.headers["location"]).query)["code"][0]
        issued = http.post("/oauth2/token", auth=client.auth, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier})
    assert issued.status_code == 200, issued.text
    return issued.json()["access_token"], issued.json()["refresh_token"]


def refresh(gateway: Gateway, client: Client, refresh_token: str) -> httpx.Response:
    with gateway.client() as http:
        return http.post("/oauth2/token", auth=client.auth,
                         data={"grant_type": "refresh_token", "refresh_token": refresh_token})


def oauth_error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, str(response.json().get("error"))


@dataclass
class Holdings:
    """What one client holds: a client-credentials token, and a user's access and refresh tokens."""

    client: Client
    machine: str
    user: str
    refresh: str

    @property
    def access_tokens(self) -> tuple[str, str]:
        return self.machine, self.user


def holdings(env: DisableEnv, consumer_id: str) -> Holdings:
    client = env.client(consumer_id)
    user, refresh_token = code_flow_tokens(env.gateway, client)
    held = Holdings(client, access_token(env.gateway, *client.auth), user, refresh_token)
    for token in held.access_tokens:
        assert echo_status(env.gateway, token) == 200  # now in the gateway's verified-token cache
    return held


def all_refused(env: DisableEnv, held: Holdings) -> bool:
    return all(echo_status(env.gateway, token) == 401 for token in held.access_tokens)


def assert_cut_off(env: DisableEnv, held: Holdings) -> None:
    for token in held.access_tokens:
        assert echo_status(env.gateway, token) == 401
    assert {token_id(token) for token in held.access_tokens} <= env.revoked_in_store()


def assert_untouched(env: DisableEnv, held: Holdings) -> None:
    for token in held.access_tokens:
        assert echo_status(env.gateway, token) == 200
    assert not {token_id(token) for token in held.access_tokens} & env.revoked_in_store()


# -- through the admin API ----------------------------------------------------------------------------------


def test_disabling_a_client_cuts_off_its_tokens_at_once(env: DisableEnv) -> None:
    consumer_id = env.consumer("shop")
    victim, sibling = holdings(env, consumer_id), holdings(env, consumer_id)
    stranger = holdings(env, env.consumer("elsewhere"))

    disabled = env.admin.patch(f"{V1}/oauth/clients/{victim.client.client_id}", json={"status": "disabled"})
    assert disabled.status_code == 200, disabled.text
    assert_cut_off(env, victim)  # the very next request, not the next poll
    assert oauth_error(refresh(env.gateway, victim.client, victim.refresh)) == (401, "invalid_client")
    assert_untouched(env, sibling)
    assert_untouched(env, stranger)
    assert refresh(env.gateway, sibling.client, sibling.refresh).status_code == 200

    # Enabled again, the client obtains new tokens; what it held before stays revoked.
    enabled = env.admin.patch(f"{V1}/oauth/clients/{victim.client.client_id}", json={"status": "active"})
    assert enabled.status_code == 200, enabled.text
    assert oauth_error(refresh(env.gateway, victim.client, victim.refresh)) == (400, "invalid_grant")
    assert echo_status(env.gateway, victim.user) == 401
    assert echo_status(env.gateway, access_token(env.gateway, *victim.client.auth)) == 200


def test_disabling_a_consumer_cuts_off_all_its_clients_tokens(env: DisableEnv) -> None:
    consumer_id = env.consumer("shop")
    first, second = holdings(env, consumer_id), holdings(env, consumer_id)
    stranger = holdings(env, env.consumer("elsewhere"))

    disabled = env.admin.patch(f"{V1}/consumers/{consumer_id}", json={"status": "disabled"})
    assert disabled.status_code == 200, disabled.text
    for held in (first, second):
        assert_cut_off(env, held)
        assert oauth_error(refresh(env.gateway, held.client, held.refresh)) == (401, "invalid_client")
    assert_untouched(env, stranger)
    assert refresh(env.gateway, stranger.client, stranger.refresh).status_code == 200

    # A change that leaves the consumer disabled revokes nothing new; enabling it does not revive anything.
    assert env.admin.patch(f"{V1}/consumers/{consumer_id}", json={"plan": None}).status_code == 200
    assert env.admin.patch(f"{V1}/consumers/{consumer_id}", json={"status": "active"}).status_code == 200
    assert oauth_error(refresh(env.gateway, first.client, first.refresh)) == (400, "invalid_grant")
    assert echo_status(env.gateway, first.machine) == 401
    assert echo_status(env.gateway, access_token(env.gateway, *first.client.auth)) == 200


def test_deleting_a_consumer_cuts_off_its_clients_tokens(env: DisableEnv) -> None:
    consumer_id = env.consumer("shop")
    doomed = holdings(env, consumer_id)
    stranger = holdings(env, env.consumer("elsewhere"))
    since = env.identity.latest_seq()

    deleted = env.admin.delete(f"{V1}/consumers/{consumer_id}")
    assert deleted.status_code == 204, deleted.text
    assert_cut_off(env, doomed)  # revoked before the clients and their token records went with the consumer
    assert oauth_error(refresh(env.gateway, doomed.client, doomed.refresh)) == (401, "invalid_client")
    assert_untouched(env, stranger)
    assert refresh(env.gateway, stranger.client, stranger.refresh).status_code == 200

    # The audit trail: disabled first (no token can be issued between the sweep and the deletion), deleted.
    entries = env.admin.get(f"{V1}/audit", params={"after": since, "limit": 1000}).json()["items"]
    request_id = deleted.headers["x-request-id"]
    trail = [(e["action"], e["target"]) for e in entries if e["request_id"] == request_id]
    assert trail == [("consumer.update", f"consumer:{consumer_id}"), ("consumer.delete", f"consumer:{consumer_id}")]


# -- through the CLI's local mode ---------------------------------------------------------------------------


def test_the_local_cli_cuts_off_tokens_too(env: DisableEnv) -> None:
    """No Redis here: the gateway learns of the revocations from the table it polls every second."""
    cli = Cli(mode=["-c", str(env.gateway.config_path)],
              secrets=sqlite_secrets(env.gateway.config_path.parent / ".bastion"))
    client_owner, disabled_consumer, deleted_consumer = (env.consumer("cli") for _ in range(3))
    by_client, by_consumer, by_deletion = (holdings(env, c) for c in (client_owner, disabled_consumer,
                                                                       deleted_consumer))
    sibling, stranger = holdings(env, client_owner), holdings(env, env.consumer("elsewhere"))

    cli.json("oauth", "clients", "update", by_client.client.client_id, "--disable")
    cli.json("consumers", "update", disabled_consumer, "--disable")
    cli.json("consumers", "delete", deleted_consumer)
    for held in (by_client, by_consumer, by_deletion):
        assert eventually(lambda: all_refused(env, held), timeout=5.0)
        assert_cut_off(env, held)
        assert oauth_error(refresh(env.gateway, held.client, held.refresh)) == (401, "invalid_client")
    assert_untouched(env, sibling)
    assert_untouched(env, stranger)
