from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from bastion.config.loader import ConfigError, load_config
from bastion.pipeline.compiled import CompiledConfig
from bastion.pipeline.compiler import compile_config
from bastion.pipeline.policy import PolicyServices
from bastion.policies import builtin_policy_types
from bastion.proxy.cluster import UpstreamCluster
from bastion.routing.router import Match

OPENAPI = {
    "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
    "paths": {"/items": {"get": {"operationId": "listItems"}, "post": {"operationId": "createItem"}},
              "/items/{id}": {"get": {"operationId": "getItem"}}},
}


def compile_text(tmp_path: Path, config: dict[str, object]) -> CompiledConfig:
    (tmp_path / "api.yaml").write_text(yaml.safe_dump(OPENAPI))
    path = tmp_path / "bastion.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    async def run() -> CompiledConfig:
        loop = asyncio.get_running_loop()
        cfg, doc = load_config(path)
        return compile_config(cfg, doc, generation=1, registry=builtin_policy_types(),
                              services=PolicyServices(time.monotonic),
                              clusters=lambda name, up: UpstreamCluster(name, up, loop))

    return asyncio.run(run())


def base() -> dict[str, object]:
    return {
        "server": {"https": {"enabled": False}},
        "upstreams": {"up": {"targets": [{"url": "http://127.0.0.1:1"}]}},
        "apis": [{"name": "items", "base_path": "/v1", "upstream": "up", "openapi": "api.yaml", "public": True,
                  "operations": {"createItem": {"max_body_bytes": 10,
                                                "policies": {"ip-allow": {"allow": ["10.0.0.0/8"]}}}},
                  "policies": {"ip-allow": {"allow": ["127.0.0.1"]}},
                  "routes": [{"name": "health", "path": "/health", "methods": ["GET"],
                              "policies": {"security-headers": {"enabled": False}}}]}],
        "policies": {"security-headers": {}, "ip-allow": {"deny": ["192.0.2.0/24"]}},
    }


def test_openapi_operations_become_routes_with_overrides(tmp_path: Path) -> None:
    compiled = compile_text(tmp_path, base())
    names = {r.name for r in compiled.routes}
    assert names == {"items.listItems", "items.createItem", "items.getItem", "items.health"}
    found = compiled.router.match("h", "POST", "/v1/items")
    assert isinstance(found, Match)
    assert found.target.max_body_bytes == 10
    found = compiled.router.match("h", "GET", "/v1/items/7")
    assert isinstance(found, Match) and found.params == {"id": "7"}
    assert compiled.router.match("h", "DELETE", "/v1/items/7") is not None  # 405, not 404


def test_more_specific_policy_replaces_and_enabled_false_removes(tmp_path: Path) -> None:
    compiled = compile_text(tmp_path, base())
    by_name = {r.name: r for r in compiled.routes}
    list_items = by_name["items.listItems"]
    create = by_name["items.createItem"]
    health = by_name["items.health"]
    assert [p.name for p in list_items.request_policies] == ["ip-allow"]
    assert [p.name for p in list_items.response_policies] == ["security-headers"]
    assert list_items.request_policies[0] is by_name["items.getItem"].request_policies[0]  # one per site
    assert create.request_policies[0] is not list_items.request_policies[0]
    assert health.response_policies == ()


def test_every_problem_is_reported_with_its_location(tmp_path: Path) -> None:
    config = base()
    api = config["apis"][0]  # type: ignore[index]
    api["operations"]["nope"] = {}
    api["policies"] = {"ip-allow": {"allow": ["300.0.0.1"]}, "no-such-policy": {}}
    api["routes"].append({"name": "health", "path": "/h2", "methods": ["GET"]})
    with pytest.raises(ConfigError) as caught:
        compile_text(tmp_path, config)
    text = str(caught.value)
    assert "apis[0].operations.nope" in text
    assert "apis[0].policies.ip-allow.allow[0]" in text
    assert "unknown policy 'no-such-policy'" in text
    assert "used twice" in text
    assert all(issue.line is not None for issue in caught.value.issues)


def test_structural_errors_carry_file_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  https:\n    enabled: false\n  limits:\n    max_header_bytes: 10\n"
                    "    bogus: 1\nupstreams: {}\napis: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    rendered = [str(i) for i in caught.value.issues]
    assert any(":5: server.limits.max_header_bytes" in r for r in rendered), rendered
    assert any(":6: server.limits.bogus: unknown key" in r for r in rendered), rendered


def test_literal_secrets_are_refused() -> None:
    from pydantic import TypeAdapter, ValidationError

    from bastion.config.model import SecretRef

    adapter = TypeAdapter(SecretRef)
    assert adapter.validate_python("env:PEPPER") == "env:PEPPER"
    assert adapter.validate_python("file:/run/secrets/pepper") == "file:/run/secrets/pepper"
    with pytest.raises(ValidationError):
        adapter.validate_python("hunter2")
