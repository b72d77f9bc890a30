"""Access log, secret redaction, metrics and the admin listener of the real gateway."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

import httpx

from tests.support.admin import admin_headers
from tests.support.processes import Gateway, Upstream, assert_safe_problem, base_config

ACCESS_FIELDS = {"time", "request_id", "client", "method", "route", "status", "upstream_status", "duration_ms",
                 "bytes_in", "bytes_out", "reject_code"}


def metric_samples(gateway: Gateway, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(gateway.admin_url + "/metrics", timeout=5.0).text
    samples = []
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
            samples.append((labels, float(match.group(2))))
    return samples


def healthy_targets(gateway: Gateway) -> dict[str, float]:
    return {labels["upstream"]: value for labels, value in metric_samples(gateway, "bastion_upstream_healthy_targets")}


def test_access_log_has_one_record_per_request(gateway: Gateway) -> None:
    with gateway.client() as client:
        ok = client.get("/v1/users")
        posted = client.post("/v1/echo", content=b"0123456789")
        missing = client.get("/v1/nope")
        failed = client.get("/v1/boom")
    records = gateway.wait_access_log(4)
    assert len(records) == 4
    by_id = {r["request_id"]: r for r in records}
    for record in records:
        assert set(record) >= ACCESS_FIELDS, record
        assert record["client"] == "127.0.0.1"
        assert record["duration_ms"] >= 0
        assert isinstance(record["time"], float)
    first = by_id[ok.headers["x-request-id"]]
    assert (first["method"], first["route"], first["status"], first["upstream_status"]) == \
        ("GET", "shop-v1.listUsers", 200, 200)
    assert first["bytes_out"] > len(ok.content) and first["reject_code"] is None
    second = by_id[posted.headers["x-request-id"]]
    assert (second["method"], second["route"], second["bytes_in"]) == ("POST", "shop-v1.echo", 10)
    third = by_id[missing.headers["x-request-id"]]
    assert (third["route"], third["status"], third["upstream_status"], third["reject_code"]) == \
        ("-", 404, None, "route.not_found")
    fourth = by_id[failed.headers["x-request-id"]]
    assert (fourth["status"], fourth["upstream_status"], fourth["reject_code"]) == \
        (500, 500, "upstream.server_error")


def test_secrets_never_reach_the_logs(gateway: Gateway) -> None:
    values = {name: f"{name}-{secrets.token_hex(8)}" for name in
              ("bearer", "cookie", "apikey", "api_key", "token", "access_token", "password", "sig")}
    with gateway.client() as client:
        response = client.get(
            "/v1/echo",
            params={"api_key": values["api_key"], "token": values["token"], "access_token": values["access_token"],
                    "password": values["password"], "X-Amz-Signature": values["sig"], "page": "2"},
            headers={"authorization": f"Bearer {values['bearer']}", "cookie": f"session={values['cookie']}",
                     "x-api-key": values["apikey"]},
        )
        rejected = client.get("/v1/nope", params={"token": values["token"]},
                              headers={"authorization": f"Bearer {values['bearer']}"})
    assert response.status_code == 200 and rejected.status_code == 404
    echoed = response.json()
    assert values["api_key"] in echoed["query"]  # the upstream does get them: only the logs must not
    records = gateway.wait_access_log(2)
    assert len(records) == 2
    record = next(r for r in records if r["request_id"] == response.headers["x-request-id"])
    assert "page=2" in record["query"] and "api_key=[REDACTED]" in record["query"]
    gateway.stop()  # flushes everything it would log
    everything = gateway.access_log_path.read_text() + gateway.logs()
    for name, value in values.items():
        assert value not in everything, f"{name} leaked into the logs"


def test_metrics_use_route_names_never_raw_paths(gateway: Gateway) -> None:
    with gateway.client() as client:
        for index in range(50):
            client.get(f"/random/{secrets.token_hex(6)}/{index}")  # no route
            if index % 2:
                client.get(f"/v1/users/{secrets.randbelow(10**9)}")  # one route, many paths
        client.get("/v1/boom")
        client.get("/v1/status/200")
    requests = metric_samples(gateway, "bastion_requests_total")
    routes = {labels["route"] for labels, _ in requests}
    assert routes == {"shop-v1.getUser", "-", "shop-v1.boom", "shop-v1.status"}, routes
    counts = {(labels["route"], labels["status"]): value for labels, value in requests}
    assert counts[("-", "404")] == 50
    assert sum(v for (route, _), v in counts.items() if route == "shop-v1.getUser") == 25
    rejections = {labels["code"]: value for labels, value in metric_samples(gateway, "bastion_rejections_total")}
    assert rejections["route.not_found"] == 50
    assert rejections["upstream.server_error"] == 1
    upstream = metric_samples(gateway, "bastion_upstream_duration_seconds_count")
    assert [(labels, value) for labels, value in upstream] == [({"upstream": "shop"}, 27.0)]
    durations = metric_samples(gateway, "bastion_request_duration_seconds_count")
    assert {labels["route"] for labels, _ in durations} == routes


def test_healthz_and_readyz(gateway: Gateway) -> None:
    health = httpx.get(gateway.admin_url + "/healthz", timeout=5.0)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = httpx.get(gateway.admin_url + "/readyz", timeout=5.0)
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["generation"] == 1
    assert body["upstreams"] == {"shop": {"healthy_targets": 1, "targets": 1}}
    assert body["listeners"]["http"] == gateway.ports["http"]
    assert ready.headers["cache-control"] == "no-store"


ADMIN_PROBLEMS = [
    ("GET", "/nope", 404, "admin.not_found"),
    ("GET", "/admin/v1/unknown", 404, "admin.not_found"),
    ("GET", "/v1/users", 404, "admin.not_found"),  # the APIs are not served on the admin listener
    ("GET", "/admin/v1/reload", 405, "admin.method_not_allowed"),
    ("DELETE", "/metrics", 405, "admin.method_not_allowed"),
]


def test_admin_listener_answers_problems(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.admin_url, timeout=5.0) as client:
        for method, path, status, code in ADMIN_PROBLEMS:
            response = client.request(method, path)
            assert response.status_code == status, (method, path)
            assert_safe_problem(response, code)


def test_admin_reload_problem_is_safe_for_a_missing_file(make_gateway: Callable[..., Gateway],
                                                         upstream: Upstream) -> None:
    gateway = make_gateway(base_config(upstream.url))
    gateway.config_path.unlink()
    response = httpx.post(gateway.admin_url + "/admin/v1/reload", headers=admin_headers(gateway), timeout=5.0)
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "config.invalid"
    assert body["request_id"] == response.headers["x-request-id"]
    assert any("cannot read file" in error for error in body["errors"]), body


def test_metrics_scrape_reports_current_gauges(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    config = base_config(upstream.url)
    config["upstreams"]["spare"] = {"targets": [{"url": upstream.url}, {"url": upstream.url + "/x"}]}
    gateway = make_gateway(config)
    assert healthy_targets(gateway) == {"shop": 1.0, "spare": 2.0}  # without anything having asked /readyz first
    with gateway.client() as client:
        assert client.get("/v1/users").status_code == 200
        connections = {labels["listener"]: value for labels, value in
                       metric_samples(gateway, "bastion_open_connections")}
    assert connections["http"] == 1.0 and connections["admin"] >= 1.0
    del config["upstreams"]["spare"]
    gateway.write_config(config)
    assert httpx.post(gateway.admin_url + "/admin/v1/reload", headers=admin_headers(gateway),
                      timeout=5.0).status_code == 200
    assert healthy_targets(gateway) == {"shop": 1.0}  # a removed upstream does not linger
