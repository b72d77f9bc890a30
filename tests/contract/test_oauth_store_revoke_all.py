"""The OAuth store's sweeps, ``revoke_client_tokens`` and ``revoke_consumer_tokens``, on SQLite and PostgreSQL:
what a disabled (or deleted) client or consumer holds is revoked, nothing else is, and token traffic racing
the disable never produces a token the sweep misses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from bastion.oauth.server.secrets import new_authorization_code, new_family_id, new_jti, new_refresh_token
from bastion.oauth.server.store import ClientKind, InvalidRequest
from bastion.storage.engine import create_engine
from bastion.storage.migrate import migrate
from tests.contract.test_identity_store import temporary_postgres_database
from tests.contract.test_oauth_store import ADMIN, ALL_TABLES, CHALLENGE, REDIRECT, Backend, Stores


@pytest.fixture(scope="session")
def sweep_postgres_url() -> Iterator[str]:
    with temporary_postgres_database() as url:
        asyncio.run(migrate(url))
        yield url


async def _empty(url: str) -> None:
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
    url = request.getfixturevalue("sweep_postgres_url")
    asyncio.run(_empty(url))
    return Backend("postgresql", url)


async def _family(s: Stores, client_id: str) -> tuple[str, str]:
    family, token = new_family_id(), new_refresh_token()
    await s.oauth.save_refresh_token(token, family_id=family, client_id=client_id, subject="user-1",
                                     scopes=["orders:read"], family_expires_at=s.clock() + timedelta(days=30))
    return family, token


async def _access(s: Stores, client_id: str, family: str | None, ttl: timedelta = timedelta(minutes=10)) -> str:
    jti = new_jti()
    await s.oauth.record_access_token(jti, client_id=client_id, family_id=family, subject="user-1",
                                      expires_at=s.clock() + ttl)
    return jti


async def _code(s: Stores, client_id: str) -> str:
    code = new_authorization_code()
    await s.oauth.save_authorization_code(code, client_id=client_id, redirect_uri=REDIRECT, code_challenge=CHALLENGE,
                                          scopes=["orders:read"], subject="user-1",
                                          expires_at=s.clock() + timedelta(minutes=1))
    return code


async def _revoked(s: Stores) -> set[str]:
    return {jti for jti, _ in (await s.oauth.revocations_since(0))[1]}


async def _rotates(s: Stores, token: str, client_id: str) -> bool:
    return (await s.oauth.rotate_refresh_token(token, new_refresh_token(), client_id=client_id)).outcome == "rotated"


def test_revoking_a_client_revokes_all_it_holds_and_nothing_else(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        consumer_id = await s.consumer()
        client, _ = await s.client(consumer_id)
        sibling, _ = await s.client(consumer_id)
        stranger, _ = await s.client(await s.consumer("other"))

        family, first = await _family(s, client.client_id)
        second = new_refresh_token()
        assert (await s.oauth.rotate_refresh_token(first, second, client_id=client.client_id)).outcome == "rotated"
        _, other_family_token = await _family(s, client.client_id)
        live = {await _access(s, client.client_id, family), await _access(s, client.client_id, None)}
        await _access(s, client.client_id, None, ttl=timedelta(seconds=1))  # expires before the sweep
        code = await _code(s, client.client_id)
        kept = {await _access(s, sibling.client_id, None), await _access(s, stranger.client_id, None)}
        _, sibling_token = await _family(s, sibling.client_id)
        sibling_code = await _code(s, sibling.client_id)
        s.clock.advance(timedelta(seconds=1))
        audited = await s.audit_count()

        revoked = await s.oauth.revoke_client_tokens(client.client_id)
        assert {jti for jti, _ in revoked} == live
        assert all(expires > s.clock() for _, expires in revoked)
        assert await _revoked(s) == live  # in the table the nodes poll
        for token in (second, other_family_token):
            assert await s.oauth.refresh_token_info(token) is None
            assert not await _rotates(s, token, client.client_id)
        assert await s.oauth.redeem_authorization_code(code, family_id=new_family_id()) is None
        assert await s.audit_count() == audited  # the change that called for it is audited, not the sweep

        # The others keep everything.
        assert await s.oauth.refresh_token_info(sibling_token) is not None
        redeemed = await s.oauth.redeem_authorization_code(sibling_code, family_id=new_family_id())
        assert redeemed is not None and not redeemed.reused
        assert not kept & await _revoked(s)

        # Idempotent: a second sweep finds the same tokens and adds no revocation.
        cursor, _ = await s.oauth.revocations_since(0)
        assert {jti for jti, _ in await s.oauth.revoke_client_tokens(client.client_id)} == live
        assert await s.oauth.revocations_since(cursor) == (cursor, [])
        assert await s.oauth.revoke_client_tokens("bcl_unknown") == []
        with pytest.raises(InvalidRequest):
            await s.oauth.revoke_client_tokens(None)  # type: ignore[arg-type]

    backend.run(body)


def test_tokens_written_after_a_disable_are_born_revoked(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        consumer_id = await s.consumer()
        client, _ = await s.client(consumer_id)
        family, _ = await _family(s, client.client_id)

        # A token request that passed client authentication just before the disable still records its tokens:
        # they are revoked as they are recorded.
        await s.oauth.update_client(client.client_id, actor=ADMIN, status="disabled")
        late = new_jti()
        assert await s.oauth.record_access_token(late, client_id=client.client_id, family_id=None,
                                                 subject="user-1", expires_at=s.clock() + timedelta(minutes=10))
        assert late in await _revoked(s)
        _, late_refresh = await _family(s, client.client_id)
        assert await s.oauth.refresh_token_info(late_refresh) is None
        await s.oauth.update_client(client.client_id, actor=ADMIN, status="active")
        assert not await _rotates(s, late_refresh, client.client_id)  # re-enabling does not bring it back
        fresh = new_jti()
        assert not await s.oauth.record_access_token(fresh, client_id=client.client_id, family_id=family,
                                                     subject="user-1", expires_at=s.clock() + timedelta(minutes=10))
        assert fresh not in await _revoked(s)

        # The same when the consumer is the one disabled.
        await s.identity.update_consumer(consumer_id, actor=ADMIN, status="disabled")
        consumer_late = await _access(s, client.client_id, None)
        assert consumer_late in await _revoked(s)
        _, consumer_late_refresh = await _family(s, client.client_id)
        assert await s.oauth.refresh_token_info(consumer_late_refresh) is None

    backend.run(body)


def test_revoking_a_consumer_covers_every_client_and_outlives_its_deletion(backend: Backend) -> None:
    async def body(s: Stores) -> None:
        consumer_id = await s.consumer()
        confidential, _ = await s.client(consumer_id)
        public, _ = await s.client(consumer_id, kind=ClientKind.PUBLIC, grant_types=("authorization_code",
                                                                                     "refresh_token"))
        other_consumer = await s.consumer("other")
        stranger, _ = await s.client(other_consumer)
        family, refresh = await _family(s, public.client_id)
        live = {await _access(s, confidential.client_id, None), await _access(s, public.client_id, family)}
        _, stranger_refresh = await _family(s, stranger.client_id)
        kept = await _access(s, stranger.client_id, None)

        await s.identity.update_consumer(consumer_id, actor=ADMIN, status="disabled")
        revoked = await s.oauth.revoke_consumer_tokens(consumer_id)
        assert {jti for jti, _ in revoked} == live
        assert await s.oauth.refresh_token_info(refresh) is None
        assert await s.oauth.refresh_token_info(stranger_refresh) is not None
        assert kept not in await _revoked(s)

        # Deleting the consumer takes its clients and their token records along; the revocations stay.
        await s.identity.delete_consumer(consumer_id, actor=ADMIN)
        assert await s.oauth.get_client(confidential.client_id) is None
        assert await _revoked(s) == live
        assert await s.oauth.revoke_consumer_tokens(consumer_id) == []
        assert await s.oauth.revoke_consumer_tokens(other_consumer) != []

    backend.run(body)


def test_token_traffic_racing_a_disable_never_escapes_the_sweep(backend: Backend) -> None:
    """Client-credentials tokens, refresh rotations with their access tokens and new refresh families, all
    running while the client is disabled and swept: whatever was written, and whenever, ends up revoked."""

    async def body(s: Stores) -> None:
        client, _ = await s.client(await s.consumer())
        client_id = client.client_id
        families = [await _family(s, client_id) for _ in range(4)]
        recorded: list[str] = []
        refresh_tokens = [token for _, token in families]

        async def client_credentials() -> None:
            for _ in range(12):
                recorded.append(await _access(s, client_id, None))

        async def rotations(family: str, token: str) -> None:
            for _ in range(4):
                replacement = new_refresh_token()
                rotation = await s.oauth.rotate_refresh_token(token, replacement, client_id=client_id)
                if rotation.outcome != "rotated":
                    return
                refresh_tokens.append(replacement)
                token = replacement
                recorded.append(await _access(s, client_id, family))

        async def new_families() -> None:
            for _ in range(4):
                family, token = await _family(s, client_id)
                refresh_tokens.append(token)
                recorded.append(await _access(s, client_id, family))

        async def disable() -> list[str]:
            await asyncio.sleep(0.01)
            await s.oauth.update_client(client_id, actor=ADMIN, status="disabled")
            return [jti for jti, _ in await s.oauth.revoke_client_tokens(client_id)]

        *_, swept = await asyncio.gather(client_credentials(), new_families(),
                                         *(rotations(family, token) for family, token in families), disable())
        revoked = await _revoked(s)
        assert set(swept) <= revoked
        assert set(recorded) <= revoked, "a token issued around the disable escaped the revocation"
        for token in refresh_tokens:
            assert await s.oauth.refresh_token_info(token) is None

    backend.run(body)
