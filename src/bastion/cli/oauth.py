"""`bastion oauth clients | keys | rotate-key`: the built-in authorization server's clients and signing keys.

Same two modes as the identity verbs (``-c`` for the local store, ``--admin-url`` for a running gateway) and
the same output rules: ``--json`` prints only JSON; a client secret is printed once, by the command that
made it, and never logged.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import click

from bastion.cli.backend import NotFoundError, OAuthBackend, Record
from bastion.cli.identity import Connection, connection_options
from bastion.cli.output import emit_json, guarded, print_details, print_table, setup_cli_logging, short_time, warn

_KINDS = ("confidential", "public")
_GRANTS = ("client_credentials", "authorization_code", "refresh_token")

OAuthAction = Callable[[OAuthBackend], Awaitable[int | None]]


async def _with_backend(connection: Connection, action: OAuthAction) -> int:
    if connection.admin_url is not None and connection.admin_key is not None:
        from bastion.cli.admin_client import RemoteOAuthBackend

        remote = RemoteOAuthBackend(connection.admin_url, connection.admin_key)
        try:
            return await action(remote) or 0
        finally:
            await remote.close()
    from bastion.cli.oauth_local import open_local_oauth

    async with open_local_oauth(connection.config_path) as local:
        return await action(local) or 0


def _run(connection: Connection, action: OAuthAction) -> NoReturn:
    setup_cli_logging()
    sys.exit(guarded(lambda: asyncio.run(_with_backend(connection, action))))


# -- output -------------------------------------------------------------------------------------------------


def _show_client(client: Record, consumer_name: str | None = None) -> None:
    consumer = client.get("consumer_id")
    print_details([
        ("client id", client.get("client_id")), ("name", client.get("name")), ("kind", client.get("kind")),
        ("status", client.get("status")),
        ("consumer", f"{consumer_name} ({consumer})" if consumer_name else consumer),
        ("grant types", client.get("grant_types")), ("scopes", client.get("scopes")),
        ("redirect URIs", client.get("redirect_uris")), ("created", short_time(client.get("created_at"))),
        ("updated", short_time(client.get("updated_at"))),
        ("secret rotated", short_time(client.get("secret_rotated_at"))),
        ("old secret until", short_time(client.get("previous_secret_expires_at"))),
    ])


def _print_secret(secret: str) -> None:
    """The secret alone on its line, so it is easy to copy, and the warning that it is shown once."""
    click.echo(secret)
    warn("this is the only time the client secret is shown: store it now (e.g. in a secret manager); only a "
         "keyed hash of it is kept")


async def _consumer_name(backend: OAuthBackend, consumer_id: Any) -> str | None:
    try:
        name = (await backend.find_consumer(str(consumer_id))).get("name")
    except NotFoundError:
        return None
    return None if name is None else str(name)


# -- clients ------------------------------------------------------------------------------------------------


@click.group("oauth")
def oauth() -> None:
    """The built-in OAuth authorization server: clients and signing keys."""


@oauth.group("clients")
def clients() -> None:
    """OAuth clients: applications of a consumer that obtain access tokens."""


@clients.command("create")
@click.option("--consumer", "consumer_ref", required=True, metavar="NAME_OR_ID", help="The client's owner: its "
              "tokens never carry more than this consumer's permissions.")
@click.option("--name", required=True, help="A label for people.")
@click.option("--kind", type=click.Choice(_KINDS), required=True, help="confidential (has a secret) or public "
              "(an app that cannot keep one: PKCE only).")
@click.option("--grant", "grant_types", type=click.Choice(_GRANTS), multiple=True, required=True,
              help="Grant type the client may use (repeatable).")
@click.option("--scope", "scopes", multiple=True, help="Scope the client may be granted at most (repeatable).")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Exact redirect URI for the authorization "
              "code grant (repeatable).")
@connection_options
def clients_create(connection: Connection, consumer_ref: str, name: str, kind: str, grant_types: tuple[str, ...],
                   scopes: tuple[str, ...], redirect_uris: tuple[str, ...]) -> None:
    """Register a client; a confidential client's secret is printed once."""

    async def go(backend: OAuthBackend) -> None:
        consumer = await backend.find_consumer(consumer_ref)
        client = await backend.create_client(consumer["id"], name=name, kind=kind, grant_types=grant_types,
                                             scopes=scopes, redirect_uris=redirect_uris)
        if connection.as_json:
            emit_json(client)
            return
        secret = client.get("client_secret")
        click.echo(f"Created {client.get('kind')} OAuth client {client.get('name')!r} ({client.get('client_id')}) "
                   f"for {consumer.get('name')!r}" + (":" if secret else " (no secret: it proves itself with PKCE)."))
        if isinstance(secret, str):
            _print_secret(secret)

    _run(connection, go)


@clients.command("list")
@click.option("--consumer", "consumer_ref", metavar="NAME_OR_ID", help="Only this consumer's clients.")
@connection_options
def clients_list(connection: Connection, consumer_ref: str | None) -> None:
    """List OAuth clients."""

    async def go(backend: OAuthBackend) -> None:
        consumer = await backend.find_consumer(consumer_ref) if consumer_ref is not None else None
        records = await backend.list_clients(consumer["id"] if consumer else None)
        if connection.as_json:
            emit_json(records)
            return
        if not records:
            click.echo("no OAuth clients")
            return
        names = ({consumer["id"]: consumer.get("name")} if consumer
                 else {c["id"]: c.get("name") for c in await backend.list_consumers()})
        print_table(["CLIENT ID", "NAME", "KIND", "CONSUMER", "STATUS", "GRANT TYPES", "SCOPES"],
                    [[c.get("client_id"), c.get("name"), c.get("kind"),
                      names.get(c.get("consumer_id"), c.get("consumer_id")), c.get("status"),
                      c.get("grant_types"), c.get("scopes")] for c in records])

    _run(connection, go)


@clients.command("show")
@click.argument("client_id")
@connection_options
def clients_show(connection: Connection, client_id: str) -> None:
    """Show one client (never its secret: it is not stored)."""

    async def go(backend: OAuthBackend) -> None:
        client = await backend.get_client(client_id)
        if connection.as_json:
            emit_json(client)
        else:
            _show_client(client, await _consumer_name(backend, client.get("consumer_id")))

    _run(connection, go)


@clients.command("update")
@click.argument("client_id")
@click.option("--name", help="New name.")
@click.option("--grant", "grant_types", type=click.Choice(_GRANTS), multiple=True,
              help="Replace the grant types with these (repeatable).")
@click.option("--scope", "scopes", multiple=True, help="Replace the scopes with these (repeatable).")
@click.option("--no-scopes", is_flag=True, help="Take every scope away.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Replace the redirect URIs (repeatable).")
@click.option("--no-redirect-uris", is_flag=True, help="Remove every redirect URI.")
@click.option("--enable/--disable", "enable", default=None,
              help="Enable or disable the client (disabling revokes its tokens).")
@connection_options
def clients_update(connection: Connection, client_id: str, name: str | None, grant_types: tuple[str, ...],
                   scopes: tuple[str, ...], no_scopes: bool, redirect_uris: tuple[str, ...], no_redirect_uris: bool,
                   enable: bool | None) -> None:
    """Change a client; options not given keep their values (lists are replaced, not merged)."""
    for given, clear, what in ((scopes, no_scopes, "--scope"), (redirect_uris, no_redirect_uris, "--redirect-uri")):
        if given and clear:
            raise click.UsageError(f"{what} and its --no-* option contradict each other")
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if grant_types:
        changes["grant_types"] = list(grant_types)
    if scopes or no_scopes:
        changes["scopes"] = list(scopes)
    if redirect_uris or no_redirect_uris:
        changes["redirect_uris"] = list(redirect_uris)
    if enable is not None:
        changes["status"] = "active" if enable else "disabled"
    if not changes:
        raise click.UsageError("nothing to change: give at least one option (see --help)")

    async def go(backend: OAuthBackend) -> None:
        client = await backend.update_client(client_id, changes)
        if connection.as_json:
            emit_json(client)
        else:
            click.echo(f"Updated OAuth client {client.get('name')!r}.")
            _show_client(client, await _consumer_name(backend, client.get("consumer_id")))

    _run(connection, go)


@clients.command("rotate-secret")
@click.argument("client_id")
@click.option("--overlap-hours", type=click.FloatRange(min=0), help="How long the old secret keeps working "
              "(default keys.rotation_overlap_hours).")
@connection_options
def clients_rotate_secret(connection: Connection, client_id: str, overlap_hours: float | None) -> None:
    """Issue a new client secret, printed once; the old one keeps working for the overlap."""

    async def go(backend: OAuthBackend) -> None:
        client = await backend.rotate_client_secret(client_id, overlap_hours)
        if connection.as_json:
            emit_json(client)
            return
        click.echo(f"Rotated the secret of {client.get('name')!r} ({client.get('client_id')}); the old one works "
                   f"until {short_time(client.get('previous_secret_expires_at'))}. The new secret:")
        _print_secret(str(client["client_secret"]))

    _run(connection, go)


@clients.command("delete")
@click.argument("client_id")
@connection_options
def clients_delete(connection: Connection, client_id: str) -> None:
    """Delete a client and revoke its tokens (gateways refuse them at once with Redis, within 1 s without)."""

    async def go(backend: OAuthBackend) -> None:
        client = await backend.get_client(client_id)
        await backend.delete_client(client_id)
        if connection.as_json:
            emit_json(client)
        else:
            click.echo(f"Deleted OAuth client {client.get('name')!r} ({client_id}) and revoked its tokens.")

    _run(connection, go)


# -- signing keys -------------------------------------------------------------------------------------------


def _key_rows(keys: Sequence[Record]) -> list[list[Any]]:
    return [[k.get("kid"), k.get("alg"), k.get("state"), short_time(k.get("created_at")),
             short_time(k.get("activated_at")), short_time(k.get("retired_at")), short_time(k.get("keep_until"))]
            for k in keys]


_KEY_HEADERS = ("KID", "ALG", "STATE", "CREATED", "ACTIVATED", "RETIRED", "PUBLISHED UNTIL")


@oauth.command("keys")
@connection_options
def keys(connection: Connection) -> None:
    """List the signing keys (their public facts; private keys never leave the store)."""

    async def go(backend: OAuthBackend) -> None:
        records = await backend.list_signing_keys()
        if connection.as_json:
            emit_json(records)
        elif not records:
            click.echo("no signing keys")
        else:
            print_table(_KEY_HEADERS, _key_rows(records))

    _run(connection, go)


@oauth.command("rotate-key")
@click.option("--emergency", is_flag=True, help="The active key is compromised: every token it signed is "
              "refused at once, on every node (clients must get new access tokens).")
@connection_options
def rotate_key(connection: Connection, emergency: bool) -> None:
    """Rotate the signing keys: the published next key signs from now on; the old one stays published
    until every token it signed has expired; a new next key is published."""

    async def go(backend: OAuthBackend) -> None:
        rotation = await backend.rotate_signing_keys(emergency)
        if connection.as_json:
            emit_json(rotation)
            return
        active = rotation.get("active") or {}
        click.echo(f"Rotated the signing keys: {active.get('kid')} signs from now on (running gateways switch "
                   f"within seconds).")
        if emergency:
            click.echo("The previous key is withdrawn: every token it signed is refused from now on.")
        print_table(_KEY_HEADERS, _key_rows(rotation.get("items") or []))

    _run(connection, go)


def register(group: click.Group) -> None:
    group.add_command(oauth)
