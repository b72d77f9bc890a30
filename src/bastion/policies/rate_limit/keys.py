"""Counter keys: what a limit counts separately, read from the request.

A key function returns None when the limit does not apply to the request: `consumer`/`credential` on an
anonymous request (no identity yet: authentication policies set it), or `header:<Name>` when the header is
absent. Header values are stored hashed (they are often credentials, and must not be readable in Redis or
grow keys without bound). IPv6 clients are counted per /64: one host usually holds a whole /64, and
rotating addresses inside it must not multiply its limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from typing import Final

from bastion.pipeline.context import RequestContext
from bastion.policies.rate_limit.config import READ_METHODS

KeyFunction = Callable[[RequestContext], str | None]
PartFunction = Callable[[RequestContext], str | None]

_IPV6_CACHE_LIMIT: Final = 65536


def client_prefix(ip: str) -> str:
    """The address a client is counted by: IPv4 as is, IPv6 as its /64 (IPv4-mapped IPv6 as IPv4)."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class _ClientPrefixes:
    """client_prefix with a bounded cache: parsing an IPv6 address costs microseconds, a lookup 0.05 us."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, ip: str) -> str:
        prefix = self._cache.get(ip)
        if prefix is None:
            prefix = client_prefix(ip)
            if len(self._cache) >= _IPV6_CACHE_LIMIT:
                self._cache.clear()
            self._cache[ip] = prefix
        return prefix


def _ip_part() -> PartFunction:
    ipv6 = _ClientPrefixes()

    def value(ctx: RequestContext) -> str | None:
        ip = ctx.client_ip
        return ip if ":" not in ip else ipv6(ip)

    return value


def _ip_key(prefix: str) -> KeyFunction:
    """The most common key, [ip], in one call."""
    ipv6 = _ClientPrefixes()

    def key(ctx: RequestContext) -> str | None:
        ip = ctx.client_ip
        return prefix + (ip if ":" not in ip else ipv6(ip))

    return key


def _consumer(ctx: RequestContext) -> str | None:
    identity = ctx.identity
    value = None if identity is None else getattr(identity, "consumer_id", None)
    return None if value is None else str(value)


def _credential(ctx: RequestContext) -> str | None:
    identity = ctx.identity
    value = None if identity is None else getattr(identity, "credential_id", None)
    return None if value is None else str(value)


def _route(ctx: RequestContext) -> str | None:
    route = ctx.route
    return None if route is None else route.name


def _api(ctx: RequestContext) -> str | None:
    route = ctx.route
    return None if route is None else route.api


def _method_class(ctx: RequestContext) -> str | None:
    return "read" if ctx.method in READ_METHODS else "write"


def _header(name: str) -> PartFunction:
    wanted = name.lower().encode("latin-1")

    def value(ctx: RequestContext) -> str | None:
        for field_name, field_value in ctx.headers.items:
            if field_name == wanted:
                return hashlib.blake2b(field_value, digest_size=16).hexdigest()
        return None

    return value


_PARTS: dict[str, PartFunction] = {
    "consumer": _consumer,
    "credential": _credential,
    "route": _route,
    "api": _api,
    "method_class": _method_class,
}


def part_function(part: str) -> PartFunction:
    if part.startswith("header:"):
        return _header(part[7:])
    if part == "ip":
        return _ip_part()
    return _PARTS[part]


def key_function(prefix: str, parts: Sequence[str]) -> KeyFunction:
    """`prefix` + the parts' values. Several parts are length-prefixed, so no two requests that differ in
    any part can share a key whatever characters the values hold."""
    if list(parts) == ["ip"]:
        return _ip_key(prefix)  # the most common key, one call
    functions = [part_function(p) for p in parts]
    if len(functions) == 1:
        only = functions[0]

        def single(ctx: RequestContext) -> str | None:
            value = only(ctx)
            return None if value is None else prefix + value

        return single

    def combined(ctx: RequestContext) -> str | None:
        values = []
        for function in functions:
            value = function(ctx)
            if value is None:
                return None
            values.append(f"{len(value)}:{value}")
        return prefix + "|".join(values)

    return combined
