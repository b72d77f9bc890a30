"""Per-request state shared by the server, the policies and the proxy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bastion.pipeline.compiled import CompiledRoute


class Headers:
    """An ordered multi-map of header fields; names are stored lower-case bytes."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[bytes, bytes]] | None = None) -> None:
        self.items: list[tuple[bytes, bytes]] = items if items is not None else []

    def get(self, name: str) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in self.items:
            if k == key:
                return v.decode("latin-1")
        return None

    def get_all(self, name: str) -> list[str]:
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.items if k == key]

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.items.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def add(self, name: str, value: str) -> None:
        self.items.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def remove(self, name: str) -> None:
        key = name.lower().encode("latin-1")
        if any(k == key for k, _ in self.items):
            self.items = [(k, v) for k, v in self.items if k != key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower().encode("latin-1")
        return any(k == key for k, _ in self.items)


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: Headers


@dataclass(slots=True)
class RequestContext:
    request_id: str
    client_ip: str
    method: str
    path: str  # canonical, decoded
    query: str  # raw query string, without '?'
    host: str  # lower-case, without port
    headers: Headers
    tls: bool
    started: float
    route: CompiledRoute | None = None
    path_params: dict[str, str] = field(default_factory=dict)
    identity: Any = None  # set by authentication policies (later issues)
    upstream_headers: dict[str, str] = field(default_factory=dict)  # added/overridden on the upstream request
    # Prepared once by a policy for its hot path (see policies/forwarding.py): lower-case names not sent
    # upstream, and header lines ("name: value\r\n", already encoded) added to the upstream request.
    strip_upstream_names: frozenset[bytes] = frozenset()
    upstream_lines: bytes = b""
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the response
    reject_code: str | None = None
    log_reason: str | None = None
    scratch: dict[str, Any] = field(default_factory=dict)
    body: bytes | None = None  # the whole request body, read only when a route's policy needs it
    events: list[tuple[str, str, str]] | None = None  # (policy, event, name) for metrics and the access log
    cleanups: list[Callable[[], None]] | None = None  # run once the exchange is over, whatever its outcome

    def record(self, policy: str, event: str, name: str) -> None:
        """Count a policy event (e.g. a shadow refusal) in `bastion_policy_events_total` and the access log.
        ``name`` must come from configuration (a limit or flow name), never from the request."""
        if self.events is None:
            self.events = []
        self.events.append((policy, event, name))

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Release what the request holds (a concurrency slot, ...) when it ends, answered or not."""
        if self.cleanups is None:
            self.cleanups = []
        self.cleanups.append(callback)
