"""Configuration reloads on the real gateway: admin endpoint and SIGHUP, refusals, no failed requests."""

from __future__ import annotations

import copy
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.support.admin import admin_headers
from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config


def without_route(config: dict[str, Any], name: str) -> dict[str, Any]:
    config["apis"][0]["routes"] = [r for r in config["apis"][0]["routes"] if r["name"] != name]
    return config


def changed_config(upstream: Upstream) -> dict[str, Any]:
    """Adds the `status` route back and retires the v2 API."""
    config = base_config(upstream.url)
    config["apis"][1]["lifecycle"] = "retired"
    return config


def admin_reload(gateway: Gateway) -> httpx.Response:
    return httpx.post(gateway.admin_url + "/admin/v1/reload", headers=admin_headers(gateway), timeout=10.0)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def reloadable(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Gateway:
    return make_gateway(without_route(base_config(upstream.url), "status"))


def test_admin_reload_applies_a_new_route_and_retires_an_api(reloadable: Gateway, upstream: Upstream) -> None:
    with reloadable.client() as client:
        assert client.get("/v1/status/201").status_code == 404
        assert client.get("/v2/users").status_code == 200
        reloadable.write_config(changed_config(upstream))
        response = admin_reload(reloadable)
        assert response.status_code == 200
        assert response.json() == {"status": "reloaded", "generation": 2}
        added = client.get("/v1/status/201")
        retired = client.get("/v2/users")
    assert added.status_code == 201 and added.json() == {"status": 201}
    assert retired.status_code == 410
    assert_safe_problem(retired, "route.retired")
    assert "configuration reloaded: generation 2" in reloadable.logs()
    metrics = httpx.get(reloadable.admin_url + "/metrics").text
    assert "bastion_config_generation 2.0" in metrics
    assert 'bastion_config_reloads_total{result="applied"} 1.0' in metrics


def test_settings_read_at_start_are_named_on_reload(reloadable: Gateway, upstream: Upstream) -> None:
    config = without_route(base_config(upstream.url), "status")
    config["redis_timeout"] = 0.2
    config["server"]["admin"]["failed_auth"] = {"max_failures": 3}
    reloadable.write_config(config)
    assert admin_reload(reloadable).status_code == 200  # the rest of the file applies
    logs = reloadable.logs()
    assert "store, keys.pepper, redis and redis_timeout changes take effect at the next restart" in logs
    assert "server.admin.failed_auth changes take effect at the next restart" in logs


def test_sighup_reloads(reloadable: Gateway, upstream: Upstream) -> None:
    reloadable.write_config(changed_config(upstream))
    reloadable.reload()
    with reloadable.client() as client:
        assert wait_for(lambda: client.get("/v1/status/202").status_code == 202)
        assert client.get("/v2/users").status_code == 410


def _unknown_key(config: dict[str, Any]) -> str:
    config["server"]["limits"]["max_header_byte"] = 4096
    return "server.limits.max_header_byte: unknown key"


def _unknown_upstream(config: dict[str, Any]) -> str:
    config["apis"][0]["upstream"] = "nowhere"
    return "apis[0].upstream: unknown upstream 'nowhere'"


INVALID = {"unknown-key": _unknown_key, "unknown-upstream": _unknown_upstream}


@pytest.mark.parametrize("kind", [*sorted(INVALID), "bad-yaml"])
def test_invalid_config_is_rejected_and_old_one_keeps_serving(reloadable: Gateway, upstream: Upstream,
                                                               kind: str) -> None:
    config = changed_config(upstream)
    if kind == "bad-yaml":
        reloadable.config_path.write_text("version: 1\nserver:\n  https: {enabled: false\n  http: [}\n")
        expected = re.compile(r"bastion\.yaml:\d+: \(document\): YAML syntax error")
    else:
        expected = re.compile(r"bastion\.yaml:\d+: " + re.escape(INVALID[kind](config)))
        reloadable.write_config(config)
    response = admin_reload(reloadable)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "config.invalid"
    assert body["status"] == 422
    assert "still serving generation 1" in body["detail"]
    assert any(expected.search(error) for error in body["errors"]), body["errors"]
    log_lines = [line for line in reloadable.logs().splitlines() if "configuration reload rejected" in line]
    assert log_lines and any(expected.search(line) for line in log_lines), reloadable.logs()
    with reloadable.client() as client:
        assert client.get("/v1/status/200").status_code == 404  # the new route never appeared
        assert client.get("/v2/users").status_code == 200  # nor was the API retired
    assert 'bastion_config_reloads_total{result="rejected"} 1.0' in httpx.get(reloadable.admin_url + "/metrics").text


def test_sighup_with_invalid_config_keeps_serving(reloadable: Gateway, upstream: Upstream) -> None:
    config = changed_config(upstream)
    _unknown_upstream(config)
    reloadable.write_config(config)
    reloadable.reload()
    assert wait_for(lambda: "configuration reload rejected" in reloadable.logs())
    assert "unknown upstream 'nowhere'" in reloadable.logs()
    with reloadable.client() as client:
        assert client.get("/v2/users").status_code == 200
    assert reloadable.process.poll() is None


def _hammer(gateway: Gateway, stop: threading.Event, results: Counter[str], lock: threading.Lock) -> None:
    local: Counter[str] = Counter()
    with gateway.client(timeout=5.0) as client:  # one keep-alive connection per thread
        while not stop.is_set():
            try:
                response = client.get("/v1/users")
                local[str(response.status_code)] += 1
            except httpx.HTTPError as exc:
                local[type(exc).__name__] += 1
    with lock:
        results.update(local)


def test_no_failed_requests_during_reloads_under_load(make_gateway: Callable[..., Gateway],
                                                      upstream: Upstream) -> None:
    first = base_config(upstream.url)
    second = copy.deepcopy(first)
    # Different upstream settings: each reload builds new pools and closes the old ones under traffic.
    second["upstreams"]["shop"]["timeouts"] = {"connect": 1.5, "read": 2.5, "total": 4.5}
    second["upstreams"]["shop"]["max_connections"] = 64
    second["policies"] = {"security-headers": {"frame_options": "SAMEORIGIN"}}
    gateway = make_gateway(first)
    stop = threading.Event()
    results: Counter[str] = Counter()
    lock = threading.Lock()
    threads = [threading.Thread(target=_hammer, args=(gateway, stop, results, lock)) for _ in range(8)]
    for thread in threads:
        thread.start()
    reloads = []
    try:
        for index in range(10):
            time.sleep(0.25)
            gateway.write_config(second if index % 2 == 0 else first)
            reloads.append(admin_reload(gateway).status_code)
        time.sleep(0.25)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert reloads == [200] * 10
    assert set(results) == {"200"}, results
    assert results["200"] > 100, results
    assert "configuration reloaded: generation 11" in gateway.logs()


def test_in_flight_requests_finish_across_a_reload(make_gateway: Callable[..., Gateway],
                                                   upstream: Upstream) -> None:
    gateway = make_gateway(base_config(upstream.url))
    outcomes: list[int | str] = []

    def slow_request() -> None:
        try:
            with gateway.client() as client:
                outcomes.append(client.get("/v1/slow", params={"ms": 800}).status_code)
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=slow_request) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    config = base_config(upstream.url)
    config["upstreams"]["shop"]["timeouts"] = {"connect": 1.0, "read": 0.2, "total": 0.5}  # new pool
    gateway.write_config(config)
    assert admin_reload(gateway).status_code == 200
    for thread in threads:
        thread.join(10)
    assert outcomes == [200] * 4  # they finish on the configuration they started with
    with gateway.client() as client:
        assert client.get("/v1/slow", params={"ms": 800}).status_code == 504  # new requests use the new one


def test_trusted_proxies_change_takes_effect(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["server"]["trusted_proxies"] = ["127.0.0.1/32"]
    gateway = make_gateway(config)
    spoofed = {"x-forwarded-for": "198.51.100.7", "x-request-id": "from-the-proxy"}
    with gateway.client() as client:
        before = client.get("/v1/echo", headers=spoofed)
        config["server"]["trusted_proxies"] = ["10.0.0.0/8"]  # this peer is no longer a trusted proxy
        gateway.write_config(config)
        assert admin_reload(gateway).status_code == 200
        after = client.get("/v1/echo", headers=spoofed)
    assert before.headers["x-request-id"] == "from-the-proxy"
    assert after.headers["x-request-id"] != "from-the-proxy"
    forwarded = [value for name, value in after.json()["headers"] if name == "x-forwarded-for"]
    assert forwarded == ["127.0.0.1"]
    clients = {r["request_id"]: r["client"] for r in gateway.wait_access_log(2)}
    assert clients == {"from-the-proxy": "198.51.100.7", after.headers["x-request-id"]: "127.0.0.1"}
