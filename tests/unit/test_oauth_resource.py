"""The resource server against a real test IdP: issuer choice, principals, caching, introspection, reloads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.config.model import OAuthConfig, TrustedIssuerConfig
from bastion.identity.principal import Principal
from bastion.oauth.contracts import IssuerRuntime, TokenFailure
from bastion.oauth.resource import OAuthConfigError, OAuthResourceServer, build_principal, scopes_of
from tests.support.test_idp import INTROSPECTION_CLIENT, TestIdP


@pytest.fixture
def idp() -> Iterator[TestIdP]:
    server = TestIdP()
    yield server
    server.stop()


def issuer_entry(idp: TestIdP, name: str = "idp", **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "issuer": idp.issuer, "audiences": [idp.audience],
                             "algorithms": ["ES256"], "jwks_uri": idp.jwks_uri}
    entry.update(overrides)
    return entry


def oauth(*entries: dict[str, Any]) -> OAuthConfig:
    return OAuthConfig.model_validate({"issuers": list(entries)})


def with_introspection(idp: TestIdP, secret_file: Path, **overrides: Any) -> dict[str, Any]:
    secret_file.write_text(idp.client_secret)
    return issuer_entry(idp, introspection={"endpoint": idp.introspection_endpoint, "client_id": INTROSPECTION_CLIENT,
                                            "client_secret": f"file:{secret_file.name}", **overrides})


def test_jwt_to_principal_then_cached(idp: TestIdP) -> None:
    async def scenario() -> None:
        server = OAuthResourceServer(wall_clock=time.time, monotonic=time.monotonic)
        await server.configure(oauth(issuer_entry(idp)), None)
        validator = server.validator
        try:
            token = idp.sign(scope="users:read orders:read", sub="user-9", client_id="shop-app")
            assert validator.validate_cached(token) is None
            who = await validator.validate(token)
            assert isinstance(who, Principal), who
            assert who.permissions == {"users:read", "orders:read"}
            assert (who.subject, who.client_id, who.issuer) == ("user-9", "shop-app", "idp")
            assert who.consumer_id == "idp:shop-app" and who.consumer_name == "shop-app"
            assert who.credential_kind == "jwt" and who.level is None
            assert who.token_expires_at is not None
            jwks_fetches = idp.count("jwks")
            assert validator.validate_cached(token) is who
            assert validator.validate_cached(token, frozenset({"idp"})) is who
            assert validator.validate_cached(token, frozenset({"other"})) is None  # not allowed on that route
            assert await validator.validate(token) is who
            assert idp.count("jwks") == jwks_fetches
        finally:
            await server.close()

    asyncio.run(scenario())


def test_issuer_choice_and_refusals(idp: TestIdP) -> None:
    other = TestIdP()

    async def scenario() -> None:
        server = OAuthResourceServer(wall_clock=time.time, monotonic=time.monotonic)
        await server.configure(oauth(issuer_entry(idp), issuer_entry(other, "other")), None)
        validator = server.validator
        try:
            from_other = other.sign()
            assert isinstance(await validator.validate(from_other), Principal)
            refused = await validator.validate(from_other, frozenset({"idp"}))
            assert isinstance(refused, TokenFailure) and "not allowed on this route" in refused.reason
            # a token naming one issuer but signed by the other's key (both call theirs `key-1`)
            forged = other.sign(iss=idp.issuer)
            result = await validator.validate(forged)
            assert isinstance(result, TokenFailure) and "bad signature" in result.reason
            unknown = await validator.validate(idp.sign(iss="https://nobody.example"))
            assert isinstance(unknown, TokenFailure) and "is not trusted" in unknown.reason
            no_identity = await validator.validate(idp.sign(sub=None, client_id=None))
            assert isinstance(no_identity, TokenFailure) and "neither a subject nor a client" in no_identity.reason
            opaque = await validator.validate("opaque-token-value")
            assert isinstance(opaque, TokenFailure) and "introspects" in opaque.reason
        finally:
            await server.close()
            other.stop()

    asyncio.run(scenario())


def test_issuers_sharing_one_idp_are_tried_in_turn(idp: TestIdP) -> None:
    async def scenario() -> None:
        server = OAuthResourceServer(wall_clock=time.time, monotonic=time.monotonic)
        await server.configure(oauth(issuer_entry(idp, "orders", audiences=["orders-api"]),
                                     issuer_entry(idp, "shop")), None)
        try:
            who = await server.validator.validate(idp.sign())
            assert isinstance(who, Principal) and who.issuer == "shop"
            refused = await server.validator.validate(idp.sign(), frozenset({"orders"}))
            assert isinstance(refused, TokenFailure) and "aud" in refused.reason
        finally:
            await server.close()

    asyncio.run(scenario())


def test_idp_unreachable_is_unavailable_not_invalid(idp: TestIdP) -> None:
    idp.set(down=True)

    async def scenario() -> None:
        server = OAuthResourceServer(wall_clock=time.time, monotonic=time.monotonic)
        await server.configure(oauth(issuer_entry(idp)), None)
        try:
            result = await server.validator.validate(idp.sign())
            assert isinstance(result, TokenFailure) and result.unavailable
        finally:
            await server.close()

    asyncio.run(scenario())


def test_opaque_tokens_through_introspection(idp: TestIdP, tmp_path: Path) -> None:
    async def scenario() -> None:
        server = OAuthResourceServer(wall_clock=time.time, monotonic=time.monotonic, base_dir=tmp_path)
        await server.configure(oauth(with_introspection(idp, tmp_path / "secret", cache_ttl=30)), None)
        validator = server.validator
        try:
            token = idp.issue_opaque(scope="orders:read", sub="user-3", client_id="partner")
            results = await asyncio.gather(*(validator.validate(token) for _ in range(20)))
            assert idp.count("introspect") == 1  # single flight
            who = results[0]
            assert isinstance(who, Principal) and who.credential_kind == "opaque-token"
            assert who.permissions == {"orders:read"} and who.consumer_id == "idp:partner"
            assert token not in who.credential_id
            assert validator.validate_cached(token) == who
            unknown = await validator.validate("never-issued-token")
            assert isinstance(unknown, TokenFailure) and "inactive" in unknown.reason
            assert isinstance(await validator.validate("never-issued-token"), TokenFailure)
            assert idp.count("introspect") == 2  # the inactive answer is reused briefly
            refresh = idp.issue_opaque(token_type="refresh_token")
            assert isinstance(await validator.validate(refresh), TokenFailure)
            wrong_aud = idp.issue_opaque(aud="someone-else")
            assert isinstance(await validator.validate(wrong_aud), TokenFailure)
            expired = idp.issue_opaque(exp=int(time.time()) - 120)
            assert isinstance(await validator.validate(expired), TokenFailure)
        finally:
            await server.close()

    asyncio.run(scenario())


def test_opaque_answers_are_reused_no_longer_than_cache_ttl(idp: TestIdP, tmp_path: Path) -> None:
    clock = {"wall": time.time(), "mono": 100.0}

    async def scenario() -> None:
        server = OAuthResourceServer(wall_clock=lambda: clock["wall"], monotonic=lambda: clock["mono"],
                                     base_dir=tmp_path)
        await server.configure(oauth(with_introspection(idp, tmp_path / "secret", cache_ttl=10)), None)
        validator = server.validator
        try:
            token = idp.issue_opaque()
            assert isinstance(await validator.validate(token), Principal)
            idp.revoke_opaque(token)
            clock["wall"] += 9
            clock["mono"] += 9
            assert validator.validate_cached(token) is not None  # within cache_ttl: the documented latency
            clock["wall"] += 2
            clock["mono"] += 2
            assert validator.validate_cached(token) is None
            result = await validator.validate(token)
            assert isinstance(result, TokenFailure) and "inactive" in result.reason
        finally:
            await server.close()

    asyncio.run(scenario())


def test_introspection_credentials_are_checked(idp: TestIdP, tmp_path: Path) -> None:
    async def scenario() -> None:
        server = OAuthResourceServer(wall_clock=time.time, monotonic=time.monotonic, base_dir=tmp_path)
        entry = with_introspection(idp, tmp_path / "secret")
        (tmp_path / "secret").write_text("wrong-secret")
        await server.configure(oauth(entry), None)
        try:
            result = await server.validator.validate(idp.issue_opaque())
            assert isinstance(result, TokenFailure) and result.unavailable  # our misconfiguration: 503
        finally:
            await server.close()

    asyncio.run(scenario())


def test_configure_keeps_unchanged_issuers_and_closes_removed_ones(idp: TestIdP, tmp_path: Path) -> None:
    other = TestIdP()

    async def scenario() -> None:
        server = OAuthResourceServer(wall_clock=time.time, monotonic=time.monotonic, base_dir=tmp_path)
        validator = server.validator
        try:
            await server.configure(oauth(issuer_entry(idp)), None)
            token = idp.sign()
            assert isinstance(await validator.validate(token), Principal)
            await server.configure(oauth(issuer_entry(idp), issuer_entry(other, "other")), None)
            assert server.validator is validator
            assert idp.count("jwks") == 1  # kept, not fetched again
            assert other.count("jwks") == 1  # started
            assert validator.issuer_names() == {"idp", "other"}
            await server.configure(oauth(issuer_entry(other, "other")), None)
            assert validator.validate_cached(token) is None  # removed issuer: its tokens are gone
            assert isinstance(await validator.validate(token), TokenFailure)
            with pytest.raises(OAuthConfigError, match="client_secret"):
                entry = issuer_entry(idp, introspection={"endpoint": idp.introspection_endpoint,
                                                         "client_id": "x", "client_secret": "env:BASTION_NO_SUCH_VAR"})
                await server.configure(oauth(entry), None)
            assert validator.issuer_names() == {"other"}  # a failed configure changes nothing
            builtin = IssuerRuntime(TrustedIssuerConfig(name="bastion", issuer=idp.issuer, audiences=["bastion"],
                                                        algorithms=["ES256"], require_typ="at+jwt"),
                                    keys=_Keys(idp))
            await server.configure(oauth(), builtin)
            assert validator.issuer_names() == {"bastion"}
            who = await validator.validate(idp.sign(aud="bastion", bst_consumer="c-123"))
            assert isinstance(who, Principal) and who.consumer_id == "c-123" and who.issuer == "bastion"
        finally:
            await server.close()
            other.stop()

    asyncio.run(scenario())


class _Keys:
    """The built-in server's key set is local; here, the test IdP's current public key."""

    def __init__(self, idp: TestIdP) -> None:
        from bastion.oauth.jwks import load_keys

        self._keys, _ = load_keys({"keys": [idp.key().jwk()]}, frozenset({"ES256"}))

    def get(self, kid: str) -> Any:
        return self._keys.get(kid)

    async def refresh(self, kid: str) -> None:
        return None

    def usable(self) -> bool:
        return True


def test_scopes_and_principal_mapping() -> None:
    assert scopes_of({"scope": "a b  c"}) == {"a", "b", "c"}
    assert scopes_of({"scp": ["a", "b", 3, "c d"]}) == {"a", "b"}
    assert scopes_of({"scp": "User.Read Mail.Read"}) == {"User.Read", "Mail.Read"}  # Entra
    assert scopes_of({"scope": "a", "scp": ["b"]}) == {"a"}
    assert scopes_of({}) == frozenset()
    config = TrustedIssuerConfig.model_validate({
        "name": "kc", "issuer": "https://kc", "audiences": ["api"], "algorithms": ["RS256"],
        "claims": {"roles": "realm_access.roles", "consumer": "subject"}})
    who = build_principal("kc", config, {"sub": "u1", "azp": "web", "scope": "users:* users:read *",
                                         "realm_access": {"roles": ["admin", 5, "viewer"]}},
                          kind="jwt", credential_id="j", expires_at=None)
    assert isinstance(who, Principal)
    assert who.consumer_id == "kc:u1" and who.client_id == "web" and who.roles == ("admin", "viewer")
    assert who.permissions == {"users:read"}  # wildcards are Bastion's grant syntax, never an IdP's
