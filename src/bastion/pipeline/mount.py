"""Serve a few paths of the gateway's listeners with the gateway's own applications (the OAuth endpoints),
and every other request with the data plane.

The split is decided once per request at end of head, on the canonical path: a mounted prefix ends with
``/`` and matches everything below it, any other mount matches exactly. Mounted requests still get the
trusted-proxy client address, the access log and the metrics of the data plane.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from bastion.pipeline.handler import GatewayHandler

if TYPE_CHECKING:
    from bastion.server.http1 import Exchange


class MountedApp(Protocol):
    def begin(self, exchange: Exchange) -> None: ...

    async def handle(self, exchange: Exchange) -> None: ...


class MountingHandler:
    def __init__(self, gateway: GatewayHandler, mounts: Sequence[tuple[str, str, MountedApp]]) -> None:
        """``mounts``: (path or prefix ending in ``/``, route label for logs and metrics, application)."""
        self._gateway = gateway
        self._exact = {path: (label, app) for path, label, app in mounts if not path.endswith("/")}
        self._prefixes = tuple((path, label, app) for path, label, app in mounts if path.endswith("/"))

    def _mounted(self, path: str) -> tuple[str, MountedApp] | None:
        found = self._exact.get(path)
        if found is not None:
            return found
        for prefix, label, app in self._prefixes:
            if path.startswith(prefix):
                return label, app
        return None

    def begin(self, ex: Exchange) -> None:
        found = self._mounted(ex.path) if ex.path_error is None else None
        if found is None:
            self._gateway.begin(ex)
            return
        label, app = found
        ex.scratch["mounted"] = app
        ex.scratch["route"] = label
        ex.scratch["config"] = self._gateway.current_config()
        self._gateway.resolve_client(ex)
        app.begin(ex)

    def try_fast(self, ex: Exchange) -> bool:
        if "mounted" in ex.scratch:
            return False  # the application runs in a task
        return self._gateway.try_fast(ex)

    async def handle(self, ex: Exchange) -> None:
        app = ex.scratch.get("mounted")
        if app is None:
            await self._gateway.handle(ex)
            return
        await app.handle(ex)  # type: ignore[attr-defined]

    def finished(self, ex: Exchange) -> None:
        self._gateway.finished(ex)
