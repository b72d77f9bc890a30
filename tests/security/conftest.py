"""One real gateway per test module, with short deadlines, checked for survival when the module ends."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.processes import Gateway, Upstream, base_config, start_gateway

HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
IDLE_TIMEOUT = 2.0
MAX_BODY = 64 * 1024
HOST = b"gw.test"

# Lines the gateway must never log, whatever it is sent.
_LOG_FAILURES = re.compile(r"Traceback|unhandled error|parser callback failed|returned without a response")


def hardened_config(upstream: Upstream, **limits: Any) -> dict[str, Any]:
    """The base configuration with deadlines short enough to test slow clients in about a second."""
    config = base_config(upstream.url)
    config["server"]["limits"].update({
        "head_timeout": HEAD_TIMEOUT, "body_timeout": BODY_TIMEOUT, "idle_timeout": IDLE_TIMEOUT,
        "max_body_bytes": MAX_BODY, **limits,
    })
    return config


def assert_gateway_healthy(gateway: Gateway, *, allowed_5xx: frozenset[int] = frozenset({501, 505})) -> None:
    """Still running, nothing alarming in its log, no unexpected 5xx in its access log."""
    assert gateway.process.poll() is None, "the gateway died:\n" + gateway.logs()[-4000:]
    records = gateway.access_log()
    failures = [line for line in gateway.logs().splitlines() if _LOG_FAILURES.search(line)]
    if failures:  # name the requests involved, from the access log
        ids = set(re.findall(r"request_id=([0-9a-f]+)", "\n".join(failures)))
        involved = [record for record in records if record["request_id"] in ids]
        raise AssertionError("\n".join(failures[:20]) + "\nrequests: " + repr(involved))
    statuses = [record["status"] for record in records]
    unexpected = sorted({s for s in statuses if s >= 500 and s not in allowed_5xx})
    assert not unexpected, f"5xx answered: {unexpected}"


@pytest.fixture(scope="module")
def hardened_gateway(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A plain-HTTP gateway shared by a whole module; its health is asserted at teardown."""
    gateway = start_gateway(hardened_config(upstream), tmp_path_factory.mktemp("security-gw"))
    try:
        yield gateway
        assert_gateway_healthy(gateway)
    finally:
        gateway.stop()
