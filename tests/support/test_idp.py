"""A small, real identity provider for tests: Starlette served by uvicorn on a loopback socket, in a thread.

It serves RFC 8414 and OpenID Connect discovery, a JWKS with Cache-Control, and an RFC 7662 introspection
endpoint (HTTP Basic client authentication) for the opaque tokens it issued. Tests mint tokens with its
keys (``sign``), rotate keys (``add_key``, ``use_key``, ``retire_key``), make it fail (``down``) or lie
(``discovered_issuer``), and read how often each endpoint was asked (``count``). Nothing here is a mock of
Bastion: the gateway talks to it over real HTTP like it would to Keycloak or Auth0.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.processes import base_config, bind_socket, port_of

Key = ECKey | RSAKey | OKPKey
INTROSPECTION_CLIENT = "bastion-gateway"


def new_key(kind: str, kid: str) -> Key:
    if kind == "ES256":
        return ECKey.generate_key("P-256", parameters={"kid": kid})
    if kind == "ES384":
        return ECKey.generate_key("P-384", parameters={"kid": kid})
    if kind in ("RS256", "PS256"):
        return RSAKey.generate_key(2048, parameters={"kid": kid})
    if kind == "EdDSA":
        return OKPKey.generate_key("Ed25519", parameters={"kid": kid})
    raise ValueError(kind)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Published:
    key: Key
    algorithm: str
    with_alg: bool = True  # publish the JWK's `alg` member

    def jwk(self) -> dict[str, Any]:
        data = dict(self.key.as_dict(private=False))
        data["use"] = "sig"
        if self.with_alg:
            data["alg"] = self.algorithm
        return data


@dataclass
class OpaqueToken:
    claims: dict[str, Any]
    active: bool = True


@dataclass
class _State:
    keys: dict[str, Published] = field(default_factory=dict)
    signing_kid: str = ""
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)  # raw entries (attacks, odd keys)
    opaque: dict[str, OpaqueToken] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    down: bool = False
    jwks_max_age: int | None = 300
    discovered_issuer: str | None = None  # lie about the issuer in discovery
    rfc8414: bool = True  # serve /.well-known/oauth-authorization-server
    redirect_jwks: str | None = None  # answer the JWKS with a redirect there


class TestIdP:
    """Start with ``TestIdP()`` (it listens at once); ``stop()`` when done."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, algorithm: str = "ES256", path: str = "", audience: str = "shop-api",
                 client_secret: str | None = None) -> None:
        self.lock = threading.Lock()
        self.state = _State()
        self.path = path
        self.audience = audience
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self._sock = bind_socket()
        self.port = port_of(self._sock)
        self.origin = f"http://127.0.0.1:{self.port}"
        self.issuer = self.origin + path
        self.add_key(algorithm, kid="key-1")
        self.use_key("key-1")
        app = Starlette(routes=[
            Route(f"/.well-known/oauth-authorization-server{path}", self._rfc8414),
            Route(f"{path}/.well-known/openid-configuration", self._oidc),
            Route(f"{path}/jwks", self._jwks),
            Route(f"{path}/introspect", self._introspect, methods=["POST"]),
        ])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test IdP did not start")
            time.sleep(0.01)

    # -- control -----------------------------------------------------------------------------------
    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer}/introspect"

    def add_key(self, algorithm: str, kid: str | None = None, *, with_alg: bool = True) -> str:
        kid = kid or f"key-{uuid.uuid4().hex[:8]}"
        with self.lock:
            self.state.keys[kid] = Published(new_key(algorithm, kid), algorithm, with_alg)
        return kid

    def use_key(self, kid: str) -> None:
        with self.lock:
            self.state.signing_kid = kid

    def retire_key(self, kid: str) -> None:
        with self.lock:
            del self.state.keys[kid]

    def key(self, kid: str | None = None) -> Published:
        with self.lock:
            return self.state.keys[kid or self.state.signing_kid]

    def set(self, **changes: Any) -> None:
        with self.lock:
            for name, value in changes.items():
                setattr(self.state, name, value)

    def count(self, endpoint: str) -> int:
        """Requests so far to `jwks`, `introspect`, `rfc8414` or `oidc`."""
        with self.lock:
            return self.state.counts[endpoint]

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    # -- tokens ------------------------------------------------------------------------------------
    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "sub": "user-1", "client_id": "app-1",
                                  "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex, "scope": "users:read"}
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(self, claims: dict[str, Any] | None = None, *, header: dict[str, Any] | None = None,
             kid: str | None = None, algorithm: str | None = None, **overrides: Any) -> str:
        """A token signed with one of the IdP's keys (the current one unless ``kid``), typ at+jwt."""
        published = self.key(kid)
        protected: dict[str, Any] = {"alg": algorithm or published.algorithm, "kid": published.key.kid,
                                     "typ": "at+jwt"}
        for name, value in (header or {}).items():
            if value is None:
                protected.pop(name, None)
            else:
                protected[name] = value
        payload = claims if claims is not None else self.claims(**overrides)
        return jws.serialize_compact(protected, _json(payload), published.key, algorithms=[protected["alg"]])

    def issue_opaque(self, **overrides: Any) -> str:
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.state.opaque[token] = OpaqueToken(self.claims(**overrides))
        return token

    def revoke_opaque(self, token: str) -> None:
        with self.lock:
            self.state.opaque[token].active = False

    # -- endpoints ---------------------------------------------------------------------------------
    def _unavailable(self, endpoint: str) -> Response | None:
        with self.lock:
            self.state.counts[endpoint] += 1
            down = self.state.down
        return Response(status_code=503) if down else None

    def _metadata(self) -> dict[str, Any]:
        with self.lock:
            issuer = self.state.discovered_issuer or self.issuer
        return {"issuer": issuer, "jwks_uri": self.jwks_uri, "introspection_endpoint": self.introspection_endpoint,
                "token_endpoint": f"{self.issuer}/token", "response_types_supported": ["code"]}

    async def _rfc8414(self, request: Request) -> Response:
        failed = self._unavailable("rfc8414")
        if failed is not None:
            return failed
        with self.lock:
            served = self.state.rfc8414
        return JSONResponse(self._metadata()) if served else JSONResponse({"error": "not_found"}, 404)

    async def _oidc(self, request: Request) -> Response:
        return self._unavailable("oidc") or JSONResponse(self._metadata())

    async def _jwks(self, request: Request) -> Response:
        failed = self._unavailable("jwks")
        if failed is not None:
            return failed
        with self.lock:
            keys = [p.jwk() for p in self.state.keys.values()] + list(self.state.extra_jwks)
            max_age = self.state.jwks_max_age
            redirect = self.state.redirect_jwks
        if redirect:
            return Response(status_code=302, headers={"location": redirect})
        headers = {"cache-control": f"public, max-age={max_age}"} if max_age is not None else {}
        return JSONResponse({"keys": keys}, headers=headers)

    async def _introspect(self, request: Request) -> Response:
        failed = self._unavailable("introspect")
        if failed is not None:
            return failed
        if not self._client_authenticated(request.headers.get("authorization", "")):
            return JSONResponse({"error": "invalid_client"}, 401, headers={"www-authenticate": "Basic"})
        form = parse_qs((await request.body()).decode("latin-1"))  # python-multipart is not installed
        token = form.get("token", [None])[0]
        with self.lock:
            found = self.state.opaque.get(token) if isinstance(token, str) else None
            answer = {"active": True, **found.claims} if found is not None and found.active else {"active": False}
        return JSONResponse(answer)

    def _client_authenticated(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return user == INTROSPECTION_CLIENT and hmac.compare_digest(password, self.client_secret)


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def oauth_gateway_config(upstream_url: str, idp: TestIdP, *, issuer: dict[str, Any] | None = None,
                         policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """The demo API with `oauth2` on v1 (OpenAPI scopes are the permissions: users:read, users:write, ...),
    trusting the test IdP as issuer `idp`; v2 stays public."""
    config = base_config(upstream_url)
    entry: dict[str, Any] = {"name": "idp", "issuer": idp.issuer, "audiences": [idp.audience],
                             "algorithms": ["ES256", "ES384", "RS256", "PS256"], "jwks_uri": idp.jwks_uri,
                             "require_typ": "at+jwt"}
    entry.update(issuer or {})
    config["oauth"] = {"issuers": [entry]}
    v1 = config["apis"][0]
    v1["public"] = False
    v1["policies"] = {"oauth2": policy or {}}
    for route in v1["routes"]:
        if route["name"] == "echo":
            route["permissions"] = ["echo:use"]
    return config
