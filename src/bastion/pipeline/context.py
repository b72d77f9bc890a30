"""Per-request state shared by the server, the policies and the proxy."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from bastion.pipeline.compiled import CompiledRoute

# Field names policies use (`RateLimit`, `Cache-Control`, ...) -> their wire form. A few constant names in
# practice; bounded all the same.
_WIRE_NAMES: Final[dict[str, bytes]] = {}
_MAX_WIRE_NAMES: Final = 1024


def field_name(name: str) -> bytes:
    """The lowercase latin-1 form of a field name."""
    encoded = _WIRE_NAMES.get(name)
    if encoded is None:
        encoded = name.lower().encode("latin-1")
        if len(_WIRE_NAMES) >= _MAX_WIRE_NAMES:
            _WIRE_NAMES.clear()
        _WIRE_NAMES[name] = encoded
    return encoded


class Headers:
    """An ordered multi-map of header fields; names are stored lower-case bytes."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[bytes, bytes]] | None = None) -> None:
        self.items: list[tuple[bytes, bytes]] = items if items is not None else []

    def get(self, name: str) -> str | None:
        key = field_name(name)
        for k, v in self.items:
            if k == key:
                return v.decode("latin-1")
        return None

    def get_all(self, name: str) -> list[str]:
        key = field_name(name)
        return [v.decode("latin-1") for k, v in self.items if k == key]

    def set(self, name: str, value: str) -> None:
        key = field_name(name)
        self.replace([(key, value.encode("latin-1"))], (key,))

    def add(self, name: str, value: str) -> None:
        self.items.append((field_name(name), value.encode("latin-1")))

    def set_all(self, fields: dict[str, str]) -> None:
        """``set`` for each field, with one pass over the present ones."""
        names: list[bytes] = []
        added: list[tuple[bytes, bytes]] = []
        for name, value in fields.items():
            key = field_name(name)
            if key in names:  # two spellings of one name: the last wins, as with successive set() calls
                index = names.index(key)
                del names[index]
                del added[index]
            names.append(key)
            added.append((key, value.encode("latin-1")))
        self.replace(added, names)

    def replace(self, fields: list[tuple[bytes, bytes]], names: Collection[bytes]) -> None:
        """Drop every present field named in ``names``, then append ``fields`` (wire-form names): one pass
        over the present fields, and no new list when none of them is dropped."""
        items = self.items
        for present, _ in items:
            if present in names:
                items = self.items = [(k, v) for k, v in items if k not in names]
                break
        items.extend(fields)

    def remove(self, name: str) -> None:
        self.replace([], (field_name(name),))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = field_name(name)
        return any(k == key for k, _ in self.items)


class ResponseHead:
    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers


class RequestContext:
    """One request as the policies see it. A plain class, not a dataclass: it is built for every request,
    and the compiled (mypyc) build runs a dataclass's generated ``__init__`` as interpreted code."""

    __slots__ = (
        "body", "cleanups", "client_ip", "events", "headers", "host", "identity", "log_reason", "method", "path",
        "path_params", "query", "reject_code", "request_id", "response_headers", "route", "scratch", "started",
        "strip_upstream_names", "tls", "upstream_headers", "upstream_lines",
    )

    def __init__(self, request_id: str, client_ip: str, method: str, path: str, query: str, host: str,
                 headers: Headers, tls: bool, started: float, route: CompiledRoute | None = None,
                 path_params: dict[str, str] | None = None, identity: Any = None) -> None:
        self.request_id = request_id
        self.client_ip = client_ip
        self.method = method
        self.path = path  # canonical, decoded
        self.query = query  # raw query string, without '?'
        self.host = host  # lower-case, without port
        self.headers = headers
        self.tls = tls
        self.started = started
        self.route = route
        self.path_params: dict[str, str] = path_params if path_params is not None else {}
        self.identity: Any = identity  # set by authentication policies
        self.upstream_headers: dict[str, str] = {}  # added/overridden on the upstream request
        # Prepared once by a policy for its hot path (see policies/forwarding.py): lower-case names not sent
        # upstream, and header lines ("name: value\r\n", already encoded) added to the upstream request.
        self.strip_upstream_names: frozenset[bytes] = frozenset()
        self.upstream_lines = b""
        self.response_headers: dict[str, str] = {}  # added to the response
        self.reject_code: str | None = None
        self.log_reason: str | None = None
        self.scratch: dict[str, Any] = {}
        self.body: bytes | None = None  # the whole request body, read only when a route's policy needs it
        self.events: list[tuple[str, str, str]] | None = None  # (policy, event, name): metrics, access log
        self.cleanups: list[Callable[[], None]] | None = None  # run once the exchange is over, whatever happens

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
