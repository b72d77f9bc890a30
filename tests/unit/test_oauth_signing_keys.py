"""Signing keys of the built-in authorization server: encryption at rest, rotation, JWKS, the local key set.

Runs on a real SQLite store in a temporary directory."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet
from sqlalchemy import text, update

from bastion.identity.keys import KeyHasher
from bastion.oauth.server.keys import ALGORITHMS, SigningKeyError, SigningKeys, generate_private_key
from bastion.oauth.server.store import OAuthStore, SigningKeyRecord
from bastion.storage.audit import AuditActor
from bastion.storage.engine import create_engine
from bastion.storage.identity_store import IdentityStore
from bastion.storage.migrate import migrate
from bastion.storage.models import OAuthSigningKeyRow

T = TypeVar("T")
PEPPER = b"signing-key-test-pepper-0123456789abcdef"
OTHER_PEPPER = b"another-pepper-entirely-0123456789abcdef"
ADMIN = AuditActor("admin@example.com")
START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


@dataclass
class Clock:
    now: datetime = START
    monotonic_now: float = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.monotonic_now


class CountingStore(OAuthStore):
    """The real store, counting how often the signing keys are read."""

    reads: int = 0

    async def signing_key_rows(self) -> list[SigningKeyRecord]:
        self.reads += 1
        return await super().signing_key_rows()


@dataclass
class Env:
    path: Path
    clock: Clock = field(default_factory=Clock)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def run(self, body: Callable[[CountingStore], Awaitable[T]]) -> T:
        async def main() -> T:
            engine = create_engine(self.url)
            try:
                return await body(CountingStore(engine, KeyHasher(PEPPER), clock=self.clock))
            finally:
                await engine.dispose()

        return asyncio.run(main())

    def keys(self, store: OAuthStore, algorithm: str = "ES256", pepper: bytes = PEPPER) -> SigningKeys:
        return SigningKeys(store, pepper, algorithm, clock=self.clock, monotonic=self.clock.monotonic)

    def raw(self) -> str:
        """The database files byte for byte, and every signing-key row as text."""
        parts = []
        for suffix in ("", "-wal", "-shm", "-journal"):
            path = Path(f"{self.path}{suffix}")
            if path.exists():
                parts.append(path.read_bytes().decode("latin-1"))
        with sqlite3.connect(self.path) as connection:
            parts.append(repr(connection.execute("SELECT * FROM oauth_signing_keys").fetchall()))
            parts.append(repr(connection.execute("SELECT * FROM audit_log").fetchall()))
        return "\n".join(parts)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    path = tmp_path / "keys.db"
    asyncio.run(migrate(f"sqlite:///{path}"))
    return Env(path)


def _b64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def test_private_keys_are_encrypted_at_rest(env: Env) -> None:
    async def body(store: CountingStore) -> list[dict[str, Any]]:
        keys = env.keys(store)
        await keys.ensure()
        assert sorted(info.state for info in keys.info()) == ["active", "next"]
        secrets = []
        for row in await store.signing_key_rows():
            private = keys._cipher.decrypt(row.kid, row.encrypted_private_key, row.algorithm)
            secrets.append(dict(private.as_dict(private=True)))
            assert not set(PRIVATE_MEMBERS) & set(row.public_jwk)
            assert row.kid not in row.encrypted_private_key.decode("latin-1")
        return secrets

    secrets = env.run(body)
    raw = env.raw()
    for secret in secrets:
        assert secret["x"] in raw  # the public half is stored as it is
        assert secret["d"] not in raw
        assert _b64(secret["d"]).decode("latin-1") not in raw
    assert "system:oauth-signing-keys" in raw  # first creation is audited...
    assert '"d"' not in raw  # ...without key material


def test_a_wrong_pepper_or_a_moved_ciphertext_cannot_decrypt(env: Env) -> None:
    async def body(store: CountingStore) -> None:
        await env.keys(store).ensure()
        with pytest.raises(SigningKeyError, match="cannot decrypt") as caught:
            await env.keys(store, pepper=OTHER_PEPPER).load()
        assert "pepper" in str(caught.value)
        rows = await store.signing_key_rows()
        active = next(r for r in rows if r.state == "active")
        following = next(r for r in rows if r.state == "next")
        # The kid is the associated data: a ciphertext copied to another row does not decrypt there.
        async with store.engine.begin() as connection:
            await connection.execute(update(OAuthSigningKeyRow).where(OAuthSigningKeyRow.kid == following.kid)
                                     .values(encrypted_private_key=active.encrypted_private_key))
        with pytest.raises(SigningKeyError, match="cannot decrypt"):
            await env.keys(store).load()

    env.run(body)


def test_rotation_states_jwks_and_retirement(env: Env) -> None:
    async def body(store: CountingStore) -> None:
        keys = env.keys(store)
        await keys.ensure()
        before = {info.state: info for info in keys.info()}
        assert before["active"].activated_at == START and before["next"].activated_at is None
        assert keys.signing_key()[:2] == (before["active"].kid, "ES256")
        assert [k["kid"] for k in keys.jwks()["keys"]] == [before["next"].kid, before["active"].kid]

        env.clock.now += timedelta(hours=1)
        rotated_at = env.clock.now
        new_active = await keys.rotate(actor=ADMIN, keep_for=timedelta(minutes=15))
        assert new_active.kid == before["next"].kid and new_active.state == "active"
        assert new_active.activated_at == rotated_at
        after = {info.kid: info for info in keys.info()}
        retired = after[before["active"].kid]
        assert (retired.state, retired.retired_at, retired.keep_until) == (
            "retired", rotated_at, rotated_at + timedelta(minutes=15))
        new_next = next(info for info in keys.info() if info.state == "next")
        assert new_next.kid not in (before["active"].kid, before["next"].kid)
        assert keys.signing_key()[0] == new_active.kid
        assert {k["kid"] for k in keys.jwks()["keys"]} == set(after)
        assert keys.keyset.get(retired.kid) is not None  # tokens it signed still verify
        row = next(r for r in await store.signing_key_rows() if r.kid == retired.kid)
        assert row.encrypted_private_key == b""  # a retired key can never sign again

        env.clock.now = rotated_at + timedelta(minutes=15)
        assert retired.kid not in {k["kid"] for k in keys.jwks()["keys"]}
        assert keys.keyset.get(retired.kid) is None
        assert await store.purge_expired() == 1
        await keys.load()
        assert sorted(info.state for info in keys.info()) == ["active", "next"]

        audit = await IdentityStore(store.engine).list_audit(limit=100)
        assert [e.action for e in audit] == ["oauth_signing_key.create", "oauth_signing_key.create",
                                             "oauth_signing_key.rotate"]
        assert audit[-1].after is not None and audit[-1].after["retired"]["kid"] == retired.kid
        assert audit[-1].actor == ADMIN.actor

        # ensure() at the next start finds the keys and changes nothing.
        await env.keys(store).ensure()
        assert len(await IdentityStore(store.engine).list_audit(limit=100)) == 3

    env.run(body)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_token_signed_with_the_active_key_verifies_with_the_jwks(env: Env, algorithm: str) -> None:
    async def body(store: CountingStore) -> None:
        keys = env.keys(store, algorithm)
        await keys.ensure()
        kid, alg, private = keys.signing_key()
        assert alg == algorithm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # joserfc flags "EdDSA" in favour of "Ed25519"
            token = jwt.encode({"alg": alg, "kid": kid, "typ": "at+jwt"}, {"sub": "user-1", "jti": "j1"}, private,
                               algorithms=[alg])
            document = keys.jwks()
            for member in document["keys"]:
                assert member["alg"] == algorithm and member["use"] == "sig" and member["kid"]
                assert not set(PRIVATE_MEMBERS) & set(member)
            decoded = jwt.decode(token, KeySet.import_key_set(document), algorithms=[alg])
            assert decoded.claims["sub"] == "user-1" and decoded.header["kid"] == kid
            verification = keys.keyset.get(kid)
            assert verification is not None and verification.algorithm == alg
            assert not verification.key.is_private
            assert jwt.decode(token, verification.key, algorithms=[alg]).claims["jti"] == "j1"
            # A token signed by another key with the same kid does not verify.
            forged = jwt.encode({"alg": alg, "kid": kid}, {"sub": "mallory"}, generate_private_key(alg, kid),
                                algorithms=[alg])
            with pytest.raises(Exception, match="signature"):
                jwt.decode(forged, verification.key, algorithms=[alg])

    env.run(body)


def test_changing_the_algorithm_replaces_the_unused_next_key(env: Env) -> None:
    async def body(store: CountingStore) -> None:
        es = env.keys(store, "ES256")
        await es.ensure()
        old = {info.state: info for info in es.info()}
        rs = env.keys(store, "RS256")
        await rs.ensure()
        now = {info.kid: info for info in rs.info()}
        assert now[old["active"].kid].state == "active"  # keeps signing until a rotation
        assert now[old["next"].kid].state == "retired" and now[old["next"].kid].keep_until == START
        following = next(info for info in rs.info() if info.state == "next")
        assert following.algorithm == "RS256"
        assert old["next"].kid not in {k["kid"] for k in rs.jwks()["keys"]}
        rotated = await rs.rotate(actor=ADMIN, keep_for=timedelta(minutes=15))
        assert rotated.kid == following.kid and rs.signing_key()[1] == "RS256"

    env.run(body)


def test_the_local_key_set_reloads_unknown_kids_once_per_second(env: Env) -> None:
    async def body(store: CountingStore) -> None:
        writer_node = env.keys(store)
        await writer_node.ensure()
        reader_engine = create_engine(env.url)
        try:
            reader_store = CountingStore(reader_engine, KeyHasher(PEPPER), clock=env.clock)
            reader = env.keys(reader_store)
            await reader.load()
            assert reader.keyset.usable()
            await writer_node.rotate(actor=ADMIN, keep_for=timedelta(minutes=15))
            new_next = next(info.kid for info in writer_node.info() if info.state == "next")
            assert reader.keyset.get(new_next) is None

            reads = reader_store.reads
            await asyncio.gather(*(reader.keyset.refresh(new_next) for _ in range(10)))
            assert reader_store.reads == reads + 1  # single flight
            assert reader.keyset.get(new_next) is not None
            assert reader.signing_key()[0] == writer_node.signing_key()[0]

            await reader.keyset.refresh("unknown-kid")
            assert reader_store.reads == reads + 1  # within the interval: no reload
            env.clock.monotonic_now += 1.0
            await reader.keyset.refresh("unknown-kid")
            await reader.keyset.refresh("unknown-kid")
            assert reader_store.reads == reads + 2
            await reader.keyset.refresh(new_next)  # a known kid never reloads
            assert reader_store.reads == reads + 2
        finally:
            await reader_engine.dispose()

    env.run(body)


def test_keys_are_unusable_before_loading(env: Env) -> None:
    async def body(store: CountingStore) -> None:
        keys = env.keys(store)
        assert not keys.keyset.usable() and keys.jwks() == {"keys": []}
        with pytest.raises(RuntimeError, match="no active signing key"):
            keys.signing_key()
        with pytest.raises(ValueError, match="unsupported signing algorithm"):
            env.keys(store, "HS256")
        async with store.engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM oauth_signing_keys"))).scalar() == 0

    env.run(body)
