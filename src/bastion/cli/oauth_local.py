"""The `bastion oauth` commands' LOCAL mode: the OAuth store in the identity database named by ``-c``.

Changes are audited as ``cli:<os user>`` like the identity verbs. Running gateways learn of them without
being asked: the tokens of a deleted or disabled client are in the revocation table they poll every second
(and announced through Redis when configured), and a signing-key rotation is announced through Redis and
otherwise picked up by their key reload (every 5 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from bastion.admin import oauth_cutoff
from bastion.admin.oauth_schemas import (
    IssuedOAuthClient,
    OAuthClientOut,
    RotatedClientSecret,
    SigningKeyOut,
    SigningKeyRotation,
)
from bastion.admin.services import signing_key_retention
from bastion.cli.backend import CliError, NotFoundError, Record
from bastion.cli.local_store import LocalBackend, open_local, translated_errors
from bastion.config.loader import load_config
from bastion.config.model import AuthorizationServerConfig
from bastion.oauth.server.keys import SigningKeyError, SigningKeys
from bastion.oauth.server.store import ClientKind

_PAGE = 1000
_CLIENT_FIELDS = frozenset({"name", "grant_types", "scopes", "redirect_uris", "status"})


@contextlib.asynccontextmanager
async def open_local_oauth(config_path: Path) -> AsyncIterator[LocalOAuthBackend]:
    with translated_errors():
        config, _ = load_config(config_path)
    async with open_local(config_path) as local:  # closes ``local.revocations``, which the backend shares
        with translated_errors():
            yield LocalOAuthBackend(local, config.oauth.server, config_path)


class LocalOAuthBackend(LocalBackend):
    def __init__(self, local: LocalBackend, server: AuthorizationServerConfig, config_path: Path) -> None:
        super().__init__(local.service, local.actor, oauth=local.oauth, revocations=local.revocations)
        self._server = server
        self._config_path = config_path

    # -- clients -------------------------------------------------------------------------------------

    async def create_client(self, consumer_id: str, *, name: str, kind: str, grant_types: Sequence[str],
                            scopes: Sequence[str], redirect_uris: Sequence[str]) -> Record:
        client, secret = await self.oauth.create_client(
            consumer_id=consumer_id, name=name, kind=ClientKind(kind), grant_types=grant_types, scopes=scopes,
            redirect_uris=redirect_uris, actor=self.actor)
        return IssuedOAuthClient.issued(client, secret).model_dump(mode="json")

    async def list_clients(self, consumer_id: str | None) -> list[Record]:
        clients = await self.oauth.list_clients(consumer_id, limit=_PAGE)
        return [OAuthClientOut.of(client).model_dump(mode="json") for client in clients]

    async def get_client(self, client_id: str) -> Record:
        client = await self.oauth.get_client(client_id)
        if client is None:
            raise NotFoundError("no such OAuth client")
        return OAuthClientOut.of(client).model_dump(mode="json")

    async def update_client(self, client_id: str, changes: Mapping[str, Any]) -> Record:
        unknown = set(changes) - _CLIENT_FIELDS
        if unknown:  # a programming error, not a user's: the commands build these dicts
            raise ValueError(f"unknown client fields: {sorted(unknown)}")
        client = await self.oauth.update_client(client_id, actor=self.actor, **changes)
        if changes.get("status") == "disabled":
            await oauth_cutoff.cut_off_client(self.oauth, self.revocations, client.client_id)
        return OAuthClientOut.of(client).model_dump(mode="json")

    async def rotate_client_secret(self, client_id: str, overlap_hours: float | None) -> Record:
        overlap = (self.service.settings.rotation_overlap if overlap_hours is None
                   else timedelta(hours=overlap_hours))
        client, secret = await self.oauth.rotate_client_secret(client_id, actor=self.actor, overlap=overlap)
        return RotatedClientSecret.rotated(client, secret).model_dump(mode="json")

    async def delete_client(self, client_id: str) -> None:
        revoked = await self.oauth.delete_client(client_id, actor=self.actor)
        await self.revocations.revoke(revoked)  # recorded by the store already; this tells nodes through Redis

    # -- signing keys --------------------------------------------------------------------------------

    async def _signing_keys(self) -> SigningKeys:
        if not self._server.enabled:
            raise CliError(f"the built-in authorization server is not enabled in {self._config_path} "
                           f"(oauth.server.enabled), so it has no signing keys")
        keys = SigningKeys(self.oauth, self.service.settings.pepper, self._server.signing.algorithm)
        try:
            await keys.ensure()  # as a gateway's first start would (and loads them): the CLI may run before it
        except SigningKeyError as exc:  # names the kid only
            raise CliError(str(exc)) from exc
        return keys

    async def list_signing_keys(self) -> list[Record]:
        keys = await self._signing_keys()
        return [SigningKeyOut.of(info).model_dump(mode="json") for info in keys.info()]

    async def rotate_signing_keys(self, emergency: bool) -> Record:
        keys = await self._signing_keys()
        keep_for = signing_key_retention(timedelta(seconds=self._server.access_token_ttl), emergency=emergency)
        active = await keys.rotate(actor=self.actor, keep_for=keep_for)
        await self.revocations.announce_keys_changed()
        rotation = SigningKeyRotation(active=SigningKeyOut.of(active),
                                      items=[SigningKeyOut.of(info) for info in keys.info()])
        return rotation.model_dump(mode="json")
