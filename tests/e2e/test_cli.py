"""The command line: `bastion check` and `bastion run` on bad configurations, graceful shutdown on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from tests.support.processes import BASTION, Gateway, Upstream, base_config

MANY_ERRORS = """\
version: 1
server:
  https:
    enabled: false
  limits:
    max_header_byte: 4096
  trusted_proxies:
    - 10.0.0.0/8
    - 10.0.0.0/33
upstreams:
  shop:
    targets:
      - url: http://127.0.0.1:9001
policies:
  security-headers:
    frame_option: DENY
apis:
  - name: shop-v1
    base_path: /v1
    upstream: shop
    routes:
      - name: users
        path: /users
        methods: [GET]
        policies:
          rate-limitz: {}
  - name: legacy
    base_path: /legacy
    upstream: nowhere
    routes:
      - name: all
        path: /**
        methods: [GET]
  - name: docs
    base_path: /docs
    upstream: shop
    openapi: missing-openapi.yaml
  - name: broken
    base_path: /broken
    upstream: shop
    openapi: broken-openapi.yaml
"""
BROKEN_OPENAPI = "openapi: 3.1.0\ninfo: {title: broken, version: '1'}\npaths:\n  /a: get: {operationId: a}\n"


def line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if needle in line)


def bastion(*args: str, cwd: Path, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BASTION, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def expected_problems(config: Path) -> list[str]:
    """Each problem of MANY_ERRORS as `file:line: dotted.path: message` (a regular expression)."""
    name = re.escape(str(config))
    broken = re.escape(str(config.parent / "broken-openapi.yaml"))

    def at(needle: str, path: str, message: str) -> str:
        return f"{name}:{line_of(MANY_ERRORS, needle)}: {re.escape(path)}: {message}"

    return [
        at("max_header_byte", "server.limits.max_header_byte", "unknown key"),
        at("10.0.0.0/33", "server.trusted_proxies[1]", r"not an IP address or CIDR: '10\.0\.0\.0/33'"),
        at("frame_option", "policies.security-headers.frame_option", "unknown key"),
        at("rate-limitz", "apis[0].routes[0].policies.rate-limitz", "unknown policy 'rate-limitz'"),
        at("upstream: nowhere", "apis[1].upstream", "unknown upstream 'nowhere'"),
        at("missing-openapi.yaml", "apis[2].openapi", "OpenAPI document not found"),
        f"{broken}:4: \\(document\\): YAML syntax error",
    ]


def write_many_errors(tmp_path: Path) -> Path:
    config = tmp_path / "bastion.yaml"
    config.write_text(MANY_ERRORS)
    (tmp_path / "broken-openapi.yaml").write_text(BROKEN_OPENAPI)
    return config


def assert_reports_every_problem(stderr: str, config: Path) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    for pattern in expected_problems(config):
        assert any(re.match("error: " + pattern, line) for line in lines), f"{pattern}\nnot in:\n{stderr}"
    assert len(lines) == 7, stderr


def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text(yaml.safe_dump(base_config("http://127.0.0.1:9")))
    result = bastion("check", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"OK \(\d+ routes, 1 upstreams\)", result.stdout)
    assert result.stderr == ""


def test_check_reports_every_problem_with_its_location(tmp_path: Path) -> None:
    config = write_many_errors(tmp_path)
    result = bastion("check", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert_reports_every_problem(result.stderr, config)
    assert "7 problem(s) found" in result.stderr


def test_check_reports_cross_reference_problems_of_a_valid_structure(tmp_path: Path) -> None:
    config = base_config("http://127.0.0.1:9")
    config["apis"][1]["upstream"] = "nowhere"
    config["apis"][1]["name"] = "shop-v1"
    path = tmp_path / "bastion.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    path.write_text(text)
    result = bastion("check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    upstream_line = line_of(text, "upstream: nowhere")
    assert f"{path}:{upstream_line}: apis[1].upstream: unknown upstream 'nowhere' (known: shop)" in result.stderr
    assert re.search(rf"{re.escape(str(path))}:\d+: apis\[1\]\.name: api name 'shop-v1' is used twice",
                     result.stderr), result.stderr


def test_check_reports_a_yaml_syntax_error_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text("version: 1\nserver:\n  https: {enabled: false}\napis:\n  - name: [unclosed\n")
    result = bastion("check", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert re.search(rf"^error: {re.escape(str(config))}:\d+: \(document\): YAML syntax error", result.stderr,
                     re.MULTILINE), result.stderr


def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    config = write_many_errors(tmp_path)
    result = bastion("run", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert_reports_every_problem(result.stderr, config)
    assert "bastion started" not in result.stderr


def test_sigterm_drains_in_flight_requests_then_exits_0(make_gateway: Callable[..., Gateway],
                                                        upstream: Upstream) -> None:
    gateway = make_gateway(base_config(upstream.url))
    outcome: dict[str, httpx.Response | Exception] = {}

    def slow_request() -> None:
        try:
            with gateway.client() as client:
                outcome["response"] = client.get("/v1/slow", params={"ms": 1000})
        except httpx.HTTPError as exc:
            outcome["response"] = exc

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    thread.join(10)
    returncode = gateway.process.wait(10)
    elapsed = time.monotonic() - started
    response = outcome["response"]
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200 and response.json() == {"slept_ms": 1000}
    assert response.headers["connection"] == "close"  # no keep-alive while draining
    assert returncode == 0, gateway.logs()
    assert 0.5 < elapsed < 5, elapsed  # it waited for the request, not for the whole drain timeout
    logs = gateway.logs()
    assert "bastion stopping: draining connections" in logs and "bastion stopped" in logs

