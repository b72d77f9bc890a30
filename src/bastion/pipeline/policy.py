"""The policy interface: every capability of the gateway is a policy.

Request policies run in ``Stage`` order (GUARD first); response policies run in reverse (Envoy-style).
An expected refusal is a returned ``Reject``, never an exception. Per-request state lives in the
``RequestContext``, never on the policy instance: one instance serves every request of its routes.
See docs/policies.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from mypy_extensions import mypyc_attr
from pydantic import BaseModel

from bastion.errors.codes import ErrorCode

if TYPE_CHECKING:
    from bastion.pipeline.context import RequestContext, ResponseHead


class Stage(IntEnum):
    GUARD = 10
    AUTHENTICATE = 20
    AUTHORIZE = 30
    LIMIT = 40
    VALIDATE = 50
    CACHE = 60
    TRANSFORM = 70


@dataclass(frozen=True, slots=True)
class Reject:
    """Stop the request with a problem+json answer."""

    code: ErrorCode
    detail: str | None = None  # client-safe text only
    headers: Mapping[str, str] = field(default_factory=dict)
    log_reason: str | None = None  # the precise reason, for the access log only


@dataclass(frozen=True, slots=True)
class PolicyServices:
    """What the runtime hands a policy when it is built: injected clock and shared services.

    Later capabilities add their stores here (identity store, counters, ...); a policy takes what it needs.
    """

    clock: Callable[[], float]
    extras: Mapping[str, Any] = field(default_factory=dict)


class Policy(Protocol):
    name: ClassVar[str]
    stage: ClassVar[Stage]
    Config: ClassVar[type[BaseModel]]

    async def on_request(self, ctx: RequestContext) -> Reject | None: ...

    def on_response(self, ctx: RequestContext, response: ResponseHead) -> None: ...


class Pending:
    """``try_sync`` could not decide without waiting (I/O): run ``on_request`` instead."""

    __slots__ = ()


PENDING: Final = Pending()


@mypyc_attr(allow_interpreted_subclasses=True)  # policies may come from modules that are not compiled
class BasePolicy:
    """Convenience base: a policy that overrides only what it needs.

    ``try_sync`` is the optional fast path: a policy that can decide without I/O (always, or on a cache
    hit) answers there, and the gateway then serves the request without creating a task for it. It must
    behave exactly like ``on_request`` or return ``PENDING``.
    """

    name: ClassVar[str]
    stage: ClassVar[Stage]
    Config: ClassVar[type[BaseModel]]
    has_request_hook: ClassVar[bool] = True
    has_response_hook: ClassVar[bool] = False
    needs_body: ClassVar[bool] = False  # True: the gateway reads the whole body (up to the route's limit) first

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        return None

    def try_sync(self, ctx: RequestContext) -> Reject | Pending | None:
        return PENDING

    def on_response(self, ctx: RequestContext, response: ResponseHead) -> None:
        return None

    def recognizes(self, ctx: RequestContext) -> bool:
        """AUTHENTICATE policies: whether the request presents a credential of this policy's kind. When a
        route has several authentication policies, the first that recognizes the request decides alone."""
        return True


PolicyFactory = Callable[[BaseModel, PolicyServices], BasePolicy]


@dataclass(frozen=True, slots=True)
class PolicyType:
    """A registered policy kind: its wire name, schema and constructor."""

    name: str
    stage: Stage
    config_model: type[BaseModel]
    factory: PolicyFactory
    summary: str
