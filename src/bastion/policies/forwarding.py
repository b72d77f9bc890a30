"""What an authentication policy sends upstream instead of the credential: the caller's identity in
configured headers. The credential header and client-sent copies of the identity headers never go
upstream. Cached principals are shared objects, so their header lines are encoded once, not per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from bastion.identity.principal import Principal
from bastion.pipeline.context import RequestContext
from bastion.proxy.headers import header_value

_MAX_CACHED: Final = 10_000

# (header name, value of the principal or None to send nothing)
HeaderSource = tuple[str, Callable[[Principal], str | None]]


class ForwardedIdentity:
    def __init__(self, credential_headers: Iterable[str], identity_headers: Iterable[HeaderSource]) -> None:
        """Header names in any case; an empty name switches that header off."""
        self._headers = tuple((name.lower(), value) for name, value in identity_headers if name)
        names = {*(n.lower() for n in credential_headers if n), *(name for name, _ in self._headers)}
        self._strip = frozenset(n.encode("latin-1") for n in names)
        self._lines: dict[int, tuple[Principal, bytes]] = {}
        self._last: tuple[Principal, bytes] | None = None  # a connection's requests usually share a principal

    def strip(self, ctx: RequestContext) -> None:
        """The credential never goes upstream, even when it was refused."""
        ctx.strip_upstream_names = ctx.strip_upstream_names | self._strip if ctx.strip_upstream_names \
            else self._strip

    def accept(self, ctx: RequestContext, principal: Principal) -> None:
        self.strip(ctx)
        ctx.identity = principal
        entry = self._last
        if entry is None or entry[0] is not principal:
            entry = self._lines.get(id(principal))
            if entry is None or entry[0] is not principal:  # holding the principal keeps its id unique
                if len(self._lines) >= _MAX_CACHED:
                    self._lines.clear()
                entry = (principal, self._render(principal))
                self._lines[id(principal)] = entry
            self._last = entry
        ctx.upstream_lines += entry[1]

    def _render(self, principal: Principal) -> bytes:
        lines = []
        for name, source in self._headers:
            value = source(principal)
            if value:
                lines.append(f"{name}: {header_value(value)}\r\n")
        return "".join(lines).encode("latin-1")
