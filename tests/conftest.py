from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Gateway, Upstream, base_config, start_gateway, start_upstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    """One real demo API process for the whole session (its data is only read by tests)."""
    server = start_upstream()
    yield server
    server.stop()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []
    counter = [0]

    def factory(config: dict[str, Any], *, expect_start: bool = True, **kwargs: Any) -> Gateway:
        counter[0] += 1
        gateway = start_gateway(config, tmp_path / f"gw{counter[0]}", expect_start=expect_start, **kwargs)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Gateway:
    """A plain-HTTP gateway (TLS off) in front of the demo API with the base configuration."""
    return make_gateway(base_config(upstream.url))


@pytest.fixture
def tls_gateway(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Gateway:
    return make_gateway(base_config(upstream.url, tls=True))
