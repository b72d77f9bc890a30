"""PKCE (RFC 7636), S256 only, required for every client (OAuth 2.1, RFC 9700 section 2.1.1).

``plain`` is refused: it protects nothing once the authorization request is observed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from base64 import urlsafe_b64encode

METHOD = "S256"
# code-verifier = 43*128unreserved, unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
# BASE64URL(SHA256(verifier)) without padding: always 43 characters.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


def valid_verifier(verifier: str) -> bool:
    return _VERIFIER.fullmatch(verifier) is not None


def valid_challenge(challenge: str) -> bool:
    return _CHALLENGE.fullmatch(challenge) is not None


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Constant time; a malformed verifier never matches."""
    if not valid_verifier(verifier):
        return False
    return hmac.compare_digest(s256(verifier), challenge)
