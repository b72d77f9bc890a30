"""One contract for the authorization server's store, run against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bastion.identity.keys import KeyHasher
from bastion.oauth.server.keys import SigningKeys
from bastion.oauth.server.secrets import new_authorization_code, new_family_id, new_jti, new_refresh_token
from bastion.oauth.server.store import ClientKind, InvalidRequest, NotFound, OAuthClient, OAuthStore
from bastion.storage.audit import AuditActor
from bastion.storage.engine import create_engine
from bastion.storage.identity_store import IdentityStore
from bastion.storage.migrate import MIGRATIONS, current_revision, head_revision, migrate
from bastion.storage.models import Base
from tests.contract.test_identity_store import START, FakeClock, temporary_postgres_database

T = TypeVar("T")
PEPPER = b"oauth-contract-test-pepper-0123456789abcdef"
HASHER = KeyHasher(PEPPER)
ADMIN = AuditActor("admin@example.com", "192.0.2.10", "req-1")
OAUTH_TABLES = ("oauth_clients", "oauth_authorization_codes", "oauth_refresh_tokens", "oauth_access_tokens",
                "oauth_revocations", "oauth_signing_keys")
ALL_TABLES = ("consumers", "roles", "api_keys", "audit_log", *OAUTH_TABLES)
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
REDIRECT = "https://app.example.com/callback"


@dataclass
class Stores:
    identity: IdentityStore
    oauth: OAuthStore
    clock: FakeClock
    engine: AsyncEngine

    async def consumer(self, name: str = "shop", roles: tuple[str, ...] = ()) -> str:
        return (await self.identity.create_consumer(name, actor=ADMIN, roles=roles)).id

    async def client(self, consumer_id: str, *, kind: ClientKind = ClientKind.CONFIDENTIAL,
                     grant_types: tuple[str, ...] = ("authorization_code", "refresh_token", "client_credentials"),
                     scopes: tuple[str, ...] = ("orders:read",)) -> tuple[OAuthClient, str | None]:
        return await self.oauth.create_client(consumer_id=consumer_id, name="shop app", kind=kind,
                                              grant_types=grant_types, scopes=scopes, redirect_uris=[REDIRECT],
                                              actor=ADMIN)

    async def audit_count(self) -> int:
        return len(await self.identity.list_audit(limit=1000))


@dataclass
class Backend:
    name: str
    url: str
    sqlite_path: Path | None = None
    clock: FakeClock = field(default_factory=FakeClock)

    def run(self, body: Callable[[Stores], Awaitable[T]]) -> T:
        async def main() -> T:
            engine = create_engine(self.url)
            try:
                stores = Stores(IdentityStore(engine, clock=self.clock), OAuthStore(engine, HASHER, clock=self.clock),
                                self.clock, engine)
                return await body(stores)
            finally:
                await engine.dispose()

        return asyncio.run(main())

    async def dump(self, engine: AsyncEngine) -> str:
        """Every row of every table as text (bytes as hex too), and for SQLite the raw bytes of its files."""
        parts = []
        async with engine.connect() as connection:
            for table in ALL_TABLES:
                for row in (await connection.execute(text(f"SELECT * FROM {table}"))).all():
                    parts.append(repr(tuple(row)))
                    parts.extend(bytes(v).hex() for v in row if isinstance(v, bytes | memoryview))
        if self.sqlite_path is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                path = Path(f"{self.sqlite_path}{suffix}")
                if path.exists():
                    parts.append(path.read_bytes().decode("latin-1"))
            with sqlite3.connect(self.sqlite_path) as connection:
                for table in ALL_TABLES:
                    parts.append(repr(connection.execute(f"SELECT * FROM {table}").fetchall()))
        return "\n".join(parts)


@pytest.fixture(scope="session")
def oauth_postgres_url() -> Iterator[str]:
    with temporary_postgres_database() as url:
        asyncio.run(migrate(url))
        yield url


async def _truncate(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {', '.join(ALL_TABLES)} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "oauth.db"
        url = f"sqlite:///{path}"
        asyncio.run(migrate(url))
        return Backend("sqlite", url, sqlite_path=path)
    url = request.getfixturevalue("oauth_postgres_url")
    asyncio.run(_truncate(url))
    return Backend("postgresql", url)


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "oauth.db"
    url = f"sqlite:///{path}"
    asyncio.run(migrate(url))
    return Backend("sqlite", url, sqlite_path=path)


# -- migration ---------------------------------------------------------------------------------------------


def _schema_diff(connection: Any) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def _alembic(connection: Any, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    getattr(command, action)(config, revision)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_matches_the_models_and_downgrades(kind: str, tmp_path: Path) -> None:
    async def check(url: str) -> None:
        await migrate(url)
        assert await current_revision(url) == head_revision() == "0002"
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                assert await connection.run_sync(_schema_diff) == []
            async with engine.begin() as connection:
                await connection.run_sync(_alembic, "downgrade", "0001")
            async with engine.connect() as connection:
                tables = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
            assert not tables & set(OAUTH_TABLES) and "consumers" in tables
            assert await current_revision(url) == "0001"
        finally:
            await engine.dispose()
        await migrate(url)
        assert await current_revision(url) == "0002"

    if kind == "sqlite":
        asyncio.run(check(f"sqlite:///{tmp_path / 'fresh.db'}"))
    else:
        with temporary_postgres_database() as url:
            asyncio.run(check(url))


# -- clients -----------------------------------------------------------------------------------------------


def test_client_lifecycle_is_audited_without_secrets(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        consumer_id = await s.consumer()
        client, secret = await s.client(consumer_id)
        assert secret is not None and secret.startswith("bcs_") and len(secret) == 47
        assert client.client_id.startswith("bcl_") and len(client.client_id) == 26
        assert client.kind is ClientKind.CONFIDENTIAL and client.status == "active"
        assert client.grant_types == ("authorization_code", "client_credentials", "refresh_token")
        assert client.created_at == client.updated_at == START and client.secret_rotated_at is None
        assert secret not in repr(client)
        assert await s.oauth.get_client(client.client_id) == client
        assert await s.oauth.get_client("bcl_unknown") is None

        s.clock.advance(timedelta(seconds=1))
        public, no_secret = await s.client(consumer_id, kind=ClientKind.PUBLIC,
                                           grant_types=("authorization_code", "refresh_token"))
        assert no_secret is None
        other = await s.consumer("other")
        s.clock.advance(timedelta(seconds=1))
        third, _ = await s.client(other, grant_types=("client_credentials",))
        assert [c.client_id for c in await s.oauth.list_clients()] == [
            client.client_id, public.client_id, third.client_id]
        assert [c.client_id for c in await s.oauth.list_clients(other)] == [third.client_id]
        assert len(await s.oauth.list_clients(limit=1)) == 1

        s.clock.advance(timedelta(minutes=1))
        updated = await s.oauth.update_client(client.client_id, actor=ADMIN, name="renamed", scopes=["a:b", "a:b"],
                                              status="disabled")
        assert (updated.name, updated.scopes, updated.status) == ("renamed", ("a:b",), "disabled")
        assert updated.redirect_uris == client.redirect_uris and updated.updated_at == s.clock()
        rotated, secret2 = await s.oauth.rotate_client_secret(client.client_id, actor=ADMIN,
                                                               overlap=timedelta(hours=1))
        assert secret2 != secret and rotated.secret_rotated_at == s.clock()
        assert rotated.previous_secret_expires_at == s.clock() + timedelta(hours=1)
        with pytest.raises(InvalidRequest, match="public client has no secret"):
            await s.oauth.rotate_client_secret(public.client_id, actor=ADMIN, overlap=timedelta(0))
        assert await s.oauth.delete_client(client.client_id, actor=ADMIN) == []
        assert await s.oauth.get_client(client.client_id) is None
        for call in (s.oauth.delete_client(client.client_id, actor=ADMIN),
                     s.oauth.update_client(client.client_id, actor=ADMIN, name="x")):
            with pytest.raises(NotFound):
                await call

        entries = [e for e in await s.identity.list_audit(limit=1000) if e.action.startswith("oauth_client.")]
        assert [(e.action, e.target) for e in entries] == [
            ("oauth_client.create", f"oauth_client:{client.client_id}"),
            ("oauth_client.create", f"oauth_client:{public.client_id}"),
            ("oauth_client.create", f"oauth_client:{third.client_id}"),
            ("oauth_client.update", f"oauth_client:{client.client_id}"),
            ("oauth_client.rotate_secret", f"oauth_client:{client.client_id}"),
            ("oauth_client.delete", f"oauth_client:{client.client_id}"),
        ]
        assert all(e.actor == ADMIN.actor for e in entries)
        assert entries[3].before is not None and entries[3].before["name"] == "shop app"
        assert entries[3].after is not None and entries[3].after["status"] == "disabled"
        assert entries[5].after is None and entries[5].before is not None
        assert (await s.identity.verify_audit_chain()).ok

        audit_text = repr(await s.identity.list_audit(limit=1000))
        dump = await backend.dump(s.engine)
        assert third.client_id in dump  # the dump does see the data
        for plaintext in (secret, secret2):
            for haystack in (audit_text, dump):
                assert plaintext not in haystack and plaintext[4:] not in haystack
            assert HASHER.digest(plaintext).hex() not in audit_text
        assert "digest" not in audit_text

    backend.run(body)


ACCEPTED_URIS = ["https://app.example.com/cb?x=1", "http://127.0.0.1:8765/cb", "http://[::1]/cb",
                 "http://localhost:3000/cb", "com.example.app:/oauth2redirect", "com.example.app://cb"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "public", "grant_types": ["client_credentials"]}, "public client"),
    ({"grant_types": ["client_credentials", "refresh_token"]}, "refresh_token grant needs"),
    ({"grant_types": ["authorization_code"], "redirect_uris": []}, "redirect URI"),
    ({"grant_types": ["password"]}, "no implicit or password"),
    ({"grant_types": ["implicit"]}, "no implicit or password"),
    ({"grant_types": []}, "at least one grant"),
    ({"grant_types": "client_credentials"}, "list"),
    ({"kind": "trusted"}, "kind"),
    ({"name": " padded"}, "client name"),
    ({"scopes": ["orders read"]}, "scope"),
    ({"redirect_uris": ["http://app.example.com/cb"]}, "redirect URI"),
    ({"redirect_uris": ["https://app.example.com/cb#frag"]}, "redirect URI"),
    ({"redirect_uris": ["https://app.example.com/*"]}, "redirect URI"),
    ({"redirect_uris": ["https://user@app.example.com/cb"]}, "redirect URI"),
    ({"redirect_uris": ["/relative/cb"]}, "redirect URI"),
    ({"redirect_uris": ["javascript:alert(1)"]}, "redirect URI"),
    ({"redirect_uris": ["https:///no-host"]}, "redirect URI"),
    ({"redirect_uris": ["http://127.0.0.1:99999/cb"]}, "redirect URI"),
    ({"redirect_uris": ["http://127.0.0.1.evil.example/cb"]}, "redirect URI"),
])
def test_invalid_clients_are_refused(sqlite_backend: Backend, kwargs: dict[str, Any], message: str) -> None:
    async def body(s: Stores) -> None:
        consumer_id = await s.consumer()
        arguments: dict[str, Any] = {"consumer_id": consumer_id, "name": "app", "kind": "confidential",
                                     "grant_types": ["authorization_code"], "scopes": [],
                                     "redirect_uris": [REDIRECT], **kwargs}
        with pytest.raises(InvalidRequest, match=message):
            await s.oauth.create_client(**arguments, actor=ADMIN)
        assert await s.oauth.list_clients() == []
        assert await s.audit_count() == 1  # the consumer's creation only

    sqlite_backend.run(body)


def test_valid_redirect_uris_and_unknown_consumer(sqlite_backend: Backend) -> None:
    async def body(s: Stores) -> None:
        consumer_id = await s.consumer()
        client, _ = await s.oauth.create_client(consumer_id=consumer_id, name="app", kind="public",
                                                grant_types=["authorization_code"], scopes=[],
                                                redirect_uris=[*ACCEPTED_URIS, ACCEPTED_URIS[0]], actor=ADMIN)
        assert client.redirect_uris == tuple(ACCEPTED_URIS)  # order kept, duplicates dropped
        with pytest.raises(InvalidRequest, match="public client"):
            await s.oauth.update_client(client.client_id, actor=ADMIN, grant_types=["client_credentials"])
        with pytest.raises(NotFound, match="consumer"):
            await s.oauth.create_client(consumer_id="00000000-0000-0000-0000-000000000000", name="app",
                                        kind="confidential", grant_types=["client_credentials"], scopes=[],
                                        redirect_uris=[], actor=ADMIN)

    sqlite_backend.run(body)


def test_client_authentication(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        await s.identity.put_role("reader", ["orders:read"], actor=ADMIN)
        await s.identity.put_role("writer", ["orders:write", "orders:read"], actor=ADMIN)
        consumer_id = await s.consumer(roles=("reader", "writer"))
        client, secret = await s.client(consumer_id)
        assert secret is not None
        record = await s.oauth.verify_client_secret(client.client_id, secret)
        assert record is not None and record.client == client
        assert record.consumer_name == "shop" and record.consumer_active
        assert record.permissions == frozenset({"orders:read", "orders:write"})
        assert await s.oauth.client_for_auth(client.client_id) == record
        for wrong in ("", secret[:-1], secret + "x", "bcs_" + "A" * 43, "x" * 10000):
            assert await s.oauth.verify_client_secret(client.client_id, wrong) is None
        assert await s.oauth.verify_client_secret("bcl_unknown", secret) is None
        assert await s.oauth.client_for_auth("bcl_unknown") is None

        # The previous secret works during the overlap only.
        _, secret2 = await s.oauth.rotate_client_secret(client.client_id, actor=ADMIN, overlap=timedelta(minutes=5))
        assert await s.oauth.verify_client_secret(client.client_id, secret) is not None
        assert await s.oauth.verify_client_secret(client.client_id, secret2) is not None
        s.clock.advance(timedelta(minutes=5))
        assert await s.oauth.verify_client_secret(client.client_id, secret) is None
        assert await s.oauth.verify_client_secret(client.client_id, secret2) is not None
        _, secret3 = await s.oauth.rotate_client_secret(client.client_id, actor=ADMIN, overlap=timedelta(0))
        assert await s.oauth.verify_client_secret(client.client_id, secret2) is None  # no overlap asked

        # Disabled client or consumer: refused, though the secret is right.
        await s.oauth.update_client(client.client_id, actor=ADMIN, status="disabled")
        assert await s.oauth.verify_client_secret(client.client_id, secret3) is None
        await s.oauth.update_client(client.client_id, actor=ADMIN, status="active")
        assert await s.oauth.verify_client_secret(client.client_id, secret3) is not None
        await s.identity.update_consumer(consumer_id, actor=ADMIN, status="disabled")
        assert await s.oauth.verify_client_secret(client.client_id, secret3) is None
        auth = await s.oauth.client_for_auth(client.client_id)
        assert auth is not None and not auth.consumer_active

        # A public client has no secret to verify.
        public, _ = await s.client(await s.consumer("spa"), kind=ClientKind.PUBLIC,
                                   grant_types=("authorization_code",))
        assert await s.oauth.verify_client_secret(public.client_id, "") is None
        public_auth = await s.oauth.client_for_auth(public.client_id)
        assert public_auth is not None and public_auth.permissions == frozenset()

    backend.run(body)


# -- codes and refresh tokens ------------------------------------------------------------------------------


async def _save_code(s: Stores, client_id: str, *, ttl: timedelta = timedelta(seconds=60)) -> str:
    code = new_authorization_code()
    await s.oauth.save_authorization_code(code, client_id=client_id, redirect_uri=REDIRECT, code_challenge=CHALLENGE,
                                          scopes=["orders:read"], subject="user-1", expires_at=s.clock() + ttl)
    return code


def test_authorization_codes_are_single_use(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        client, _ = await s.client(await s.consumer())
        code = await _save_code(s, client.client_id)
        assert code.startswith("bac_")
        family = new_family_id()
        first = await s.oauth.redeem_authorization_code(code, family_id=family)
        assert first is not None and not first.reused and first.family_id == family
        assert (first.client_id, first.redirect_uri, first.code_challenge, first.scopes, first.subject) == (
            client.client_id, REDIRECT, CHALLENGE, ("orders:read",), "user-1")
        again = await s.oauth.redeem_authorization_code(code, family_id=new_family_id())
        assert again is not None and again.reused and again.family_id == family
        assert await s.oauth.redeem_authorization_code(new_authorization_code(), family_id=family) is None

        expired = await _save_code(s, client.client_id, ttl=timedelta(seconds=10))
        s.clock.advance(timedelta(seconds=10))
        assert await s.oauth.redeem_authorization_code(expired, family_id=new_family_id()) is None

        with pytest.raises(InvalidRequest, match="code challenge"):
            await s.oauth.save_authorization_code(new_authorization_code(), client_id=client.client_id,
                                                  redirect_uri=REDIRECT, code_challenge="short", scopes=[],
                                                  subject="user-1", expires_at=s.clock() + timedelta(minutes=1))
        dump = await backend.dump(s.engine)
        assert CHALLENGE in dump  # not a secret: derived from the verifier
        for plaintext in (code, expired):
            assert plaintext not in dump and plaintext[4:] not in dump

    backend.run(body)


def test_racing_redemptions_of_one_code_have_exactly_one_winner(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        client, _ = await s.client(await s.consumer())
        for _ in range(3):
            code = await _save_code(s, client.client_id)
            families = [new_family_id() for _ in range(6)]
            results = await asyncio.gather(*(s.oauth.redeem_authorization_code(code, family_id=family)
                                             for family in families))
            assert all(result is not None for result in results)
            winners = [r for r in results if r is not None and not r.reused]
            assert len(winners) == 1
            assert all(r is not None and r.family_id == winners[0].family_id for r in results)

    backend.run(body)


async def _family(s: Stores, client_id: str, *, ttl: timedelta = timedelta(days=30)) -> tuple[str, str]:
    family, token = new_family_id(), new_refresh_token()
    await s.oauth.save_refresh_token(token, family_id=family, client_id=client_id, subject="user-1",
                                     scopes=["orders:read"], family_expires_at=s.clock() + ttl)
    return family, token


async def _access(s: Stores, client_id: str, family: str | None, ttl: timedelta = timedelta(minutes=10)) -> str:
    jti = new_jti()
    await s.oauth.record_access_token(jti, client_id=client_id, family_id=family, subject="user-1",
                                      expires_at=s.clock() + ttl)
    return jti


async def _revoked_jtis(s: Stores) -> set[str]:
    return {jti for jti, _ in (await s.oauth.revocations_since(0))[1]}


def test_refresh_rotation_and_reuse_revokes_the_whole_family(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        client, _ = await s.client(await s.consumer())
        other, _ = await s.client(await s.consumer("other"))
        family, t1 = await _family(s, client.client_id)
        expires = s.clock() + timedelta(days=30)
        a1 = await _access(s, client.client_id, family)
        unrelated = await _access(s, client.client_id, None)
        _, other_token = await _family(s, client.client_id)
        info = await s.oauth.refresh_token_info(t1)
        assert info is not None and (info.family_id, info.subject, info.scopes, info.family_expires_at) == (
            family, "user-1", ("orders:read",), expires)

        t2 = new_refresh_token()
        assert (await s.oauth.rotate_refresh_token(t1, t2, client_id=other.client_id)).outcome == "invalid"
        s.clock.advance(timedelta(minutes=1))
        rotated = await s.oauth.rotate_refresh_token(t1, t2, client_id=client.client_id)
        assert rotated.outcome == "rotated" and rotated.revoked_access_tokens == ()
        assert rotated.record is not None and rotated.record.family_id == family
        assert rotated.record.family_expires_at == expires  # rotation does not extend the family
        assert await s.oauth.refresh_token_info(t1) is None and await s.oauth.refresh_token_info(t2) is not None
        a2 = await _access(s, client.client_id, family)
        t3 = new_refresh_token()
        assert (await s.oauth.rotate_refresh_token(t2, t3, client_id=client.client_id)).outcome == "rotated"

        # An attacker replays t1: everything of the family dies, nothing else does.
        reused = await s.oauth.rotate_refresh_token(t1, new_refresh_token(), client_id=client.client_id)
        assert reused.outcome == "reused" and reused.record is None
        assert {jti for jti, _ in reused.revoked_access_tokens} == {a1, a2}
        assert await _revoked_jtis(s) == {a1, a2}
        assert await s.oauth.refresh_token_info(t3) is None
        assert (await s.oauth.rotate_refresh_token(t3, new_refresh_token(),
                                                   client_id=client.client_id)).outcome == "invalid"
        assert await s.oauth.refresh_token_info(other_token) is not None
        assert unrelated not in await _revoked_jtis(s)
        assert (await s.oauth.rotate_refresh_token(new_refresh_token(), new_refresh_token(),
                                                   client_id=client.client_id)).outcome == "invalid"

        # A token of the revoked family issued later is refused at once.
        late = await _access(s, client.client_id, family)
        assert late in await _revoked_jtis(s)

        # An expired family neither rotates nor counts as reuse.
        _, short = await _family(s, client.client_id, ttl=timedelta(hours=1))
        s.clock.advance(timedelta(hours=1))
        assert await s.oauth.refresh_token_info(short) is None
        assert (await s.oauth.rotate_refresh_token(short, new_refresh_token(),
                                                   client_id=client.client_id)).outcome == "invalid"

        dump = await backend.dump(s.engine)
        for token in (t1, t2, t3, other_token):
            assert token not in dump and token[4:] not in dump

    backend.run(body)


def test_racing_rotations_have_one_winner_and_the_losers_revoke_the_family(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        client, _ = await s.client(await s.consumer())
        family, token = await _family(s, client.client_id)
        jti = await _access(s, client.client_id, family)
        replacements = [new_refresh_token() for _ in range(5)]
        results = await asyncio.gather(*(s.oauth.rotate_refresh_token(token, replacement, client_id=client.client_id)
                                         for replacement in replacements))
        outcomes = sorted(r.outcome for r in results)
        assert outcomes == ["reused"] * 4 + ["rotated"]
        assert [await s.oauth.refresh_token_info(r) for r in replacements] == [None] * 5
        assert jti in await _revoked_jtis(s)

    backend.run(body)


def test_code_reuse_revokes_the_family_even_tokens_saved_after_it(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        client, _ = await s.client(await s.consumer())
        # Reuse after the grant completed: its refresh and access tokens are revoked.
        code = await _save_code(s, client.client_id)
        first = await s.oauth.redeem_authorization_code(code, family_id=new_family_id())
        assert first is not None and first.family_id is not None
        token = new_refresh_token()
        await s.oauth.save_refresh_token(token, family_id=first.family_id, client_id=client.client_id,
                                         subject="user-1", scopes=["orders:read"],
                                         family_expires_at=s.clock() + timedelta(days=1))
        jti = await _access(s, client.client_id, first.family_id)
        again = await s.oauth.redeem_authorization_code(code, family_id=new_family_id())
        assert again is not None and again.reused
        assert [j for j, _ in again.revoked_access_tokens] == [jti]
        assert await s.oauth.refresh_token_info(token) is None and jti in await _revoked_jtis(s)

        # Reuse racing the first grant: tokens saved for the family afterwards are born revoked.
        code2 = await _save_code(s, client.client_id)
        first2 = await s.oauth.redeem_authorization_code(code2, family_id=new_family_id())
        assert first2 is not None and first2.family_id is not None
        replay = await s.oauth.redeem_authorization_code(code2, family_id=new_family_id())
        assert replay is not None and replay.reused and replay.revoked_access_tokens == ()
        late_token = new_refresh_token()
        await s.oauth.save_refresh_token(late_token, family_id=first2.family_id, client_id=client.client_id,
                                         subject="user-1", scopes=[], family_expires_at=s.clock() + timedelta(days=1))
        late_jti = await _access(s, client.client_id, first2.family_id)
        assert await s.oauth.refresh_token_info(late_token) is None
        assert late_jti in await _revoked_jtis(s)

        # revoke_family does the same for a family named directly, and is idempotent.
        family, token3 = await _family(s, client.client_id)
        jti3 = await _access(s, client.client_id, family)
        assert [j for j, _ in await s.oauth.revoke_family(family)] == [jti3]
        assert [j for j, _ in await s.oauth.revoke_family(family)] == [jti3]
        assert await s.oauth.refresh_token_info(token3) is None

    backend.run(body)


def test_rfc7009_refresh_token_revocation(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        client, _ = await s.client(await s.consumer())
        other, _ = await s.client(await s.consumer("other"))
        family, t1 = await _family(s, client.client_id)
        jti = await _access(s, client.client_id, family)
        t2 = new_refresh_token()
        await s.oauth.rotate_refresh_token(t1, t2, client_id=client.client_id)
        assert await s.oauth.revoke_refresh_token(t2, client_id=other.client_id) == ()  # not the owner
        assert await s.oauth.refresh_token_info(t2) is not None
        assert await s.oauth.revoke_refresh_token(new_refresh_token(), client_id=client.client_id) == ()
        revoked = await s.oauth.revoke_refresh_token(t2, client_id=client.client_id)
        assert [j for j, _ in revoked] == [jti]
        assert await s.oauth.refresh_token_info(t2) is None
        assert (await s.oauth.rotate_refresh_token(t2, new_refresh_token(),
                                                   client_id=client.client_id)).outcome == "invalid"

    backend.run(body)


# -- access tokens and revocations -------------------------------------------------------------------------


def test_revocations_cursor_expiry_and_purge(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        client, _ = await s.client(await s.consumer())
        assert await s.oauth.revocations_since(0) == (0, [])
        soon, later = s.clock() + timedelta(minutes=1), s.clock() + timedelta(minutes=10)
        await s.oauth.revoke_access_token("jti-1", expires_at=soon)
        await s.oauth.revoke_access_token("jti-1", expires_at=soon)  # idempotent
        await s.oauth.revoke_access_token("jti-past", expires_at=s.clock())  # already expired: nothing to do
        cursor, entries = await s.oauth.revocations_since(0)
        assert entries == [("jti-1", soon)] and cursor > 0
        assert await s.oauth.revocations_since(cursor) == (cursor, [])
        await s.oauth.revoke_access_tokens([("jti-2", later), ("jti-3", later), ("jti-1", later)])
        cursor2, entries2 = await s.oauth.revocations_since(cursor)
        assert sorted(entries2) == [("jti-2", later), ("jti-3", later)] and cursor2 > cursor

        code = await _save_code(s, client.client_id, ttl=timedelta(seconds=30))
        _, token = await _family(s, client.client_id, ttl=timedelta(minutes=2))
        await _access(s, client.client_id, None, ttl=timedelta(minutes=1))
        s.clock.advance(timedelta(minutes=1))
        assert (await s.oauth.revocations_since(0))[1] == entries2  # jti-1 expired
        deleted = await s.oauth.purge_expired()
        assert deleted == 3  # the code, the access record, the jti-1 revocation
        assert await s.oauth.redeem_authorization_code(code, family_id=new_family_id()) is None
        assert await s.oauth.refresh_token_info(token) is not None
        s.clock.advance(timedelta(minutes=10))
        assert await s.oauth.purge_expired() == 3  # the family, jti-2 and jti-3
        assert await s.oauth.revocations_since(0) == (0, [])

        # Ids keep increasing after a purge, so a node's cursor never hides a new revocation.
        await s.oauth.revoke_access_token("jti-4", expires_at=s.clock() + timedelta(minutes=1))
        cursor3, entries3 = await s.oauth.revocations_since(cursor2)
        assert [jti for jti, _ in entries3] == ["jti-4"] and cursor3 > cursor2
        with pytest.raises(InvalidRequest, match="jti"):
            await s.oauth.revoke_access_token("x" * 200, expires_at=s.clock() + timedelta(minutes=1))

    backend.run(body)


def test_deleting_a_client_revokes_its_tokens(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        consumer_id = await s.consumer()
        client, _ = await s.client(consumer_id)
        survivor, _ = await s.client(consumer_id)
        family, token = await _family(s, client.client_id)
        live = {await _access(s, client.client_id, family), await _access(s, client.client_id, None)}
        await _access(s, client.client_id, None, ttl=timedelta(seconds=1))
        kept = await _access(s, survivor.client_id, None)
        code = await _save_code(s, client.client_id)
        s.clock.advance(timedelta(seconds=1))
        revoked = await s.oauth.delete_client(client.client_id, actor=ADMIN)
        assert {jti for jti, _ in revoked} == live  # the expired one needs no revocation
        assert await _revoked_jtis(s) == live and kept not in live
        assert await s.oauth.refresh_token_info(token) is None
        assert await s.oauth.redeem_authorization_code(code, family_id=new_family_id()) is None
        entry = (await s.identity.list_audit(limit=1000))[-1]
        assert entry.action == "oauth_client.delete" and entry.before is not None
        assert entry.before["revoked_access_tokens"] == 2

        # Deleting the consumer takes its clients along.
        await s.identity.delete_consumer(consumer_id, actor=ADMIN)
        assert await s.oauth.get_client(survivor.client_id) is None

    backend.run(body)


def test_token_traffic_is_not_audited(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        client, secret = await s.client(await s.consumer())
        assert secret is not None
        before = await s.audit_count()
        code = await _save_code(s, client.client_id)
        redeemed = await s.oauth.redeem_authorization_code(code, family_id=new_family_id())
        assert redeemed is not None and redeemed.family_id is not None
        await s.oauth.redeem_authorization_code(code, family_id=new_family_id())
        family, token = await _family(s, client.client_id)
        await _access(s, client.client_id, family)
        await s.oauth.rotate_refresh_token(token, new_refresh_token(), client_id=client.client_id)
        await s.oauth.rotate_refresh_token(token, new_refresh_token(), client_id=client.client_id)
        await s.oauth.revoke_access_token(new_jti(), expires_at=s.clock() + timedelta(minutes=1))
        await s.oauth.verify_client_secret(client.client_id, secret)
        await s.oauth.purge_expired()
        assert await s.audit_count() == before

    backend.run(body)


# -- signing keys on two nodes -----------------------------------------------------------------------------


def test_two_nodes_creating_the_first_keys_at_once(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        engines = [create_engine(backend.url) for _ in range(3)]
        try:
            nodes = [SigningKeys(OAuthStore(engine, HASHER, clock=s.clock), PEPPER, "ES256", clock=s.clock)
                     for engine in engines]
            await asyncio.gather(*(node.ensure() for node in nodes))
            rows = await s.oauth.signing_key_rows()
            assert sorted(row.state for row in rows) == ["active", "next"]
            for node in nodes:
                assert [(i.kid, i.state) for i in node.info()] == [(r.kid, r.state) for r in rows]
                assert node.signing_key()[0] == next(r.kid for r in rows if r.state == "active")
            created = [e for e in await s.identity.list_audit(limit=1000) if e.action == "oauth_signing_key.create"]
            assert sorted(e.target for e in created) == sorted(f"oauth_signing_key:{r.kid}" for r in rows)

            # Rotation on one node; another node learns it by reloading.
            new_active = await nodes[0].rotate(actor=ADMIN, keep_for=timedelta(minutes=15))
            assert new_active.kid == next(r.kid for r in rows if r.state == "next")
            await nodes[1].load()
            assert nodes[1].signing_key()[0] == new_active.kid
            assert {k["kid"] for k in nodes[1].jwks()["keys"]} == {r.kid for r in rows} | {
                i.kid for i in nodes[0].info() if i.state == "next"}
            entries = [e.action for e in await s.identity.list_audit(limit=1000)]
            assert entries.count("oauth_signing_key.rotate") == 1
            assert (await s.identity.verify_audit_chain()).ok
        finally:
            for engine in engines:
                await engine.dispose()

    backend.run(body)


def test_ids_and_secrets_are_unique_and_well_formed() -> None:
    tokens = [new_refresh_token() for _ in range(200)]
    codes = [new_authorization_code() for _ in range(200)]
    jtis = [new_jti() for _ in range(200)]
    families = [new_family_id() for _ in range(200)]
    for values in (tokens, codes, jtis, families):
        assert len(set(values)) == len(values)
    assert all(t.startswith("brt_") and len(t) == 47 for t in tokens)
    assert all(c.startswith("bac_") and len(c) == 47 for c in codes)
    assert all(len(j) == 22 and j.replace("-", "").replace("_", "").isalnum() for j in itertools.chain(jtis, families))
