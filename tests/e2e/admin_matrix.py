"""The admin API's authorization matrix: one row per endpoint of ``bastion.admin.api.ROUTES``, with the
status each kind of caller must get. ``test_admin_api.py`` walks it against a real gateway, and fails when
an endpoint has no row (or a row no endpoint).

Callers:
  none      no credential
  expired   an admin-level key of an `admin` consumer, past its expiry
  read      a read-level key of the same `admin` consumer (keys below admin level never reach the API)
  operator  an admin-level key of a consumer with admin role `operator`
  auditor   ... admin role `auditor`
  admin     ... admin role `admin`

Path parameters are filled with resources created fresh for every cell: ``{consumer}`` a consumer without
an admin role, ``{name}`` a role nobody holds, ``{key_id}`` a read key of that consumer, ``{client_id}`` a
confidential OAuth client of that consumer. In bodies, ``{u}`` is a unique token and ``{consumer}`` that
consumer's id.

The OAuth rows (``OAUTH_ROWS``) need the built-in authorization server; ``test_oauth_admin.py`` walks them
against a gateway that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

CALLERS: Final = ("none", "expired", "read", "operator", "auditor", "admin")


@dataclass(frozen=True, slots=True)
class Row:
    method: str
    path: str
    none: int
    expired: int
    read: int
    operator: int
    auditor: int
    admin: int
    body: dict[str, Any] | None = None

    def expected(self, caller: str) -> int:
        value: int = getattr(self, caller)
        return value


V1 = "/admin/v1"

MATRIX: Final[tuple[Row, ...]] = (
    #    method    path                                 none expired read  operator auditor admin
    Row("GET",    "/healthz",                            200, 200,   200,  200,     200,    200),
    Row("GET",    "/readyz",                             200, 200,   200,  200,     200,    200),
    Row("GET",    "/metrics",                            200, 200,   200,  200,     200,    200),
    Row("GET",    f"{V1}/openapi.json",                  200, 200,   200,  200,     200,    200),
    Row("POST",   f"{V1}/reload",                        401, 401,   401,  200,     403,    200),
    Row("GET",    f"{V1}/consumers",                     401, 401,   401,  200,     200,    200),
    Row("POST",   f"{V1}/consumers",                     401, 401,   401,  201,     403,    201,
        body={"name": "matrix-{u}"}),
    Row("GET",    f"{V1}/consumers/{{consumer}}",        401, 401,   401,  200,     200,    200),
    Row("PATCH",  f"{V1}/consumers/{{consumer}}",        401, 401,   401,  200,     403,    200,
        body={"plan": "gold"}),
    Row("DELETE", f"{V1}/consumers/{{consumer}}",        401, 401,   401,  204,     403,    204),
    Row("GET",    f"{V1}/roles",                         401, 401,   401,  200,     200,    200),
    Row("GET",    f"{V1}/roles/{{name}}",                401, 401,   401,  200,     200,    200),
    Row("PUT",    f"{V1}/roles/{{name}}",                401, 401,   401,  403,     403,    200,
        body={"permissions": ["orders:read"]}),
    Row("DELETE", f"{V1}/roles/{{name}}",                401, 401,   401,  403,     403,    204),
    Row("GET",    f"{V1}/keys",                          401, 401,   401,  200,     200,    200),
    Row("POST",   f"{V1}/keys",                          401, 401,   401,  201,     403,    201,
        body={"consumer": "{consumer}", "level": "read"}),
    Row("GET",    f"{V1}/keys/{{key_id}}",               401, 401,   401,  200,     200,    200),
    Row("POST",   f"{V1}/keys/{{key_id}}/rotate",        401, 401,   401,  201,     403,    201),
    Row("POST",   f"{V1}/keys/{{key_id}}/revoke",        401, 401,   401,  200,     403,    200),
    Row("GET",    f"{V1}/oauth/clients",                 401, 401,   401,  200,     200,    200),
    Row("POST",   f"{V1}/oauth/clients",                 401, 401,   401,  201,     403,    201,
        body={"consumer": "{consumer}", "name": "matrix-{u}", "kind": "confidential",
              "grant_types": ["client_credentials"]}),
    Row("GET",    f"{V1}/oauth/clients/{{client_id}}",   401, 401,   401,  200,     200,    200),
    Row("PATCH",  f"{V1}/oauth/clients/{{client_id}}",   401, 401,   401,  200,     403,    200,
        body={"name": "renamed-{u}"}),
    Row("POST",   f"{V1}/oauth/clients/{{client_id}}/rotate-secret",
                                                         401, 401,   401,  200,     403,    200),
    Row("DELETE", f"{V1}/oauth/clients/{{client_id}}",   401, 401,   401,  204,     403,    204),
    Row("GET",    f"{V1}/oauth/signing-keys",            401, 401,   401,  200,     200,    200),
    Row("POST",   f"{V1}/oauth/signing-keys/rotate",     401, 401,   401,  200,     403,    200),
    Row("GET",    f"{V1}/audit",                         401, 401,   401,  403,     200,    200),
    Row("GET",    f"{V1}/audit/verify",                  401, 401,   401,  403,     200,    200),
)

OAUTH_ROWS: Final[tuple[Row, ...]] = tuple(row for row in MATRIX if row.path.startswith(f"{V1}/oauth/"))
