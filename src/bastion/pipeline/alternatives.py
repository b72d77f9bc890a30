"""Several authentication policies on one route are alternatives, not a sequence.

A route protected by both `key-auth` and `oauth2` accepts an API key or an access token: the first policy
(in name order) that recognizes the presented credential decides alone, so a token is never judged as a
malformed key. A request with no credential any of them recognizes gets the first policy's answer (its
"credentials missing" refusal with its challenge).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from bastion.pipeline.context import RequestContext
from bastion.pipeline.policy import BasePolicy, Pending, Reject, Stage


class FirstRecognized(BasePolicy):
    name: ClassVar[str] = "authenticate"
    stage: ClassVar[Stage] = Stage.AUTHENTICATE
    Config: ClassVar[type[BaseModel]] = BaseModel

    def __init__(self, policies: tuple[BasePolicy, ...]) -> None:
        if len(policies) < 2:
            raise ValueError("alternatives need at least two policies")
        self.policies = policies

    def _choose(self, ctx: RequestContext) -> BasePolicy:
        for policy in self.policies:
            if policy.recognizes(ctx):
                return policy
        return self.policies[0]

    def try_sync(self, ctx: RequestContext) -> Reject | Pending | None:
        return self._choose(ctx).try_sync(ctx)

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        return await self._choose(ctx).on_request(ctx)

    def recognizes(self, ctx: RequestContext) -> bool:
        return any(p.recognizes(ctx) for p in self.policies)


class _FirstRecognizedReadingBody(FirstRecognized):
    """Alternatives of which one reads the body before deciding: the gateway reads it first."""

    needs_body: ClassVar[bool] = True


def first_recognized(policies: tuple[BasePolicy, ...]) -> FirstRecognized:
    """The alternatives policy for ``policies`` (``needs_body`` is a class attribute, hence two classes)."""
    if any(policy.needs_body for policy in policies):
        return _FirstRecognizedReadingBody(policies)
    return FirstRecognized(policies)
