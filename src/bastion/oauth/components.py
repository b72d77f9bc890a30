"""The OAuth parts of one gateway process, built and started together by the runtime.

Always present: the resource server (the `oauth2` policy's token validator) and the OAuth store (clients
can be registered before the authorization server is switched on). With `oauth.server.enabled`: the signing
keys, the revocation list every node keeps current, and the authorization server's endpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.config.model import AuthorizationServerConfig, GatewayConfig, TrustedIssuerConfig
from bastion.identity.service import IdentityService, IdentitySetupError
from bastion.oauth.contracts import IssuerRuntime
from bastion.oauth.resource import OAuthResourceServer
from bastion.oauth.revocation import RevocationList
from bastion.oauth.server.keys import ALGORITHMS as SIGNING_ALGORITHMS
from bastion.oauth.server.keys import SigningKeyError, SigningKeys
from bastion.oauth.server.service import AuthorizationServer
from bastion.oauth.server.steps import SignInStepError, load_sign_in_step
from bastion.oauth.server.store import OAuthStore
from bastion.ratelimit.store import CounterStore
from bastion.server.asgi import AsgiHandler
from bastion.server.http1 import Exchange
from bastion.storage.identity_store import StoreUnavailable

log = logging.getLogger("bastion.oauth")

_MAX_FORM_BYTES = 64 * 1024  # OAuth requests are small forms

BUILTIN_ISSUER = "bastion"


class OAuthComponents:
    def __init__(self, identity: IdentityService, counters: CounterStore, docs_base: Callable[[], str],
                 base_dir: Path) -> None:
        self._identity = identity
        self._counters = counters
        self._docs_base = docs_base
        self.store = OAuthStore(identity.store.engine, identity.hasher)
        self.revocations = RevocationList(self.store, redis_url=identity.settings.redis_url,
                                          on_keys_changed=self._reload_keys)
        self.resource = OAuthResourceServer(wall_clock=time.time, monotonic=time.monotonic, base_dir=base_dir)
        self.keys: SigningKeys | None = None
        self.server: AuthorizationServer | None = None
        self._opened: AuthorizationServerConfig | None = None  # as the server was started

    async def open(self, config: GatewayConfig) -> None:
        """Before the first compile: keys, revocations and issuers are ready when policies are built."""
        try:
            await self._open(config)
        except (SigningKeyError, SignInStepError) as exc:
            raise IdentitySetupError(str(exc)) from exc
        except StoreUnavailable as exc:
            raise IdentitySetupError("the OAuth tables cannot be read (is the store migrated?)") from exc

    async def _open(self, config: GatewayConfig) -> None:
        server = config.oauth.server
        self._opened = server
        if server.enabled:
            self.keys = SigningKeys(self.store, self._identity.settings.pepper, server.signing.algorithm)
            await self.keys.ensure()
            await self.keys.load()
            await self.revocations.load()
            sign_in = load_sign_in_step(server.user_authentication) if server.user_authentication else None
            self.server = AuthorizationServer(server, store=self.store, keys=self.keys,
                                              revocations=self.revocations, counters=self._counters,
                                              sign_in=sign_in, docs_base=self._docs_base)
        await self.resource.configure(config.oauth, self._builtin_issuer())

    def _builtin_issuer(self) -> IssuerRuntime | None:
        server = self._opened
        if self.keys is None or server is None or server.issuer is None:
            return None
        # Every algorithm the server can sign with: a key is bound to its own algorithm, and after a change of
        # `signing.algorithm` the active key keeps the old one until the next rotation.
        issuer = TrustedIssuerConfig(name=BUILTIN_ISSUER, issuer=server.issuer, audiences=[server.audience],
                                     algorithms=list(SIGNING_ALGORITHMS), require_typ="at+jwt")
        return IssuerRuntime(config=issuer, keys=self.keys.keyset, revocations=self.revocations)

    async def _reload_keys(self) -> None:
        if self.keys is not None:
            await self.keys.load()

    def extras(self) -> dict[str, Any]:
        return {"oauth_validator": self.resource.validator}

    def mounts(self, server_address: tuple[str, int],
               finished: Callable[[Exchange], None]) -> list[tuple[str, str, AsgiHandler]]:
        """The endpoints to serve on the gateway listeners (none without the authorization server)."""
        if self.server is None:
            return []
        handler = AsgiHandler(self.server.app, max_body_bytes=_MAX_FORM_BYTES, server=server_address,
                              finished=finished)
        return [(path, "oauth2", handler) for path in AuthorizationServer.MOUNTS]

    def shadowed(self, templates: list[str]) -> list[str]:
        """Route templates that the authorization server's paths would hide."""
        if self.server is None:
            return []
        mounts = AuthorizationServer.MOUNTS
        return [t for t in templates
                if any(t == m or (m.endswith("/") and (t.startswith(m) or t == m[:-1])) for m in mounts)]

    async def reconfigure(self, config: GatewayConfig) -> None:
        """A reload: issuers may change now; switching the authorization server on or off needs a restart."""
        server = config.oauth.server
        opened = self._opened
        fixed = ("enabled", "issuer", "audience", "signing", "user_authentication")
        if opened is not None and any(getattr(server, f) != getattr(opened, f) for f in fixed):
            log.warning("oauth.server %s changes take effect at the next restart", "/".join(fixed))
        elif self.server is not None:
            self.server.update_config(server)
        await self.resource.configure(config.oauth, self._builtin_issuer())

    def start(self) -> None:
        if self.server is not None:
            self.revocations.start()

    async def close(self) -> None:
        await self.resource.close()
        await self.revocations.close()
