"""The built-in authorization server on two gateway nodes sharing PostgreSQL (and Redis), in front of the real
demo API: tokens one node issues work on the other through signing-key rotations, and a revocation or a
refresh-token replay on one node reaches the other at once (Redis) or within the store poll (no Redis)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bastion.oauth.server import pkce
from tests.e2e.test_oauth_admin import jwks_kids, signing_kid
from tests.support.oauth import REDIRECT_URI, user_headers
from tests.support.oauth_nodes import API_PATH, OAuthNodes, oauth_nodes, wait_for
from tests.support.processes import Gateway, Upstream, assert_safe_problem

SIGNING_KEYS = "/admin/v1/oauth/signing-keys"
WAIT = 10.0  # bound on waiting for something asynchronous (the nodes' key reload fallback is 5 s)
POLL_WAIT = 5.0  # without Redis a revocation arrives with the store poll (every second)
VERIFIER = "multinode-verifier-" + "v" * 40


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def client_credentials(http: httpx.Client, nodes: OAuthNodes) -> httpx.Response:
    return http.post("/oauth2/token", data={"grant_type": "client_credentials", "scope": "orders:read"},
                     auth=(nodes.clients.confidential_id, nodes.clients.confidential_secret))


def issued_token(http: httpx.Client, nodes: OAuthNodes) -> str:
    answer = client_credentials(http, nodes)
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def assert_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert_safe_problem(answer, "auth.credentials_invalid")
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def assert_oauth_error(answer: httpx.Response, error: str) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"] == error, answer.text


# -- 1. signing-key rotation while traffic flows ------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    """One token: issued by one node, presented at once to the other."""

    issued_on: int
    used_on: int
    kid: str
    status: int
    detail: str  # the refusal, when there was one


class CrossTraffic:
    """Threads that keep obtaining client-credentials tokens from the nodes in turn and calling the protected
    API on the other node with each token right away."""

    def __init__(self, nodes: OAuthNodes, threads: int = 2) -> None:
        self._nodes = nodes
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.uses: list[Use] = []
        self.errors: list[str] = []
        self.kept: dict[str, str] = {}  # kid -> the first token it signed, presented again at the end
        # The threads start on different nodes, so both directions flow at every moment.
        self._threads = [threading.Thread(target=self._run, args=(turn,), daemon=True) for turn in range(threads)]

    def __enter__(self) -> CrossTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, turn: int) -> None:
        count = len(self._nodes.nodes)
        https = [self._nodes.http(node) for node in self._nodes.nodes]
        try:
            while not self._stop.is_set():
                issuer, api = turn % count, (turn + 1) % count
                turn += 1
                issued = client_credentials(https[issuer], self._nodes)
                if issued.status_code != 200:
                    self._record_error(f"token endpoint of node {issuer}: {issued.status_code} {issued.text}")
                    continue
                token = issued.json()["access_token"]
                answer = https[api].get(API_PATH, headers=bearer(token))
                detail = "" if answer.status_code == 200 else answer.text
                kid = signing_kid(token)
                with self._lock:
                    self.uses.append(Use(issuer, api, kid, answer.status_code, detail))
                    self.kept.setdefault(kid, token)
        except Exception as exc:  # reported by the test, not lost in the thread
            self._record_error(f"{type(exc).__name__}: {exc}")
        finally:
            for http in https:
                http.close()

    def _record_error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def failed(self) -> bool:
        with self._lock:
            return bool(self.errors) or any(use.status != 200 for use in self.uses)

    def signed_by_every_node(self, kid: str) -> bool:
        """Whether each node has issued a token signed by ``kid`` that the other node was asked to accept."""
        with self._lock:
            issuers = {use.issued_on for use in self.uses if use.kid == kid}
        return issuers == set(range(len(self._nodes.nodes)))


def active_kid(nodes: OAuthNodes, node: Gateway) -> str:
    with nodes.admin(node) as admin:
        listed = admin.get(SIGNING_KEYS)
    assert listed.status_code == 200, listed.text
    return str(next(key["kid"] for key in listed.json()["items"] if key["state"] == "active"))


def stored_kids(nodes: OAuthNodes, node: Gateway) -> set[str]:
    with nodes.admin(node) as admin:
        listed = admin.get(SIGNING_KEYS)
    assert listed.status_code == 200, listed.text
    return {key["kid"] for key in listed.json()["items"]}


def rotate_through_admin_api(nodes: OAuthNodes, node: Gateway) -> str:
    with nodes.admin(node) as admin:
        rotated = admin.post(f"{SIGNING_KEYS}/rotate")
    assert rotated.status_code == 200, rotated.text
    return str(rotated.json()["active"]["kid"])


def rotate_through_cli(nodes: OAuthNodes, node: Gateway) -> str:
    rotation: dict[str, Any] = json.loads(nodes.cli("oauth", "rotate-key", "--json", node=node).stdout)
    return str(rotation["active"]["kid"])


def test_signing_key_rotation_under_cross_node_traffic_rejects_no_valid_token(upstream: Upstream,
                                                                              tmp_path: Path) -> None:
    with oauth_nodes(upstream.url, tmp_path, redis=True) as nodes:
        node_a, node_b = nodes.nodes
        rotations: list[tuple[str, Callable[[], str]]] = [
            ("the admin API of node 0", lambda: rotate_through_admin_api(nodes, node_a)),
            ("the admin API of node 1", lambda: rotate_through_admin_api(nodes, node_b)),
            ("`bastion oauth rotate-key -c` (node 0's configuration)", lambda: rotate_through_cli(nodes, node_a)),
            ("the admin API of node 1 again", lambda: rotate_through_admin_api(nodes, node_b)),
        ]
        generations = [active_kid(nodes, node_a)]
        with CrossTraffic(nodes) as traffic:
            assert wait_for(lambda: traffic.signed_by_every_node(generations[0]) or traffic.failed(),
                            timeout=WAIT), "the nodes issued no token with the first key"
            for name, rotate in rotations:
                generations.append(rotate())
                # Rotate again only once both nodes sign with the new key: every generation gets traffic.
                assert wait_for(lambda: traffic.signed_by_every_node(generations[-1]) or traffic.failed(),
                                timeout=WAIT), f"after the rotation through {name}, not every node signs with it"
        assert not traffic.errors, traffic.errors[:5]
        refused = [use for use in traffic.uses if use.status != 200]
        assert not refused, f"{len(refused)} of {len(traffic.uses)} valid tokens were refused, e.g. {refused[:3]}"
        assert len(set(generations)) == len(rotations) + 1
        assert set(generations) <= {use.kid for use in traffic.uses}
        # Tokens of every generation, retired keys included, still open the API on both nodes.
        for node in nodes.nodes:
            with nodes.http(node) as http:
                for kid in generations:
                    answer = http.get(API_PATH, headers=bearer(traffic.kept[kid]))
                    assert answer.status_code == 200, (kid, answer.text)

        # Both nodes publish the same keys: every generation (retired keys stay published while their tokens
        # live) and the next key, i.e. everything stored.
        assert wait_for(lambda: jwks_kids(node_a) == jwks_kids(node_b), timeout=WAIT), \
            (jwks_kids(node_a), jwks_kids(node_b))
        published = jwks_kids(node_a)
        assert published == stored_kids(nodes, node_b)
        assert set(generations) < published
        print(f"\n{len(traffic.uses)} cross-node calls over {len(generations)} key generations, none refused")


@pytest.mark.parametrize("redis", [True, False], ids=["redis-broadcast", "store-poll"])
def test_emergency_rotation_on_one_node_withdraws_the_key_on_the_other(upstream: Upstream, tmp_path: Path,
                                                                       redis: bool) -> None:
    with oauth_nodes(upstream.url, tmp_path, redis=redis) as nodes:
        node_a, node_b = nodes.nodes
        with nodes.http(node_b) as on_b:
            token = issued_token(on_b, nodes)
            withdrawn = signing_kid(token)
            assert on_b.get(API_PATH, headers=bearer(token)).status_code == 200
            assert on_b.get(API_PATH, headers=bearer(token)).status_code == 200  # now cached as verified on B

            output = nodes.cli("oauth", "rotate-key", "--emergency", node=node_a).stdout
            assert "refused from now on" in output
            # B learns it from the broadcast (Redis) or its reload of the keys (the store).
            assert wait_for(lambda: on_b.get(API_PATH, headers=bearer(token)).status_code == 401,
                            timeout=WAIT), "node 1 still accepts tokens of the withdrawn key"
            assert_refused(on_b.get(API_PATH, headers=bearer(token)))
            assert withdrawn not in jwks_kids(node_b)
            fresh = issued_token(on_b, nodes)
            assert signing_kid(fresh) != withdrawn
            assert on_b.get(API_PATH, headers=bearer(fresh)).status_code == 200


# -- 2. revocation on one node, refused on the other ---------------------------------------------------------


@pytest.mark.parametrize("redis", [True, False], ids=["redis-broadcast", "store-poll"])
def test_revocation_on_one_node_is_refused_on_the_other(upstream: Upstream, tmp_path: Path, redis: bool) -> None:
    with oauth_nodes(upstream.url, tmp_path, redis=redis) as nodes:
        node_a, node_b = nodes.nodes
        with nodes.http(node_a) as on_a, nodes.http(node_b) as on_b:
            token = issued_token(on_b, nodes)
            assert on_b.get(API_PATH, headers=bearer(token)).status_code == 200
            assert on_b.get(API_PATH, headers=bearer(token)).status_code == 200  # now cached as verified on B
            assert on_a.get(API_PATH, headers=bearer(token)).status_code == 200

            revoked = on_a.post("/oauth2/revoke", data={"token": token},
                                auth=(nodes.clients.confidential_id, nodes.clients.confidential_secret))
            assert revoked.status_code == 200, revoked.text
            assert_refused(on_a.get(API_PATH, headers=bearer(token)))  # the revoking node: at once
            if redis:
                # A published before answering: the very next call on B is refused.
                assert_refused(on_b.get(API_PATH, headers=bearer(token)))
            else:
                assert wait_for(lambda: on_b.get(API_PATH, headers=bearer(token)).status_code == 401,
                                timeout=POLL_WAIT), "node 1 never learnt of the revocation from the store"
                assert_refused(on_b.get(API_PATH, headers=bearer(token)))
            # Another token of the same client is untouched on both nodes.
            other = issued_token(on_a, nodes)
            assert on_b.get(API_PATH, headers=bearer(other)).status_code == 200
            assert on_a.get(API_PATH, headers=bearer(other)).status_code == 200
        for node in nodes.nodes:
            assert token not in node.logs()


# -- 3. refresh-token reuse detected across nodes ------------------------------------------------------------


def authorization_code(http: httpx.Client, nodes: OAuthNodes) -> str:
    """The user agent's part: sign in (the test step) at the authorization endpoint, take the code."""
    params = {"response_type": "code", "client_id": nodes.clients.public_id, "redirect_uri": REDIRECT_URI,
              "state": "multinode", "scope": "orders:read", "code_challenge": pkce.s256(VERIFIER),
              "code_challenge_method": "S256"}
    answer = http.get("/oauth2/authorize", params=params, headers=user_headers(nodes.env))
    assert answer.status_code == 302, answer.text
    query = parse_qs(urlsplit(answer.headers["location"]).query)
    assert query["state"] == ["multinode"] and query["iss"] == [nodes.issuer]
    return query["code"][0]


def refresh(http: httpx.Client, nodes: OAuthNodes, refresh_token: str) -> httpx.Response:
    return http.post("/oauth2/token", data={"grant_type": "refresh_token", "client_id": nodes.clients.public_id,
                                            "refresh_token": refresh_token})


def test_refresh_token_reuse_on_another_node_revokes_the_family_everywhere(upstream: Upstream,
                                                                            tmp_path: Path) -> None:
    with oauth_nodes(upstream.url, tmp_path, redis=True) as nodes:
        node_a, node_b = nodes.nodes
        with nodes.http(node_a) as on_a, nodes.http(node_b) as on_b:
            code = authorization_code(on_a, nodes)
            redeemed = on_b.post("/oauth2/token", data={  # a code from node 0 redeemed on node 1
                "grant_type": "authorization_code", "code": code, "code_verifier": VERIFIER,
                "redirect_uri": REDIRECT_URI, "client_id": nodes.clients.public_id})
            assert redeemed.status_code == 200, redeemed.text
            first = redeemed.json()
            for http in (on_a, on_b):
                assert http.get(API_PATH, headers=bearer(first["access_token"])).status_code == 200

            rotated = refresh(on_a, nodes, first["refresh_token"])
            assert rotated.status_code == 200, rotated.text
            second = rotated.json()
            assert second["refresh_token"] != first["refresh_token"]
            for http in (on_b, on_a):
                assert http.get(API_PATH, headers=bearer(second["access_token"])).status_code == 200

            # The rotated-away refresh token presented to the other node: two parties hold the family.
            assert_oauth_error(refresh(on_b, nodes, first["refresh_token"]), "invalid_grant")
            for http in (on_b, on_a):  # node 1 revoked the family and published it before answering
                for tokens in (first, second):
                    assert_refused(http.get(API_PATH, headers=bearer(tokens["access_token"])))
            assert_oauth_error(refresh(on_a, nodes, second["refresh_token"]), "invalid_grant")
        assert "reused" in node_b.logs()
        for node in nodes.nodes:
            for secret in (code, first["refresh_token"], second["refresh_token"]):
                assert secret not in node.logs()
