"""Where people come into the authorization-code flow: the sign-in step and the consent step.

The authorization endpoint checks the client, its redirect URI, PKCE and the scopes, then asks the
configured ``SignInStep`` who the user is, then the ``ConsentStep`` what the user grants, and only then issues
a code. Either step may instead answer the user agent itself (a sign-in page, a consent screen): the
endpoint passes that response through unchanged, and the user agent comes back to ``/oauth2/authorize``
with the same parameters once the step is done.

Nothing signs users in out of the box: ``oauth.server.user_authentication`` names the step
(``module:attribute``); the passkey sign-in plugs in there. Without one, the authorization endpoint answers
``temporarily_unavailable`` to the client. Consent defaults to approving the scopes the client may be
granted (its registered scopes, intersected with its consumer's permissions); the consent screen arrives
with the passkeys issue.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

from starlette.requests import Request
from starlette.responses import Response

from bastion.oauth.server.store import OAuthClient


@dataclass(frozen=True, slots=True)
class SignedInUser:
    """The person behind the user agent, as the sign-in step vouches for them."""

    subject: str  # becomes the tokens' `sub`: stable, never reassigned, not a secret
    authenticated_at: float | None = None  # wall clock of the sign-in, when known


@dataclass(frozen=True, slots=True)
class Approved:
    scopes: tuple[str, ...]  # what the user grants; the endpoint keeps only those it offered


@dataclass(frozen=True, slots=True)
class Denied:
    """The user refused: the client gets ``access_denied``."""


@runtime_checkable
class SignInStep(Protocol):
    async def authenticate(self, request: Request) -> SignedInUser | Response:
        """The signed-in user, or a response for the user agent (e.g. a redirect to a sign-in page)."""
        ...


@runtime_checkable
class ConsentStep(Protocol):
    async def decide(self, request: Request, user: SignedInUser, client: OAuthClient,
                     scopes: Sequence[str]) -> Approved | Denied | Response:
        """The user's decision on ``scopes`` for ``client``, or a response (e.g. a consent screen)."""
        ...


class ApproveOffered:
    """Default consent until the consent screen exists: the client gets what it may be granted.

    The scopes were already limited to the client's registration and its consumer's permissions, both set by
    an administrator; no user-specific decision is made."""

    async def decide(self, request: Request, user: SignedInUser, client: OAuthClient,
                     scopes: Sequence[str]) -> Approved | Denied | Response:
        return Approved(tuple(scopes))


class SignInStepError(Exception):
    """``user_authentication`` does not name a usable sign-in step (message safe to print)."""


def load_sign_in_step(path: str) -> SignInStep:
    """Import ``module:attribute``: an object with ``async authenticate(request)``, or a class that builds
    one without arguments."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise SignInStepError(f"oauth.server.user_authentication {path!r} must be 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SignInStepError(f"cannot import the sign-in step module {module_name!r}: {exc}") from exc
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SignInStepError(f"{module_name!r} has no attribute {attribute!r}") from None
    if inspect.isclass(target):
        try:
            target = target()
        except Exception as exc:
            raise SignInStepError(f"cannot create the sign-in step {path!r}: {type(exc).__name__}") from exc
    authenticate = getattr(target, "authenticate", None)
    if not callable(authenticate) or not inspect.iscoroutinefunction(authenticate):
        raise SignInStepError(f"{path!r} is not a sign-in step (it needs `async def authenticate(request)`)")
    return cast(SignInStep, target)
