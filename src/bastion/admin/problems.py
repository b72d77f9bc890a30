"""problem+json answers of the admin listener."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from bastion.errors.codes import ErrorCode
from bastion.errors.problem import DEFAULT_DOCS_BASE, PROBLEM_CONTENT_TYPE, render_problem


class AdminProblem(Exception):
    """An expected refusal inside an admin handler; ``detail`` must be safe to show the client."""

    def __init__(self, code: ErrorCode, detail: str | None = None, *, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(code.code)
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def problem(request: Request, code: ErrorCode, detail: str | None = None,
            extra: Mapping[str, Any] | None = None, docs_base: str = "",
            headers: Mapping[str, str] | None = None) -> Response:
    request_id = str(request.scope.get("state", {}).get("request_id", "-"))
    body = render_problem(code, request_id=request_id, detail=detail, extra=extra,
                          docs_base=docs_base or DEFAULT_DOCS_BASE)
    return Response(body, status_code=code.status, media_type=PROBLEM_CONTENT_TYPE.decode(),
                    headers={**(headers or {}), "cache-control": "no-store"})
