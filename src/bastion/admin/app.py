"""Admin ASGI application (Starlette): convenience matters more than microseconds here.

The endpoints themselves, and who may call them, are declared once in ``bastion.admin.api.ROUTES``.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from bastion.admin.api import starlette_routes
from bastion.admin.problems import problem
from bastion.admin.services import AdminServices, ReloadResult
from bastion.errors import codes

__all__ = ["AdminServices", "ReloadResult", "create_admin_app", "problem"]


def create_admin_app(services: AdminServices) -> Starlette:
    async def refused(request: Request, exc: Exception) -> Response:
        # Unexpected exceptions are re-raised by Starlette after this answer; the listener logs them.
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = {404: codes.ADMIN_NOT_FOUND, 405: codes.ADMIN_METHOD_NOT_ALLOWED}.get(status,
                                                                                   codes.GATEWAY_INTERNAL)
        extra = exc.headers or {} if isinstance(exc, HTTPException) else {}
        allow = {name.lower(): value for name, value in extra.items()}.get("allow")
        if allow:
            allow = ", ".join(sorted(method.strip() for method in allow.split(",")))  # Starlette's is unordered
        return problem(request, code, docs_base=services.docs_base(), headers={"allow": allow} if allow else None)

    return Starlette(routes=starlette_routes(services),
                     exception_handlers={HTTPException: refused, Exception: refused})
