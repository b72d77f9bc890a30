"""Scope arithmetic: what a client may be granted.

Granted = requested ∩ the client's registered scopes ∩ its consumer's permissions (the union of the
consumer's roles' permissions). ``*`` and ``area:*`` are wildcards on both sides, read as
``bastion.identity.principal.Principal.missing`` reads them, so a token never carries more than the
consumer's roles allow. A requested scope outside the client's registration is ``invalid_scope``; a
requested scope the consumer lacks is silently left out (the token response names what was granted).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence

from bastion.oauth.server.errors import INVALID_SCOPE, OAuthError

MAX_SCOPES = 64
# RFC 6749 section 3.3 allows any printable ASCII but `"` and `\\` in a scope token; scopes here have the
# syntax of permissions (what the store accepts), so anything else can never be granted.
_SCOPE_TOKEN = re.compile(r"[A-Za-z0-9_.:*/-]{1,200}")


def parse_scope(value: str | None) -> tuple[str, ...]:
    """The ``scope`` parameter as distinct tokens, in order; absent -> ``()``."""
    if value is None:
        return ()
    tokens = value.split(" ")
    if len(tokens) > MAX_SCOPES or not all(_SCOPE_TOKEN.fullmatch(token) for token in tokens):
        raise OAuthError(INVALID_SCOPE, "The scope parameter is malformed or names an unknown scope.")
    return tuple(dict.fromkeys(tokens))


def format_scope(scopes: Iterable[str]) -> str:
    return " ".join(scopes)


def covers(grants: Collection[str], scope: str) -> bool:
    """``scope`` is within ``grants``: present, or under ``*`` / an ``area:*`` wildcard."""
    if scope in grants or "*" in grants:
        return True
    return any(g.endswith(":*") and scope.startswith(g[:-1]) for g in grants)


def intersect(left: Collection[str], right: Collection[str]) -> tuple[str, ...]:
    """Every scope within both sides, without entries that another kept entry already covers."""
    kept = {s for s in left if covers(right, s)} | {s for s in right if covers(left, s)}
    return tuple(sorted(s for s in kept if not any(o != s and covers((o,), s) for o in kept)))


def within(scopes: Iterable[str], allowed: Collection[str]) -> tuple[str, ...]:
    """The scopes not within ``allowed`` (empty: all are)."""
    return tuple(s for s in scopes if not covers(allowed, s))


def grant_scopes(requested: Sequence[str], client_scopes: Collection[str],
                 permissions: Collection[str]) -> tuple[str, ...]:
    """What to grant. No scope requested: everything the client is registered for, within the permissions."""
    outside = within(requested, client_scopes)
    if outside:
        raise OAuthError(INVALID_SCOPE, f"Scope not allowed for this client: {outside[0]}.")
    granted = intersect(requested or tuple(client_scopes), permissions)
    if not granted:
        raise OAuthError(INVALID_SCOPE, "None of the requested scopes can be granted to this client.")
    return granted
