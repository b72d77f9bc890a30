"""The API key format: ``bst_<level letter>_<12-char id><27-char secret><6-char checksum>``, all base62.

The checksum is a CRC32 of everything before it (as GitHub's tokens carry one), so a mistyped or truncated
key is refused without touching a store, and secret scanners can recognise a leaked key with no false
positives. The key id is not secret: it is the lookup key and what logs and the console show. Only an
HMAC-SHA-256 of the whole key under a server-side pepper is ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from dataclasses import dataclass, field
from enum import StrEnum

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIX = "bst_"
KEY_ID_LENGTH = 12
SECRET_LENGTH = 27  # 27 * log2(62) = 160.8 bits
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: any CRC32 fits
BODY_LENGTH = KEY_ID_LENGTH + SECRET_LENGTH + CHECKSUM_LENGTH
HEAD_LENGTH = len(PREFIX) + 2  # "bst_w_"
KEY_LENGTH = HEAD_LENGTH + BODY_LENGTH
DISPLAY_PREFIX_LENGTH = HEAD_LENGTH + KEY_ID_LENGTH
MIN_PEPPER_BYTES = 32


class KeyLevel(StrEnum):
    """What a key may do at most; the consumer's permissions and the key's scopes narrow it further."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @property
    def letter(self) -> str:
        return _LEVEL_TO_LETTER[self]

    @classmethod
    def from_letter(cls, letter: str) -> KeyLevel | None:
        return _LETTER_TO_LEVEL.get(letter)


_LEVEL_TO_LETTER = {KeyLevel.READ: "r", KeyLevel.WRITE: "w", KeyLevel.ADMIN: "a"}
_LETTER_TO_LEVEL = {letter: level for level, letter in _LEVEL_TO_LETTER.items()}


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A new key. ``plaintext`` is shown to its owner once and never stored."""

    plaintext: str = field(repr=False)
    key_id: str
    level: KeyLevel

    @property
    def display_prefix(self) -> str:
        return self.plaintext[:DISPLAY_PREFIX_LENGTH]


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A well-formed key (checksum correct); whether it exists and is valid is the store's business."""

    plaintext: str = field(repr=False)
    key_id: str
    level: KeyLevel


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _encode_checksum(value: int) -> str:
    chars = []
    for _ in range(CHECKSUM_LENGTH):
        value, digit = divmod(value, 62)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(head_and_payload: str) -> str:
    return _encode_checksum(zlib.crc32(head_and_payload.encode("ascii")))


def generate_key(level: KeyLevel) -> GeneratedKey:
    level = KeyLevel(level)
    key_id = _random_base62(KEY_ID_LENGTH)
    unchecked = f"{PREFIX}{level.letter}_{key_id}{_random_base62(SECRET_LENGTH)}"
    return GeneratedKey(plaintext=unchecked + _checksum(unchecked), key_id=key_id, level=level)


def parse_key(text: str) -> ParsedKey | None:
    """The key's parts, or None when ``text`` is not a well-formed key. Cheap: no regex, no allocation
    before the length check, so it can run on every request before any lookup."""
    if not isinstance(text, str) or len(text) != KEY_LENGTH or not text.startswith(PREFIX):
        return None
    level = _LETTER_TO_LEVEL.get(text[len(PREFIX)])
    if level is None or text[HEAD_LENGTH - 1] != "_":
        return None
    body = text[HEAD_LENGTH:]
    # For ASCII strings isalnum() is exactly [0-9A-Za-z]: the base62 alphabet.
    if not (body.isascii() and body.isalnum()):
        return None
    if _checksum(text[:-CHECKSUM_LENGTH]) != text[-CHECKSUM_LENGTH:]:  # the checksum is not secret
        return None
    return ParsedKey(plaintext=text, key_id=body[:KEY_ID_LENGTH], level=level)


def display_prefix(key_id: str, level: KeyLevel) -> str:
    """``bst_w_<key id>``: what the console and logs show for a key."""
    return f"{PREFIX}{KeyLevel(level).letter}_{key_id}"


def redact(plaintext: str) -> str:
    """``bst_w_<key id>…`` for a key-shaped string; anything else is hidden whole, since it may be a
    credential of another kind."""
    head = plaintext[:DISPLAY_PREFIX_LENGTH] if isinstance(plaintext, str) else ""
    if (
        len(head) == DISPLAY_PREFIX_LENGTH
        and head.startswith(PREFIX)
        and head[len(PREFIX)] in _LETTER_TO_LEVEL
        and head[HEAD_LENGTH - 1] == "_"
        and head[HEAD_LENGTH:].isascii()
        and head[HEAD_LENGTH:].isalnum()
    ):
        return head + "…"
    return "[REDACTED]"


class KeyHasher:
    """HMAC-SHA-256 under a server-side pepper: a stolen database alone cannot be used to test guesses,
    and at ~2 us it is cheap enough for every request (a slow KDF is unnecessary for 160-bit secrets)."""

    __slots__ = ("_pepper",)

    def __init__(self, pepper: bytes) -> None:
        if not isinstance(pepper, bytes | bytearray) or len(pepper) < MIN_PEPPER_BYTES:
            raise ValueError(f"the API key pepper must be at least {MIN_PEPPER_BYTES} bytes")
        self._pepper = bytes(pepper)

    def __repr__(self) -> str:
        return "KeyHasher(pepper=[REDACTED])"

    def digest(self, plaintext: str) -> bytes:
        return hmac.digest(self._pepper, plaintext.encode("utf-8"), hashlib.sha256)

    def verify(self, plaintext: str, digest: bytes) -> bool:
        """Constant-time comparison with a stored digest."""
        return hmac.compare_digest(self.digest(plaintext), digest)
