"""The authorization server's signing keys: generation, encryption at rest, rotation, JWKS.

Private keys are stored encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from the key pepper,
which lives outside the database: a stolen database or backup alone cannot sign tokens. The kid is the
associated data, so a ciphertext moved to another row does not decrypt. Kids are random, unrelated to the
key material.

There is always a ``next`` key, published in the JWKS before it signs anything, so that verifiers (this
gateway's other nodes, or anyone caching the JWKS) know it before the first token it signs. Rotation makes
next active, active retired, and creates a new next key; a retired key's public half stays published until
``keep_until`` (rotation time + access-token lifetime + leeway), when every token it signed has expired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from joserfc.jwk import ECKey, Key, KeyParameters, OKPKey, RSAKey

from bastion.oauth.contracts import VerificationKey
from bastion.oauth.server.keyset import LocalKeySet
from bastion.oauth.server.secrets import new_kid
from bastion.oauth.server.store import (
    AuditActor,
    Conflict,
    OAuthStore,
    SigningKeyMaterial,
    SigningKeyRecord,
    StoreUnavailable,
)

__all__ = ["ALGORITHMS", "LocalKeySet", "SigningKeyError", "SigningKeyInfo", "SigningKeys"]

log = logging.getLogger("bastion.oauth")

ALGORITHMS: Final = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
HKDF_INFO: Final = b"bastion oauth signing keys v1"
RSA_KEY_BITS: Final = 2048
SYSTEM_ACTOR: Final = AuditActor("system:oauth-signing-keys")  # first start has no human actor
_FORMAT_V1 = b"\x01"
_NONCE_BYTES = 12
_KEY_TYPES: dict[str, tuple[str, str | None]] = {  # algorithm -> (kty, crv)
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
    "EdDSA": ("OKP", "Ed25519"),
}


class SigningKeyError(Exception):
    """A stored signing key cannot be used (wrong pepper, corrupted row). The message names the kid only."""


@dataclass(frozen=True, slots=True)
class SigningKeyInfo:
    kid: str
    algorithm: str
    state: Literal["next", "active", "retired"]
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    keep_until: datetime | None


@dataclass(frozen=True, slots=True)
class _Loaded:
    info: SigningKeyInfo
    verification: VerificationKey  # public key only
    public_jwk: dict[str, Any]
    private: Key | None  # for next and active keys
    published_until: float | None  # POSIX time; None: no limit (next, active)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- key material ----------------------------------------------------------------------------------------


def _check_algorithm(algorithm: str) -> str:
    if algorithm not in _KEY_TYPES:
        raise ValueError(f"unsupported signing algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")
    return algorithm


def generate_private_key(algorithm: str, kid: str) -> Key:
    parameters: KeyParameters = {"kid": kid, "alg": algorithm, "use": "sig"}
    kty, crv = _KEY_TYPES[_check_algorithm(algorithm)]
    if kty == "EC":
        return ECKey.generate_key("P-384" if crv == "P-384" else "P-256", parameters)
    if kty == "RSA":
        return RSAKey.generate_key(RSA_KEY_BITS, parameters)
    return OKPKey.generate_key("Ed25519", parameters)


def _import_key(data: dict[str, Any], algorithm: str) -> Key:
    """Import a stored JWK, refusing any key type or curve other than the algorithm's."""
    kty, crv = _KEY_TYPES[_check_algorithm(algorithm)]
    if data.get("kty") != kty or (crv is not None and data.get("crv") != crv):
        raise SigningKeyError(f"signing key {data.get('kid')!r} does not match its algorithm {algorithm}")
    key: Key
    if kty == "EC":
        key = ECKey.import_key(data)
    elif kty == "RSA":
        rsa_key = RSAKey.import_key(data)
        if rsa_key.raw_value.key_size < RSA_KEY_BITS:
            raise SigningKeyError(f"signing key {data.get('kid')!r} is shorter than {RSA_KEY_BITS} bits")
        key = rsa_key
    else:
        key = OKPKey.import_key(data)
    return key


def public_jwk(key: Key, kid: str, algorithm: str) -> dict[str, Any]:
    document = dict(key.as_dict(private=False))
    document.update({"kid": kid, "alg": algorithm, "use": "sig"})
    return document


class KeyCipher:
    """AES-256-GCM under HKDF-SHA256(pepper); the kid is the associated data."""

    __slots__ = ("_aead",)

    def __init__(self, pepper: bytes) -> None:
        if not isinstance(pepper, bytes | bytearray) or len(pepper) < 32:
            raise ValueError("the key pepper must be at least 32 bytes")
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(bytes(pepper))
        self._aead = AESGCM(derived)

    def __repr__(self) -> str:
        return "KeyCipher([REDACTED])"

    def encrypt(self, kid: str, key: Key) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        plaintext = json.dumps(key.as_dict(private=True), separators=(",", ":")).encode()
        return _FORMAT_V1 + nonce + self._aead.encrypt(nonce, plaintext, kid.encode())

    def decrypt(self, kid: str, blob: bytes, algorithm: str) -> Key:
        if not blob.startswith(_FORMAT_V1) or len(blob) <= 1 + _NONCE_BYTES:
            raise SigningKeyError(f"signing key {kid!r} is not in a known format")
        nonce, ciphertext = blob[1:1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES:]
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, kid.encode())
        except InvalidTag:
            raise SigningKeyError(f"cannot decrypt signing key {kid!r}: keys.pepper is not the one it was "
                                  "created with, or the row was altered") from None
        key = _import_key(json.loads(plaintext), algorithm)
        if not key.is_private:
            raise SigningKeyError(f"signing key {kid!r} holds no private key")
        return key


# -- the key set ---------------------------------------------------------------------------------------


class SigningKeys:
    def __init__(self, store: OAuthStore, pepper: bytes, algorithm: str, *,
                 clock: Callable[[], datetime] = _utcnow, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._cipher = KeyCipher(pepper)
        self._algorithm = _check_algorithm(algorithm)
        self._clock = clock
        self._keys: dict[str, _Loaded] = {}
        self._infos: list[SigningKeyInfo] = []
        self._active: _Loaded | None = None
        self._load_lock = asyncio.Lock()
        self.keyset = LocalKeySet(self._reload_for_unknown_kid, wall_clock=lambda: self._clock().timestamp(),
                                  monotonic=monotonic)

    def __repr__(self) -> str:
        return f"SigningKeys(algorithm={self._algorithm!r}, keys={sorted(self._keys)!r})"

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def _material(self) -> SigningKeyMaterial:
        kid = new_kid()
        key = generate_private_key(self._algorithm, kid)
        return SigningKeyMaterial(kid=kid, algorithm=self._algorithm,
                                  encrypted_private_key=self._cipher.encrypt(kid, key),
                                  public_jwk=public_jwk(key, kid, self._algorithm))

    async def ensure(self) -> None:
        """First start: create the active and next keys if missing (and replace a next key of another
        algorithm than configured). Safe when several nodes start at once: the store decides under the audit
        lock, and the unique index refuses a second active or next key."""
        current = {row.state: row for row in await self._store.signing_key_rows() if row.state != "retired"}
        next_row = current.get("next")
        if "active" not in current or next_row is None or next_row.algorithm != self._algorithm:
            try:
                created = await self._store.ensure_signing_keys(
                    algorithm=self._algorithm, active=self._material(), next_key=self._material(), actor=SYSTEM_ACTOR)
            except Conflict:
                created = []  # another node stored its keys first; they are loaded below
            if created:
                log.info("created %d signing key(s) (%s)", len(created), self._algorithm)
        await self.load()
        active = self._active
        if active is not None and active.info.algorithm != self._algorithm:
            log.warning("the active signing key uses %s, the configuration asks for %s: rotate the keys "
                        "(bastion oauth rotate-key) to switch", active.info.algorithm, self._algorithm)

    async def load(self) -> None:
        """(Re)read the keys from the store. Raises SigningKeyError when a key cannot be decrypted."""
        async with self._load_lock:
            rows = await self._store.signing_key_rows()
            keys: dict[str, _Loaded] = {}
            active: _Loaded | None = None
            for row in rows:
                loaded = self._load_row(row)
                keys[row.kid] = loaded
                if row.state == "active":
                    active = loaded
            self._keys = keys
            self._infos = [entry.info for entry in keys.values()]
            self._active = active
            self.keyset.publish({kid: (entry.verification, entry.published_until) for kid, entry in keys.items()})

    async def _reload_for_unknown_kid(self) -> None:
        try:
            await self.load()
        except (StoreUnavailable, SigningKeyError) as exc:
            log.warning("could not reload the signing keys (%s)", type(exc).__name__)

    def _load_row(self, row: SigningKeyRecord) -> _Loaded:
        previous = self._keys.get(row.kid)
        public = _import_key(row.public_jwk, row.algorithm)
        if public.is_private:
            raise SigningKeyError(f"signing key {row.kid!r} has private material in its public JWK")
        private: Key | None = None
        if row.state != "retired":
            # Decrypt once per key, not at every reload.
            private = previous.private if previous is not None and previous.private is not None \
                else self._cipher.decrypt(row.kid, row.encrypted_private_key, row.algorithm)
        info = SigningKeyInfo(kid=row.kid, algorithm=row.algorithm, state=row.state, created_at=row.created_at,
                              activated_at=row.activated_at, retired_at=row.retired_at, keep_until=row.keep_until)
        until = None
        if row.state == "retired":
            until = row.keep_until.timestamp() if row.keep_until is not None else 0.0
        jwk = public_jwk(public, row.kid, row.algorithm)
        verification = VerificationKey(kid=row.kid, algorithm=row.algorithm, key=public)
        if previous is not None and previous.public_jwk == jwk:
            # The same object as before: tokens cached as verified by this key stay cached across reloads.
            verification = previous.verification
        return _Loaded(info=info, verification=verification, public_jwk=jwk, private=private,
                       published_until=until)

    async def rotate(self, *, actor: AuditActor, keep_for: timedelta) -> SigningKeyInfo:
        """Next becomes active, active retires (published for ``keep_for`` more), a new next key is made.
        Other nodes learn it from ``RevocationList.announce_keys_changed`` or their 5 s reload."""
        record = await self._store.rotate_signing_keys(self._material(), keep_for=keep_for, actor=actor)
        await self.load()
        return SigningKeyInfo(kid=record.kid, algorithm=record.algorithm, state=record.state,
                              created_at=record.created_at, activated_at=record.activated_at,
                              retired_at=record.retired_at, keep_until=record.keep_until)

    def signing_key(self) -> tuple[str, str, Any]:
        """(kid, algorithm, joserfc private key) of the active key."""
        active = self._active
        if active is None or active.private is None:
            raise RuntimeError("no active signing key is loaded: call ensure() first")
        return active.info.kid, active.info.algorithm, active.private

    def _published(self, entry: _Loaded, now: float) -> bool:
        return entry.published_until is None or now < entry.published_until

    def jwks(self) -> dict[str, Any]:
        """The public keys of the next, active and still-published retired keys."""
        now = self._clock().timestamp()
        order = {"next": 0, "active": 1, "retired": 2}
        entries = sorted((e for e in self._keys.values() if self._published(e, now)),
                         key=lambda e: (order[e.info.state], e.info.kid))
        return {"keys": [dict(entry.public_jwk) for entry in entries]}

    def info(self) -> list[SigningKeyInfo]:
        """Every stored key, oldest first (retired ones until they are purged)."""
        return list(self._infos)
