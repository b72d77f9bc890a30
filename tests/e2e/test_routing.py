"""Routing through the real gateway: deny by default, 404/405, versions side by side, lifecycle."""

from __future__ import annotations

import copy
from collections.abc import Callable

from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config


def test_declared_operation_is_proxied(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/v1/users")
    assert response.status_code == 200
    assert [u["id"] for u in response.json()][:3] == [1, 2, 3]  # other tests may add users to the shared upstream
    assert "server" not in response.headers


def test_path_parameters_and_versions_side_by_side(gateway: Gateway) -> None:
    with gateway.client() as client:
        v1 = client.get("/v1/users/2")
        v2 = client.get("/v2/users/2")
    assert v1.status_code == 200 and v2.status_code == 200
    assert "display_name" not in v1.json()
    assert "display_name" in v2.json()


def test_undeclared_path_is_404_problem(gateway: Gateway) -> None:
    with gateway.client() as client:
        for path in ("/", "/v1", "/v1/admin", "/v3/users", "/debug/echo", "/healthz", "/v1/users/1/extra"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert_safe_problem(response, "route.not_found")


def test_undeclared_method_is_405_with_allow(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.delete("/v1/users/1")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert_safe_problem(response, "route.method_not_allowed")


def test_head_is_implied_by_get(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.head("/v1/users")
    assert response.status_code == 200
    assert response.content == b""


def test_retired_api_answers_410(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["apis"][1]["lifecycle"] = "retired"
    gateway = make_gateway(config)
    with gateway.client() as client:
        assert client.get("/v1/users").status_code == 200
        response = client.get("/v2/users")
    assert response.status_code == 410
    assert_safe_problem(response, "route.retired")


def test_versions_to_different_upstreams(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["upstreams"]["dead"] = {"targets": [{"url": "http://127.0.0.1:9"}],
                                   "retries": {"attempts": 0}}
    config["apis"][1]["upstream"] = "dead"
    gateway = make_gateway(config)
    with gateway.client() as client:
        assert client.get("/v1/users").status_code == 200
        response = client.get("/v2/users")
    assert response.status_code == 502
    assert_safe_problem(response, "upstream.connect_failed")


def test_strip_base_path_and_target_prefix(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["upstreams"]["prefixed"] = {"targets": [{"url": upstream.url + "/debug"}]}
    config["apis"].append({"name": "tools", "base_path": "/tools", "upstream": "prefixed", "public": True,
                           "strip_base_path": True,
                           "routes": [{"name": "echo", "path": "/echo", "methods": ["GET"]}]})
    gateway = make_gateway(config)
    with gateway.client() as client:
        response = client.get("/tools/echo?x=1")
    assert response.status_code == 200
    assert response.json()["path"] == "/debug/echo"
    assert response.json()["query"] == "x=1"


def test_hosts_restrict_an_api(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = copy.deepcopy(base_config(upstream.url))
    config["apis"][1]["hosts"] = ["api.example.com", "*.example.org"]
    gateway = make_gateway(config)
    with gateway.client() as client:
        assert client.get("/v2/users").status_code == 404
        assert client.get("/v2/users", headers={"host": "api.example.com"}).status_code == 200
        assert client.get("/v2/users", headers={"host": "eu.example.org:8080"}).status_code == 200
        assert client.get("/v2/users", headers={"host": "example.org"}).status_code == 404
