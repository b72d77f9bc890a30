"""What the admin app needs from the runtime (it never imports the runtime)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bastion.identity.service import IdentityService
from bastion.observability.metrics import GatewayMetrics


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    generation: int
    issues: list[str]


@dataclass(frozen=True, slots=True)
class AdminServices:
    metrics: GatewayMetrics
    reload: Callable[[], Awaitable[ReloadResult]]
    status: Callable[[], dict[str, Any]]
    docs_base: Callable[[], str]
    identity: IdentityService | None = None  # None: every authenticated endpoint answers 503
