"""RFC 9457 problem+json rendering: the only shape of error the gateway itself sends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from bastion.errors.codes import ErrorCode

PROBLEM_CONTENT_TYPE = b"application/problem+json"
DEFAULT_DOCS_BASE = "https://bastion.dev/docs"


class ProblemError(Exception):
    """Raised below the policy layer for an expected, client-safe failure."""

    def __init__(self, code: ErrorCode, detail: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(code.code)
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def render_problem(code: ErrorCode, *, request_id: str, detail: str | None = None,
                   status: int | None = None, docs_base: str = DEFAULT_DOCS_BASE,
                   extra: Mapping[str, Any] | None = None) -> bytes:
    """Serialise one problem document. ``detail`` must be client-safe text."""
    body: dict[str, Any] = {
        "type": f"{docs_base}/errors#{code.code}",
        "title": code.title,
        "status": status or code.status,
        "detail": detail or code.title + ".",
        "code": code.code,
        "request_id": request_id,
    }
    if extra:
        for key, value in extra.items():
            body.setdefault(key, value)
    return orjson.dumps(body)
