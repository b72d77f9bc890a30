"""A small in-memory "shop" API used as the upstream behind the gateway.

Two versions of the public API:

* ``/v1``: users and orders as plain JSON objects and arrays;
* ``/v2``: richer objects (``display_name``, ``created_at``, order ``status``) and cursor pagination
  (``{"items": [...], "next": <cursor or null>}`` with ``limit`` and ``cursor`` query parameters).

And test hooks that make it a useful upstream for gateway tests (never part of the OpenAPI documents):
``/healthz``, ``/debug/echo`` and ``/v1/echo`` (report what was received), ``/v1/boom`` (a 500 leaking
internals), ``/v1/slow`` (delayed answer), ``/v1/big`` (large chunked body) and ``/v1/status/{code}``.

Every :func:`create_app` call gets its own store, seeded with 3 users and 4 orders.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_SLOW_MS = 30_000
MAX_BIG_KB = 10_240
BIG_CHUNK_BYTES = 16 * 1024
BIG_PATTERN = bytes(range(256)) * (BIG_CHUNK_BYTES // 256)
"""One 16 KiB chunk of ``/v1/big``: the body is this pattern repeated, truncated to ``kb`` KiB."""

ECHO_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

BOOM_BODY = """\
Internal Server Error

Traceback (most recent call last):
  File "/srv/shop/app/handlers/orders.py", line 88, in get_order
    row = await db.fetch_one(query, order_id)
  File "/srv/shop/app/db/pool.py", line 141, in fetch_one
    return await conn.fetchrow(sql, *args)
asyncpg.exceptions.UndefinedColumnError: column "card_number" does not exist
SQL: SELECT o.id, o.user_id, u.email, u.password_hash, o.card_number FROM orders o \
JOIN users u ON u.id = o.user_id WHERE o.id = $1
Host: shop-db-primary.internal:5432 (user=shop_app)
"""
"""The body of ``GET /v1/boom``: a stack trace, an SQL statement and internal host names."""

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MAX_NAME = 100
_MAX_ITEM = 200
_MAX_QUANTITY = 1000


@dataclass(slots=True)
class User:
    id: int
    name: str
    email: str
    display_name: str
    created_at: str

    def v1(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "email": self.email}

    def v2(self) -> dict[str, Any]:
        return {**self.v1(), "display_name": self.display_name, "created_at": self.created_at}


@dataclass(slots=True)
class Order:
    id: int
    user_id: int
    item: str
    quantity: int
    status: str
    created_at: str

    def v1(self) -> dict[str, Any]:
        return {"id": self.id, "user_id": self.user_id, "item": self.item, "quantity": self.quantity}

    def v2(self) -> dict[str, Any]:
        return {**self.v1(), "status": self.status, "created_at": self.created_at}


@dataclass(slots=True)
class ShopStore:
    """The in-memory data of one app instance. Ids are assigned in increasing order."""

    users: dict[int, User] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)

    @classmethod
    def seeded(cls) -> ShopStore:
        store = cls()
        for name, email, created in (
            ("Ada Lovelace", "ada@example.com", "2024-01-15T09:30:00Z"),
            ("Grace Hopper", "grace@example.com", "2024-02-03T14:05:00Z"),
            ("Alan Turing", "alan@example.com", "2024-03-21T08:45:00Z"),
        ):
            store.add_user(name, email, created_at=created)
        for user_id, item, quantity, created in (
            (1, "notebook", 2, "2024-04-01T10:00:00Z"),
            (1, "fountain pen", 1, "2024-04-02T11:15:00Z"),
            (2, "compiler manual", 1, "2024-04-05T16:20:00Z"),
            (3, "paper tape", 12, "2024-04-09T12:00:00Z"),
        ):
            store.add_order(user_id, item, quantity, created_at=created)
        return store

    def add_user(self, name: str, email: str, *, created_at: str | None = None) -> User:
        user = User(
            id=max(self.users, default=0) + 1,
            name=name,
            email=email,
            display_name=_display_name(name),
            created_at=created_at or _now(),
        )
        self.users[user.id] = user
        return user

    def add_order(self, user_id: int, item: str, quantity: int, *, created_at: str | None = None) -> Order:
        order = Order(
            id=max(self.orders, default=0) + 1,
            user_id=user_id,
            item=item,
            quantity=quantity,
            status="placed",
            created_at=created_at or _now(),
        )
        self.orders[order.id] = order
        return order


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _display_name(name: str) -> str:
    """``Ada Lovelace`` -> ``Ada L.``; a single word is kept as is."""
    parts = name.split()
    if len(parts) < 2:
        return name.strip()
    return f"{parts[0]} {parts[-1][0]}."


# -- helpers -------------------------------------------------------------------------------------------


class ValidationFailed(Exception):
    """A request the demo API refuses with 422."""

    def __init__(self, error: str, details: list[str]) -> None:
        super().__init__(error)
        self.error = error
        self.details = details


def _error(status: int, error: str, details: list[str] | None = None,
           headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _store(request: Request) -> ShopStore:
    store = request.app.state.store
    assert isinstance(store, ShopStore)
    return store


async def _json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("invalid_json", ["the request body is not valid JSON"]) from exc
    if not isinstance(data, dict):
        raise ValidationFailed("validation_failed", ["the request body must be a JSON object"])
    return data


def _check_fields(data: Mapping[str, Any], allowed: tuple[str, ...]) -> list[str]:
    problems = [f"{name}: field required" for name in allowed if name not in data]
    problems += [f"{name}: unknown field" for name in sorted(data) if name not in allowed]
    return problems


def _check_string(data: Mapping[str, Any], name: str, max_length: int) -> list[str]:
    value = data.get(name)
    if name not in data:
        return []
    if not isinstance(value, str) or not value.strip():
        return [f"{name}: must be a non-empty string"]
    if len(value) > max_length:
        return [f"{name}: at most {max_length} characters"]
    return []


def _check_int(data: Mapping[str, Any], name: str, low: int, high: int | None = None) -> list[str]:
    value = data.get(name)
    if name not in data:
        return []
    if not isinstance(value, int) or isinstance(value, bool):
        return [f"{name}: must be an integer"]
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        return [f"{name}: must be {bound}"]
    return []


def _int_param(request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    problems = [f"{name}: must be an integer"] if not re.fullmatch(r"-?[0-9]{1,9}", raw) else []
    if not problems:
        problems = _check_int({name: int(raw)}, name, low, high)
    if problems:
        raise ValidationFailed("validation_failed", problems)
    return int(raw)


def _path_id(request: Request, name: str) -> int | None:
    raw = request.path_params[name]
    if not isinstance(raw, str) or not re.fullmatch(r"[0-9]{1,9}", raw):
        return None
    return int(raw)


def _paginate(request: Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Cursor pagination over items sorted by id: the cursor is the id of the last item returned."""
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    cursor = request.query_params.get("cursor")
    after = 0
    if cursor is not None:
        if not re.fullmatch(r"[0-9]{1,9}", cursor):
            raise ValidationFailed("validation_failed", ["cursor: invalid cursor"])
        after = int(cursor)
    remaining = [item for item in items if item["id"] > after]
    page = remaining[:limit]
    more = len(remaining) > limit
    return {"items": page, "next": str(page[-1]["id"]) if more and page else None}


# -- users ---------------------------------------------------------------------------------------------


async def list_users_v1(request: Request) -> Response:
    return JSONResponse([user.v1() for user in _store(request).users.values()])


async def list_users_v2(request: Request) -> Response:
    return JSONResponse(_paginate(request, [user.v2() for user in _store(request).users.values()]))


def _get_user(request: Request, render: Callable[[User], dict[str, Any]]) -> Response:
    user_id = _path_id(request, "user_id")
    user = _store(request).users.get(user_id) if user_id is not None else None
    if user is None:
        return _error(404, "not_found", ["user not found"])
    return JSONResponse(render(user))


async def get_user_v1(request: Request) -> Response:
    return _get_user(request, User.v1)


async def get_user_v2(request: Request) -> Response:
    return _get_user(request, User.v2)


async def create_user_v1(request: Request) -> Response:
    data = await _json_object(request)
    problems = _check_fields(data, ("name", "email"))
    problems += _check_string(data, "name", _MAX_NAME)
    problems += _check_string(data, "email", 254)
    if not problems and not _EMAIL.match(data["email"]):
        problems.append("email: not an email address")
    if problems:
        raise ValidationFailed("validation_failed", problems)
    user = _store(request).add_user(data["name"].strip(), data["email"])
    return JSONResponse(user.v1(), status_code=201, headers={"Location": f"/v1/users/{user.id}"})


# -- orders --------------------------------------------------------------------------------------------


async def list_orders_v1(request: Request) -> Response:
    return JSONResponse([order.v1() for order in _store(request).orders.values()])


async def list_orders_v2(request: Request) -> Response:
    return JSONResponse(_paginate(request, [order.v2() for order in _store(request).orders.values()]))


def _get_order(request: Request, render: Callable[[Order], dict[str, Any]]) -> Response:
    order_id = _path_id(request, "order_id")
    order = _store(request).orders.get(order_id) if order_id is not None else None
    if order is None:
        return _error(404, "not_found", ["order not found"])
    return JSONResponse(render(order))


async def get_order_v1(request: Request) -> Response:
    return _get_order(request, Order.v1)


async def get_order_v2(request: Request) -> Response:
    return _get_order(request, Order.v2)


async def _create_order(request: Request) -> Order:
    data = await _json_object(request)
    problems = _check_fields(data, ("user_id", "item", "quantity"))
    problems += _check_int(data, "user_id", 1)
    problems += _check_string(data, "item", _MAX_ITEM)
    problems += _check_int(data, "quantity", 1, _MAX_QUANTITY)
    store = _store(request)
    if not problems and data["user_id"] not in store.users:
        problems.append("user_id: unknown user")
    if problems:
        raise ValidationFailed("validation_failed", problems)
    return store.add_order(data["user_id"], data["item"].strip(), data["quantity"])


async def create_order_v1(request: Request) -> Response:
    order = await _create_order(request)
    return JSONResponse(order.v1(), status_code=201, headers={"Location": f"/v1/orders/{order.id}"})


async def create_order_v2(request: Request) -> Response:
    order = await _create_order(request)
    return JSONResponse(order.v2(), status_code=201, headers={"Location": f"/v2/orders/{order.id}"})


# -- test hooks ----------------------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def echo(request: Request) -> Response:
    """Report exactly what arrived, so tests can check what the gateway forwarded."""
    body = await request.body()
    raw_path = request.scope.get("raw_path")
    return JSONResponse({
        "method": request.method,
        "path": request.url.path,
        "raw_path": raw_path.decode("latin-1") if isinstance(raw_path, bytes) else None,
        "query": request.scope.get("query_string", b"").decode("latin-1"),
        "http_version": request.scope.get("http_version"),
        "headers": [[name.decode("latin-1").lower(), value.decode("latin-1")]
                    for name, value in request.headers.raw],
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    })


async def boom(request: Request) -> Response:
    return PlainTextResponse(BOOM_BODY, status_code=500, headers={"X-Powered-By": "shop-backend/2.3.1"})


async def slow(request: Request) -> Response:
    ms = min(_int_param(request, "ms", 0, 0), MAX_SLOW_MS)
    await asyncio.sleep(ms / 1000)
    return JSONResponse({"slept_ms": ms})


async def big(request: Request) -> Response:
    size = min(_int_param(request, "kb", 1, 0), MAX_BIG_KB) * 1024

    async def chunks() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            chunk = BIG_PATTERN[: min(BIG_CHUNK_BYTES, size - sent)]
            sent += len(chunk)
            yield chunk

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"X-Expected-Length": str(size)})


async def status(request: Request) -> Response:
    raw = request.path_params["code"]
    if not isinstance(raw, str) or not re.fullmatch(r"[0-9]{3}", raw) or not 200 <= int(raw) <= 599:
        return _error(422, "validation_failed", ["code: must be an HTTP status between 200 and 599"])
    code = int(raw)
    if code in (204, 304):
        return Response(status_code=code)
    return JSONResponse({"status": code}, status_code=code)


# -- application ---------------------------------------------------------------------------------------


Endpoint = Callable[[Request], Awaitable[Response]]


def _by_method(handlers: Mapping[str, Endpoint]) -> Endpoint:
    """One endpoint for a path served by several handlers, so that a 405 lists every allowed method."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return dispatch


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(404, "not_found", headers=exc.headers)
    if exc.status_code == 405:
        return _error(405, "method_not_allowed", headers=exc.headers)
    return _error(exc.status_code, "http_error", [exc.detail], headers=exc.headers)


async def _validation_failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationFailed)
    return _error(422, exc.error, exc.details)


def create_app() -> Starlette:
    """Build a fresh demo API with its own seeded in-memory store."""
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/debug/echo", echo, methods=["GET", "POST"]),
        # v1
        Route("/v1/users", _by_method({"GET": list_users_v1, "POST": create_user_v1}),
              methods=["GET", "POST"]),
        Route("/v1/users/{user_id}", get_user_v1, methods=["GET"]),
        Route("/v1/orders", _by_method({"GET": list_orders_v1, "POST": create_order_v1}),
              methods=["GET", "POST"]),
        Route("/v1/orders/{order_id}", get_order_v1, methods=["GET"]),
        Route("/v1/echo", echo, methods=ECHO_METHODS),
        Route("/v1/boom", boom, methods=["GET"]),
        Route("/v1/slow", slow, methods=["GET"]),
        Route("/v1/big", big, methods=["GET"]),
        Route("/v1/status/{code}", status, methods=["GET"]),
        # v2
        Route("/v2/users", list_users_v2, methods=["GET"]),
        Route("/v2/users/{user_id}", get_user_v2, methods=["GET"]),
        Route("/v2/orders", _by_method({"GET": list_orders_v2, "POST": create_order_v2}),
              methods=["GET", "POST"]),
        Route("/v2/orders/{order_id}", get_order_v2, methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={
        HTTPException: _http_exception,
        ValidationFailed: _validation_failed,
    })
    app.state.store = ShopStore.seeded()
    return app
