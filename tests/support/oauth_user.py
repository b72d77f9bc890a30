"""TEST-ONLY sign-in step for the authorization endpoint: never shipped in ``src/``.

Tests play the user agent of the authorization-code flow with it. A user is "signed in" when the request
carries an HMAC-SHA256-signed assertion (header ``X-Test-User`` or cookie ``bst_test_user``) made with the
secret in the environment variable ``BASTION_TEST_SIGN_IN_SECRET``. Without that variable every request is
refused (403), so configuring this step by mistake signs nobody in.

The gateway process loads it with ``oauth.server.user_authentication: "tests.support.oauth_user:sign_in"``;
the test puts the repository on ``PYTHONPATH`` and sets the secret in the gateway's environment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode

from starlette.requests import Request
from starlette.responses import Response

from bastion.oauth.server.steps import SignedInUser

SECRET_ENV = "BASTION_TEST_SIGN_IN_SECRET"
HEADER = "x-test-user"
COOKIE = "bst_test_user"
_MAX_ASSERTION = 1024


def _mac(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def user_assertion(subject: str, secret: str, *, lifetime: float = 300.0) -> str:
    """What a test sends as ``X-Test-User`` (or the ``bst_test_user`` cookie) to be ``subject``."""
    payload = f"{subject}|{int(time.time() + lifetime)}".encode()
    return urlsafe_b64encode(payload).decode().rstrip("=") + "." + _mac(secret, payload)


def _subject(assertion: str, secret: str) -> str | None:
    if len(assertion) > _MAX_ASSERTION or assertion.count(".") != 1:
        return None
    encoded, mac = assertion.split(".")
    try:
        payload = urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        return None
    if not hmac.compare_digest(_mac(secret, payload), mac):
        return None
    subject, _, expires = payload.decode(errors="replace").rpartition("|")
    if not subject or not expires.isdigit() or int(expires) < time.time():
        return None
    return subject


class HmacTestSignIn:
    async def authenticate(self, request: Request) -> SignedInUser | Response:
        secret = os.environ.get(SECRET_ENV)
        if not secret:
            return Response("test sign-in is disabled", status_code=403, media_type="text/plain",
                            headers={"cache-control": "no-store"})
        assertion = request.headers.get(HEADER) or request.cookies.get(COOKIE)
        subject = _subject(assertion, secret) if assertion else None
        if subject is None:
            # Where a real step would show its sign-in page.
            return Response("sign in required", status_code=401, media_type="text/plain",
                            headers={"cache-control": "no-store"})
        return SignedInUser(subject, authenticated_at=time.time())


sign_in = HmacTestSignIn()
