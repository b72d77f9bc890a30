"""How the authorization server reads requests and shapes errors: parameters, client credentials, the
brute-force brake, the plug-in steps."""

from __future__ import annotations

import asyncio
import sys
import types
from base64 import b64encode
from collections.abc import Iterator
from urllib.parse import quote_plus

import orjson
import pytest

from bastion.config.model import TokenEndpointLimits
from bastion.oauth.server.client_auth import presented_credentials
from bastion.oauth.server.errors import OAuthError, error_page, error_response, invalid_client
from bastion.oauth.server.limits import FailureBrake
from bastion.oauth.server.params import is_form, parse_parameters
from bastion.oauth.server.steps import SignedInUser, SignInStepError, load_sign_in_step
from bastion.ratelimit.algorithms import Decision, RuleSpec
from bastion.ratelimit.memory import MemoryCounterStore
from bastion.ratelimit.store import CounterStoreError

# -- parameters ---------------------------------------------------------------------------------------


def test_parameters_decode_form_encoding_and_drop_empty_values() -> None:
    assert parse_parameters("a=x+y%20z&b=&c=%E2%9C%93") == {"a": "x y z", "c": "✓"}
    assert parse_parameters("") == {}


@pytest.mark.parametrize("encoded", ["grant_type=a&grant_type=b", "code=&code=x", "scope=a&scope="])
def test_a_parameter_sent_twice_is_invalid_request(encoded: str) -> None:
    with pytest.raises(OAuthError) as caught:
        parse_parameters(encoded)
    assert caught.value.error == "invalid_request"
    assert "Duplicate parameter" in caught.value.description


@pytest.mark.parametrize("encoded", ["a", "a=1&&b=2", "&", "a=%ff", "=" * 3 + "&" + "x" * 3,
                                     "&".join(f"p{i}=1" for i in range(40))])
def test_malformed_parameters_are_invalid_request(encoded: str) -> None:
    with pytest.raises(OAuthError) as caught:
        parse_parameters(encoded)
    assert caught.value.error == "invalid_request"


def test_a_duplicate_parameter_name_is_echoed_only_when_harmless() -> None:
    with pytest.raises(OAuthError) as caught:
        parse_parameters("%3Cscript%3E=1&%3Cscript%3E=2")
    assert "<" not in caught.value.description


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/x-www-form-urlencoded", True),
    ("Application/X-WWW-Form-Urlencoded; charset=UTF-8", True),
    ("application/x-www-form-urlencoded;charset=\"utf-8\"", True),
    ("application/x-www-form-urlencoded; charset=latin-1", False),
    ("application/json", False),
    ("multipart/form-data; boundary=x", False),
    ("", False),
    (None, False),
])
def test_only_utf8_forms_are_accepted(content_type: str | None, expected: bool) -> None:
    assert is_form(content_type) is expected


# -- client credentials ---------------------------------------------------------------------------------


def basic(client_id: str, secret: str, *, encode: bool = True) -> str:
    if encode:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    return "Basic " + b64encode(f"{client_id}:{secret}".encode()).decode()


def test_basic_credentials_are_form_decoded_after_base64() -> None:
    """RFC 6749 2.3.1: a ':' or '%' in the secret survives because both parts are form-urlencoded first."""
    presented = presented_credentials(basic("bcl_a+b", "s:e%c r"), {})
    assert (presented.client_id, presented.secret, presented.method) == ("bcl_a+b", "s:e%c r", "client_secret_basic")


def test_post_credentials_and_public_clients() -> None:
    presented = presented_credentials(None, {"client_id": "bcl_x", "client_secret": "bcs_y"})
    assert (presented.client_id, presented.secret, presented.method) == ("bcl_x", "bcs_y", "client_secret_post")
    presented = presented_credentials(None, {"client_id": "bcl_x"})
    assert (presented.client_id, presented.secret, presented.method) == ("bcl_x", None, "none")
    assert presented_credentials(None, {}).method is None
    assert "bcs_" not in repr(presented_credentials(None, {"client_id": "x", "client_secret": "bcs_y"}))


def test_basic_and_a_form_secret_together_is_invalid_request() -> None:
    with pytest.raises(OAuthError) as caught:
        presented_credentials(basic("bcl_x", "bcs_y"), {"client_secret": "bcs_y"})
    assert caught.value.error == "invalid_request"


def test_basic_with_a_matching_form_client_id_is_accepted_a_different_one_is_not() -> None:
    assert presented_credentials(basic("bcl_x", "s"), {"client_id": "bcl_x"}).method == "client_secret_basic"
    with pytest.raises(OAuthError) as caught:
        presented_credentials(basic("bcl_x", "s"), {"client_id": "bcl_other"})
    assert caught.value.error == "invalid_request"


@pytest.mark.parametrize("header", ["Basic !!!", "Basic " + b64encode(b"no-colon").decode(), "Bearer abc",
                                    "Basic " + b64encode(b"\xff:\xfe").decode(), "Digest x",
                                    "Basic " + b64encode(b"id:%ff").decode()])
def test_malformed_authorization_is_invalid_client_with_a_basic_challenge(header: str) -> None:
    with pytest.raises(OAuthError) as caught:
        presented_credentials(header, {})
    assert caught.value.error == "invalid_client"
    assert caught.value.status == 401
    assert caught.value.headers["www-authenticate"].startswith("Basic realm=")


# -- error shapes -----------------------------------------------------------------------------------------


def test_error_response_is_rfc6749_json_that_no_cache_keeps() -> None:
    response = error_response(OAuthError("invalid_grant", "The code is invalid."))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert orjson.loads(response.body) == {"error": "invalid_grant", "error_description": "The code is invalid."}


def test_invalid_client_after_basic_is_401_with_a_challenge_otherwise_400() -> None:
    with_basic = error_response(invalid_client("no", challenge=True))
    assert with_basic.status_code == 401
    assert with_basic.headers["www-authenticate"] == 'Basic realm="bastion", charset="UTF-8"'
    without = error_response(invalid_client("no", challenge=False))
    assert without.status_code == 400
    assert "www-authenticate" not in without.headers


def test_error_page_escapes_what_it_shows() -> None:
    page = error_page(OAuthError("invalid_request", "bad <script>alert(1)</script>"))
    body = bytes(page.body).decode()
    assert "<script>" not in body and "&lt;script&gt;" in body
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["cache-control"] == "no-store"


# -- the brute-force brake ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_brake_blocks_an_address_after_max_failures_until_the_block_ends() -> None:
    clock = Clock()
    brake = FailureBrake(TokenEndpointLimits(max_failures=3, window=60, block=30), MemoryCounterStore(), clock=clock)

    async def scenario() -> None:
        for _ in range(3):
            await brake.failure("192.0.2.1")
        brake.check("192.0.2.1")  # three failures are still allowed
        await brake.failure("192.0.2.1")
        with pytest.raises(OAuthError) as caught:
            brake.check("192.0.2.1")
        assert caught.value.error == "slow_down"
        assert caught.value.status == 429
        assert caught.value.headers["retry-after"] == "30"
        brake.check("192.0.2.2")  # other addresses are unaffected
        clock.now += 29.5
        with pytest.raises(OAuthError) as caught:
            brake.check("192.0.2.1")
        assert caught.value.headers["retry-after"] == "1"
        clock.now += 1
        brake.check("192.0.2.1")

    asyncio.run(scenario())


def test_the_brake_takes_new_limits_on_reload() -> None:
    clock = Clock()
    brake = FailureBrake(TokenEndpointLimits(max_failures=5, window=60, block=30), MemoryCounterStore(), clock=clock)
    brake.update(TokenEndpointLimits(max_failures=1, window=60, block=10))

    async def scenario() -> None:
        await brake.failure("192.0.2.9")
        await brake.failure("192.0.2.9")
        with pytest.raises(OAuthError) as caught:
            brake.check("192.0.2.9")
        assert caught.value.headers["retry-after"] == "10"

    asyncio.run(scenario())


class DownStore:
    async def hit(self, key: str, rule: RuleSpec, cost: int, now: float) -> Decision:
        raise CounterStoreError("down")


def test_a_failing_counter_store_never_blocks() -> None:
    brake = FailureBrake(TokenEndpointLimits(max_failures=1), DownStore(), clock=Clock())  # type: ignore[arg-type]

    async def scenario() -> None:
        for _ in range(5):
            await brake.failure("192.0.2.3")
        brake.check("192.0.2.3")

    asyncio.run(scenario())


# -- the sign-in step loader ------------------------------------------------------------------------------


class GoodStep:
    async def authenticate(self, request: object) -> SignedInUser:
        return SignedInUser("user-1")


class SyncStep:
    def authenticate(self, request: object) -> SignedInUser:
        return SignedInUser("user-1")


@pytest.fixture
def step_module() -> Iterator[str]:
    module = types.ModuleType("oauth_steps_for_test")
    module.GoodStep = GoodStep  # type: ignore[attr-defined]
    module.instance = GoodStep()  # type: ignore[attr-defined]
    module.sync = SyncStep()  # type: ignore[attr-defined]
    module.nothing = 42  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module.__name__
    del sys.modules[module.__name__]


def test_load_sign_in_step_takes_an_instance_or_a_class(step_module: str) -> None:
    assert isinstance(load_sign_in_step(f"{step_module}:instance"), GoodStep)
    assert isinstance(load_sign_in_step(f"{step_module}:GoodStep"), GoodStep)


@pytest.mark.parametrize("path", ["no-colon", ":attr", "module:", "oauth_steps_for_test:missing",
                                  "oauth_steps_for_test:sync", "oauth_steps_for_test:nothing",
                                  "bastion_no_such_module:step"])
def test_load_sign_in_step_refuses_what_is_not_a_step(step_module: str, path: str) -> None:
    with pytest.raises(SignInStepError):
        load_sign_in_step(path)
