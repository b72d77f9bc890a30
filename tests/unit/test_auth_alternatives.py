"""Several authentication policies on a route: the one that recognizes the credential decides alone."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from pydantic import BaseModel

from bastion.errors.codes import AUTH_CREDENTIALS_INVALID, AUTH_CREDENTIALS_MISSING
from bastion.pipeline.alternatives import FirstRecognized, first_recognized
from bastion.pipeline.compiler import _chain
from bastion.pipeline.context import Headers, RequestContext
from bastion.pipeline.policy import BasePolicy, Pending, Reject, Stage


class HeaderAuth(BasePolicy):
    """Accepts requests whose header `name` equals `secret`; recognizes any request carrying `name`."""

    stage: ClassVar[Stage] = Stage.AUTHENTICATE
    Config: ClassVar[type[BaseModel]] = BaseModel

    def __init__(self, name: str, secret: str) -> None:
        self.name = name  # type: ignore[misc]
        self._secret = secret

    def recognizes(self, ctx: RequestContext) -> bool:
        return ctx.headers.get(self.name) is not None

    def try_sync(self, ctx: RequestContext) -> Reject | Pending | None:
        value = ctx.headers.get(self.name)
        if value is None:
            return Reject(AUTH_CREDENTIALS_MISSING, log_reason=self.name)
        if value != self._secret:
            return Reject(AUTH_CREDENTIALS_INVALID, log_reason=self.name)
        ctx.identity = self.name
        return None

    async def on_request(self, ctx: RequestContext) -> Reject | None:
        outcome = self.try_sync(ctx)
        assert not isinstance(outcome, Pending)
        return outcome


class Guard(BasePolicy):
    name: ClassVar[str] = "guard"
    stage: ClassVar[Stage] = Stage.GUARD
    Config: ClassVar[type[BaseModel]] = BaseModel


def ctx_with(**headers: str) -> RequestContext:
    items = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return RequestContext(request_id="r", client_ip="127.0.0.1", method="GET", path="/", query="", host="h",
                          headers=Headers(items), tls=False, started=0.0)


def test_one_authenticator_stays_as_it_is() -> None:
    key = HeaderAuth("key", "k")
    request, _ = _chain({"key": key, "guard": Guard()})
    assert request[1] is key


def test_several_authenticators_become_one_alternative_after_the_guards() -> None:
    key, token = HeaderAuth("key", "k"), HeaderAuth("token", "t")
    request, _ = _chain({"token": token, "guard": Guard(), "key": key})
    assert isinstance(request[0], Guard)
    assert isinstance(request[1], FirstRecognized)
    assert request[1].policies == (key, token)
    assert len(request) == 2


def test_the_recognizing_policy_decides_alone() -> None:
    both = FirstRecognized((HeaderAuth("key", "k"), HeaderAuth("token", "t")))
    ok = ctx_with(token="t")
    assert both.try_sync(ok) is None and ok.identity == "token"
    refused = both.try_sync(ctx_with(token="wrong"))
    assert isinstance(refused, Reject) and refused.log_reason == "token"  # never judged as a bad key
    assert asyncio.run(both.on_request(ctx_with(key="k"))) is None


def test_no_recognized_credential_gets_the_first_policys_answer() -> None:
    both = FirstRecognized((HeaderAuth("key", "k"), HeaderAuth("token", "t")))
    outcome = both.try_sync(ctx_with())
    assert isinstance(outcome, Reject)
    assert outcome.code is AUTH_CREDENTIALS_MISSING and outcome.log_reason == "key"
    assert not both.recognizes(ctx_with(other="x"))


class BodySigningAuth(HeaderAuth):
    """An authenticator that must see the whole body first (e.g. a body signature)."""

    needs_body: ClassVar[bool] = True


def test_alternatives_read_the_body_when_one_of_them_needs_it() -> None:
    plain = first_recognized((HeaderAuth("key", "k"), HeaderAuth("token", "t")))
    assert isinstance(plain, FirstRecognized) and not plain.needs_body
    signed = first_recognized((HeaderAuth("key", "k"), BodySigningAuth("signature", "s")))
    assert isinstance(signed, FirstRecognized) and signed.needs_body
    assert signed.try_sync(ctx_with(signature="s")) is None
