"""Admin ASGI application (Starlette): convenience matters more than microseconds here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion.errors import codes
from bastion.errors.codes import ErrorCode
from bastion.errors.problem import DEFAULT_DOCS_BASE, PROBLEM_CONTENT_TYPE, render_problem
from bastion.observability.metrics import GatewayMetrics


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    generation: int
    issues: list[str]


@dataclass(frozen=True, slots=True)
class AdminServices:
    """What the admin app needs from the runtime (it never imports the runtime)."""

    metrics: GatewayMetrics
    reload: Callable[[], Awaitable[ReloadResult]]
    status: Callable[[], dict[str, Any]]
    docs_base: Callable[[], str]


def problem(request: Request, code: ErrorCode, detail: str | None = None,
            extra: dict[str, Any] | None = None, docs_base: str = "") -> Response:
    request_id = str(request.scope.get("state", {}).get("request_id", "-"))
    body = render_problem(code, request_id=request_id, detail=detail, extra=extra,
                          docs_base=docs_base or DEFAULT_DOCS_BASE)
    return Response(body, status_code=code.status, media_type=PROBLEM_CONTENT_TYPE.decode(),
                    headers={"cache-control": "no-store"})


def create_admin_app(services: AdminServices) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={"cache-control": "no-store"})

    async def readyz(request: Request) -> Response:
        status = services.status()
        ready = bool(status.get("ready"))
        return JSONResponse(status, status_code=200 if ready else 503, headers={"cache-control": "no-store"})

    async def metrics(request: Request) -> Response:
        services.status()  # refreshes the gauges that are computed on demand (healthy targets, connections)
        return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def reload(request: Request) -> Response:
        result = await services.reload()
        if result.ok:
            return JSONResponse({"status": "reloaded", "generation": result.generation},
                                headers={"cache-control": "no-store"})
        return problem(request, codes.CONFIG_INVALID,
                       f"{len(result.issues)} problem(s) in the new configuration; still serving "
                       f"generation {result.generation}.", extra={"errors": result.issues},
                       docs_base=services.docs_base())

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = {404: codes.ADMIN_NOT_FOUND, 405: codes.ADMIN_METHOD_NOT_ALLOWED}.get(status,
                                                                                   codes.GATEWAY_INTERNAL)
        return problem(request, code, docs_base=services.docs_base())

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/v1/reload", reload, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found, Exception: not_found})
