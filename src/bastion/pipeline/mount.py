"""Paths of the gateway's listeners served by the gateway's own applications (the OAuth endpoints) rather
than routed upstream.

The choice is made once per request at end of head, on the canonical path: a mount ending in ``/`` matches
everything below it, any other mount matches exactly. The data-plane handler consults it (one attribute
test per request when nothing is mounted) and serves mounted requests with the trusted-proxy client
address, the access log and the metrics of every other request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bastion.server.http1 import Exchange


class MountedApp(Protocol):
    def begin(self, exchange: Exchange) -> None: ...

    async def handle(self, exchange: Exchange) -> None: ...


class Mounts:
    def __init__(self, mounts: Sequence[tuple[str, str, MountedApp]]) -> None:
        """``mounts``: (path or prefix ending in ``/``, route label for logs and metrics, application)."""
        self._exact = {path: (label, app) for path, label, app in mounts if not path.endswith("/")}
        self._prefixes = tuple((path, label, app) for path, label, app in mounts if path.endswith("/"))
        # The first segments of every mount ("/oauth2/", "/.well-known/"): the routed requests, nearly all of
        # them, are told apart by one C-level startswith instead of a hash and a loop.
        self._roots = tuple(sorted({_root(path) for path, _, _ in mounts}))

    def find(self, path: str) -> tuple[str, MountedApp] | None:
        if not path.startswith(self._roots):
            return None
        found = self._exact.get(path)
        if found is not None:
            return found
        for prefix, label, app in self._prefixes:
            if path.startswith(prefix):
                return label, app
        return None


def _root(path: str) -> str:
    """``/oauth2/token`` -> ``/oauth2/``; a one-segment path (``/health``) is its own root."""
    second = path.find("/", 1)
    return path if second < 0 else path[:second + 1]
