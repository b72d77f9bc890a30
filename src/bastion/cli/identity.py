"""`bastion init | migrate | consumers | roles | keys | audit-log`: identities from the command line.

Every verb but ``init`` and ``migrate`` runs in one of two modes: LOCAL (default) opens the store named by
the gateway configuration (``-c``); REMOTE (``--admin-url``) calls a running gateway's admin API with an
admin key from ``BASTION_ADMIN_KEY`` or ``--admin-key-file``. ``--json`` prints only JSON on stdout.
Exit codes: 0 success, 1 refused or failed, 2 usage or configuration error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from bastion.cli.backend import Backend, CliError, NotFoundError, Record, key_state
from bastion.cli.output import (
    display_text,
    emit_json,
    guarded,
    print_details,
    print_table,
    setup_cli_logging,
    short_time,
    warn,
)

ADMIN_KEY_ENV = "BASTION_ADMIN_KEY"
_ADMIN_ROLES = ("admin", "operator", "auditor")
_LEVELS = ("read", "write", "admin")

Action = Callable[[Backend], Awaitable[int | None]]


# -- connection: local store or admin API -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connection:
    config_path: Path
    admin_url: str | None
    admin_key: str | None
    as_json: bool


def _read_key_file(path: str) -> str:
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            key = handle.read(4096).strip()
    except OSError as exc:
        raise CliError(f"cannot read the admin key file {path}: {exc.strerror}", 2) from None
    except UnicodeDecodeError:
        raise CliError(f"the admin key file {path} is not text", 2) from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"{path} is readable by other users; `chmod 600 {path}`")
    return key


def _connection(config_path: str, admin_url: str | None, admin_key: str | None, admin_key_file: str | None,
                as_json: bool) -> Connection:
    context = click.get_current_context()
    explicit_config = context.get_parameter_source("config_path") is click.core.ParameterSource.COMMANDLINE
    if admin_url is None:
        if admin_key is not None or admin_key_file is not None:
            raise CliError("--admin-key and --admin-key-file need --admin-url (remote mode)", 2)
        return Connection(Path(config_path), None, None, as_json)
    if explicit_config:
        raise CliError("give either -c/--config (local mode) or --admin-url (remote mode), not both", 2)
    if admin_key is not None and admin_key_file is not None:
        raise CliError("give either --admin-key or --admin-key-file, not both", 2)
    if admin_key is not None:
        warn(f"a key on the command line may end up in your shell history and the process list; prefer "
             f"{ADMIN_KEY_ENV} or --admin-key-file")
        key = admin_key.strip()
    elif admin_key_file is not None:
        key = _read_key_file(admin_key_file)
    else:
        key = os.environ.get(ADMIN_KEY_ENV, "").strip()
        if not key:
            raise CliError(f"remote mode needs an admin key: set {ADMIN_KEY_ENV} or pass --admin-key-file", 2)
    from bastion.cli.admin_client import check_admin_url, is_loopback
    from bastion.identity.keys import parse_key

    if parse_key(key) is None:
        raise CliError("the admin key is not a well-formed Bastion API key", 2)
    url = check_admin_url(admin_url)
    if url.startswith("http:") and not is_loopback(url):
        warn("the admin key is sent in clear text over plain HTTP to a non-loopback address")
    return Connection(Path(config_path), url, key, as_json)


def _config_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default="bastion.yaml",
                        show_default=True, help="Gateway configuration naming the identity store (local mode).")(func)


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")(func)


def connection_options(func: Callable[..., None]) -> Callable[..., None]:
    """Adds -c/--admin-url/--admin-key/--admin-key-file/--json and passes a Connection first."""

    @functools.wraps(func)
    def wrapper(*args: Any, config_path: str, admin_url: str | None, admin_key: str | None,
                admin_key_file: str | None, as_json: bool, **kwargs: Any) -> None:
        connection = guarded(lambda: _connection(config_path, admin_url, admin_key, admin_key_file, as_json))
        func(connection, *args, **kwargs)

    decorated: Callable[..., None] = wrapper
    for option in (
        _json_option,
        click.option("--admin-key-file", type=click.Path(dir_okay=False),
                     help="File holding the admin key (remote mode)."),
        click.option("--admin-key", help=f"The admin key itself: discouraged (shell history, process list); prefer "
                     f"{ADMIN_KEY_ENV} or --admin-key-file."),
        click.option("--admin-url", help="Admin API of a running gateway, e.g. http://127.0.0.1:9090 (remote mode; "
                     f"the key comes from {ADMIN_KEY_ENV} or --admin-key-file)."),
        _config_option,
    ):
        decorated = option(decorated)
    return decorated


# -- running an action --------------------------------------------------------------------------------------


async def _with_backend(connection: Connection, action: Action) -> int:
    if connection.admin_url is not None and connection.admin_key is not None:
        from bastion.cli.admin_client import RemoteBackend

        remote = RemoteBackend(connection.admin_url, connection.admin_key)
        try:
            return await action(remote) or 0
        finally:
            await remote.close()
    from bastion.cli.local_store import open_local

    async with open_local(connection.config_path) as local:
        return await action(local) or 0


def _run(connection: Connection, action: Action) -> NoReturn:
    setup_cli_logging()
    sys.exit(guarded(lambda: asyncio.run(_with_backend(connection, action))))


# -- output -------------------------------------------------------------------------------------------------


def _show_consumer(consumer: Record) -> None:
    print_details([
        ("name", consumer.get("name")), ("id", consumer.get("id")), ("status", consumer.get("status")),
        ("roles", consumer.get("roles")), ("admin role", consumer.get("admin_role")),
        ("plan", consumer.get("plan")), ("allowed CIDRs", consumer.get("allowed_cidrs")),
        ("metadata", consumer.get("metadata")), ("created", short_time(consumer.get("created_at"))),
        ("updated", short_time(consumer.get("updated_at"))),
    ])


def _show_key(key: Record, consumer_name: str | None = None) -> None:
    consumer = key.get("consumer_id")
    print_details([
        ("key id", key.get("key_id")), ("prefix", key.get("display_prefix")), ("level", key.get("level")),
        ("state", key_state(key, datetime.now(UTC))),
        ("consumer", f"{consumer_name} ({consumer})" if consumer_name else consumer),
        ("scopes", key.get("scopes") or "(all of the consumer's permissions)"),
        ("allowed CIDRs", key.get("allowed_cidrs")), ("description", key.get("description")),
        ("created", short_time(key.get("created_at"))), ("expires", short_time(key.get("expires_at"))),
        ("revoked", short_time(key.get("revoked_at"))), ("last used", short_time(key.get("last_used_at"))),
        ("predecessor", key.get("predecessor_id")), ("successor", key.get("successor_id")),
    ])


def _print_new_key(record: Record) -> None:
    """The plaintext, alone on its line so it is easy to copy, and the warning that it is shown once."""
    click.echo(record["key"])
    warn("this is the only time the key is shown: store it now (e.g. in a secret manager); only a keyed hash "
         "of it is kept")


def _parse_metadata(values: Sequence[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        metadata[name] = value
    return metadata


# -- init, migrate ------------------------------------------------------------------------------------------


@click.command("init")
@_config_option
@click.option("--name", default="admin", show_default=True, help="Name of the first admin consumer.")
@_json_option
def init(config_path: str, name: str, as_json: bool) -> None:
    """Create the first admin consumer and an admin key (once: refused when an admin consumer exists).

    The store is migrated first. The key is printed once; store it.
    """
    setup_cli_logging()

    async def go() -> int:
        from bastion.cli.local_store import open_local

        async with open_local(Path(config_path), migrate_first=True) as backend:
            existing = [c for c in await backend.list_consumers() if c.get("admin_role") == "admin"]
            if existing:
                raise CliError(f"the store already has an admin consumer ({existing[0]['name']!r}); "
                               f"issue more admin keys with `bastion keys create --consumer "
                               f"{existing[0]['name']} --level admin`")
            consumer = await backend.create_consumer({"name": name, "admin_role": "admin"})
            try:
                key = await backend.create_key(consumer["id"], "admin", scopes=(), ttl_days=None,
                                               allowed_cidrs=(), description="created by bastion init")
            except BaseException:
                # Without its key the consumer would block the next `init` while nobody can use it.
                with contextlib.suppress(Exception):
                    await backend.delete_consumer(consumer["id"])
                raise
        if as_json:
            emit_json({"consumer": consumer, "api_key": key})
            return 0
        click.echo(f"Created the admin consumer {consumer['name']!r} ({consumer['id']}) and an admin key "
                   f"{key['display_prefix']} expiring {short_time(key['expires_at'])}:")
        _print_new_key(key)
        return 0

    sys.exit(guarded(lambda: asyncio.run(go())))


@click.command("migrate")
@_config_option
@_json_option
def migrate(config_path: str, as_json: bool) -> None:
    """Migrate the identity store to the newest schema (needed for PostgreSQL; SQLite migrates itself)."""
    setup_cli_logging()

    async def go() -> int:
        from bastion.cli.local_store import load_settings, migrate_store

        current, head = await migrate_store(load_settings(Path(config_path)))
        if as_json:
            emit_json({"revision": current, "head": head})
        else:
            click.echo(f"identity store at revision {current} (head {head})")
        return 0 if current == head else 1

    sys.exit(guarded(lambda: asyncio.run(go())))


# -- consumers ----------------------------------------------------------------------------------------------


@click.group("consumers")
def consumers() -> None:
    """Consumers: the applications and people that hold API keys."""


@consumers.command("list")
@connection_options
def consumers_list(connection: Connection) -> None:
    """List consumers by name."""

    async def go(backend: Backend) -> None:
        records = await backend.list_consumers()
        if connection.as_json:
            emit_json(records)
        elif not records:
            click.echo("no consumers")
        else:
            print_table(["NAME", "ID", "STATUS", "ROLES", "ADMIN ROLE", "PLAN"],
                        [[c.get("name"), c.get("id"), c.get("status"), c.get("roles"), c.get("admin_role"),
                          c.get("plan")] for c in records])

    _run(connection, go)


@consumers.command("show")
@click.argument("ref", metavar="NAME_OR_ID")
@connection_options
def consumers_show(connection: Connection, ref: str) -> None:
    """Show one consumer."""

    async def go(backend: Backend) -> None:
        consumer = await backend.find_consumer(ref)
        if connection.as_json:
            emit_json(consumer)
        else:
            _show_consumer(consumer)

    _run(connection, go)


@consumers.command("create")
@click.argument("name")
@click.option("--role", "roles", multiple=True, help="Gateway role (repeatable); it must exist.")
@click.option("--admin-role", type=click.Choice(_ADMIN_ROLES), help="Role on the admin API.")
@click.option("--plan", help="Rate-limit plan.")
@click.option("--allow", "allowed_cidrs", multiple=True, help="Client address or CIDR its keys may be used "
              "from (repeatable; default anywhere).")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Free-form metadata (repeatable).")
@click.option("--disabled", is_flag=True, help="Create it disabled (its keys are refused).")
@connection_options
def consumers_create(connection: Connection, name: str, roles: tuple[str, ...], admin_role: str | None,
                     plan: str | None, allowed_cidrs: tuple[str, ...], metadata: tuple[str, ...],
                     disabled: bool) -> None:
    """Create a consumer."""
    fields: dict[str, Any] = {"name": name, "roles": list(roles), "admin_role": admin_role, "plan": plan,
                              "allowed_cidrs": list(allowed_cidrs), "metadata": _parse_metadata(metadata),
                              "status": "disabled" if disabled else "active"}

    async def go(backend: Backend) -> None:
        consumer = await backend.create_consumer(fields)
        if connection.as_json:
            emit_json(consumer)
        else:
            click.echo(f"Created consumer {consumer.get('name')!r}.")
            _show_consumer(consumer)

    _run(connection, go)


@consumers.command("update")
@click.argument("ref", metavar="NAME_OR_ID")
@click.option("--name", help="New name.")
@click.option("--role", "roles", multiple=True, help="Replace the roles with these (repeatable).")
@click.option("--no-roles", is_flag=True, help="Take every role away.")
@click.option("--admin-role", type=click.Choice([*_ADMIN_ROLES, "none"]), help="Role on the admin API, or none.")
@click.option("--plan", help="Rate-limit plan.")
@click.option("--no-plan", is_flag=True, help="Remove the plan.")
@click.option("--allow", "allowed_cidrs", multiple=True, help="Replace the allowed CIDRs (repeatable).")
@click.option("--no-allow", is_flag=True, help="Allow any client address again.")
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="Replace the metadata (repeatable).")
@click.option("--no-metadata", is_flag=True, help="Remove all metadata.")
@click.option("--enable/--disable", "enable", default=None,
              help="Enable or disable the consumer (disabling revokes its OAuth clients' tokens).")
@connection_options
def consumers_update(connection: Connection, ref: str, name: str | None, roles: tuple[str, ...], no_roles: bool,
                     admin_role: str | None, plan: str | None, no_plan: bool, allowed_cidrs: tuple[str, ...],
                     no_allow: bool, metadata: tuple[str, ...], no_metadata: bool, enable: bool | None) -> None:
    """Change a consumer; options not given keep their values (lists are replaced, not merged)."""
    for given, clear, what in ((roles, no_roles, "--role"), (plan, no_plan, "--plan"),
                               (allowed_cidrs, no_allow, "--allow"), (metadata, no_metadata, "--metadata")):
        if given and clear:
            raise click.UsageError(f"{what} and its --no-* option contradict each other")
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if roles or no_roles:
        changes["roles"] = list(roles)
    if admin_role is not None:
        changes["admin_role"] = None if admin_role == "none" else admin_role
    if plan is not None or no_plan:
        changes["plan"] = plan
    if allowed_cidrs or no_allow:
        changes["allowed_cidrs"] = list(allowed_cidrs)
    if metadata or no_metadata:
        changes["metadata"] = _parse_metadata(metadata)
    if enable is not None:
        changes["status"] = "active" if enable else "disabled"
    if not changes:
        raise click.UsageError("nothing to change: give at least one option (see --help)")

    async def go(backend: Backend) -> None:
        current = await backend.find_consumer(ref)
        consumer = await backend.update_consumer(current["id"], changes)
        if connection.as_json:
            emit_json(consumer)
        else:
            click.echo(f"Updated consumer {consumer.get('name')!r}.")
            _show_consumer(consumer)

    _run(connection, go)


@consumers.command("delete")
@click.argument("ref", metavar="NAME_OR_ID")
@connection_options
def consumers_delete(connection: Connection, ref: str) -> None:
    """Delete a consumer with all its keys and OAuth clients (their tokens are revoked first)."""

    async def go(backend: Backend) -> None:
        consumer = await backend.find_consumer(ref)
        await backend.delete_consumer(consumer["id"])
        if connection.as_json:
            emit_json(consumer)
        else:
            click.echo(f"Deleted consumer {consumer.get('name')!r} ({consumer.get('id')}) with its keys and OAuth "
                       f"clients.")

    _run(connection, go)


# -- roles --------------------------------------------------------------------------------------------------


@click.group("roles")
def roles() -> None:
    """Gateway roles: named sets of permissions granted to consumers."""


@roles.command("list")
@connection_options
def roles_list(connection: Connection) -> None:
    """List roles."""

    async def go(backend: Backend) -> None:
        records = await backend.list_roles()
        if connection.as_json:
            emit_json(records)
        elif not records:
            click.echo("no roles")
        else:
            print_table(["NAME", "PERMISSIONS", "DESCRIPTION"],
                        [[r.get("name"), r.get("permissions"), r.get("description")] for r in records])

    _run(connection, go)


@roles.command("show")
@click.argument("name")
@connection_options
def roles_show(connection: Connection, name: str) -> None:
    """Show one role."""

    async def go(backend: Backend) -> None:
        role = await backend.get_role(name)
        if connection.as_json:
            emit_json(role)
        else:
            print_details([("name", role.get("name")), ("permissions", role.get("permissions")),
                           ("description", role.get("description"))])

    _run(connection, go)


@roles.command("put")
@click.argument("name")
@click.option("--permission", "permissions", multiple=True, required=True,
              help="Permission, e.g. orders:read or orders:* (repeatable; replaces the role's permissions).")
@click.option("--description", help="What the role is for (kept when omitted).")
@connection_options
def roles_put(connection: Connection, name: str, permissions: tuple[str, ...], description: str | None) -> None:
    """Create a role or replace its permissions."""

    async def go(backend: Backend) -> None:
        text = description
        if text is None:
            try:
                text = str((await backend.get_role(name)).get("description") or "")
            except NotFoundError:
                text = ""
        role = await backend.put_role(name, list(permissions), text)
        if connection.as_json:
            emit_json(role)
        else:
            click.echo(f"Saved role {role.get('name')!r}: {display_text(role.get('permissions'))}")

    _run(connection, go)


@roles.command("delete")
@click.argument("name")
@connection_options
def roles_delete(connection: Connection, name: str) -> None:
    """Delete a role no consumer holds."""

    async def go(backend: Backend) -> None:
        role = await backend.get_role(name)
        await backend.delete_role(name)
        if connection.as_json:
            emit_json(role)
        else:
            click.echo(f"Deleted role {name!r}.")

    _run(connection, go)


# -- keys ---------------------------------------------------------------------------------------------------


@click.group("keys")
def keys() -> None:
    """API keys: issued to consumers, shown once, stored only as a keyed hash."""


@keys.command("create")
@click.option("--consumer", "consumer_ref", required=True, metavar="NAME_OR_ID", help="The key's owner.")
@click.option("--level", type=click.Choice(_LEVELS), required=True, help="What the key may do at most.")
@click.option("--scope", "scopes", multiple=True, help="Narrow the key to these permissions (repeatable; "
              "default all of the consumer's).")
@click.option("--ttl-days", type=click.FloatRange(min=0, min_open=True),
              help="Lifetime in days (default keys.default_ttl_days).")
@click.option("--allow", "allowed_cidrs", multiple=True, help="Client address or CIDR the key may be used from "
              "(repeatable).")
@click.option("--description", default="", help="What the key is for.")
@connection_options
def keys_create(connection: Connection, consumer_ref: str, level: str, scopes: tuple[str, ...],
                ttl_days: float | None, allowed_cidrs: tuple[str, ...], description: str) -> None:
    """Issue a key; its plaintext is printed once."""

    async def go(backend: Backend) -> None:
        consumer = await backend.find_consumer(consumer_ref)
        key = await backend.create_key(consumer["id"], level, scopes=scopes, ttl_days=ttl_days,
                                       allowed_cidrs=allowed_cidrs, description=description)
        if connection.as_json:
            emit_json(key)
            return
        click.echo(f"Created {key.get('level')} key {key.get('display_prefix')} for {consumer.get('name')!r}, "
                   f"expiring {short_time(key.get('expires_at'))}:")
        _print_new_key(key)

    _run(connection, go)


@keys.command("list")
@click.option("--consumer", "consumer_ref", metavar="NAME_OR_ID", help="Only this consumer's keys.")
@connection_options
def keys_list(connection: Connection, consumer_ref: str | None) -> None:
    """List keys, newest first."""

    async def go(backend: Backend) -> None:
        consumer = await backend.find_consumer(consumer_ref) if consumer_ref is not None else None
        records = await backend.list_keys(consumer["id"] if consumer else None)
        if connection.as_json:
            emit_json(records)
            return
        if not records:
            click.echo("no keys")
            return
        names = ({consumer["id"]: consumer.get("name")} if consumer
                 else {c["id"]: c.get("name") for c in await backend.list_consumers()})
        now = datetime.now(UTC)
        print_table(["KEY ID", "PREFIX", "LEVEL", "CONSUMER", "STATE", "EXPIRES", "LAST USED", "DESCRIPTION"],
                    [[k.get("key_id"), k.get("display_prefix"), k.get("level"),
                      names.get(k.get("consumer_id"), k.get("consumer_id")), key_state(k, now),
                      short_time(k.get("expires_at")), short_time(k.get("last_used_at")), k.get("description")]
                     for k in records])

    _run(connection, go)


@keys.command("show")
@click.argument("key_id")
@connection_options
def keys_show(connection: Connection, key_id: str) -> None:
    """Show one key (never its secret: it is not stored)."""

    async def go(backend: Backend) -> None:
        key = await backend.get_key(key_id)
        if connection.as_json:
            emit_json(key)
            return
        try:
            name = (await backend.find_consumer(str(key.get("consumer_id")))).get("name")
        except NotFoundError:
            name = None
        _show_key(key, name)

    _run(connection, go)


@keys.command("rotate")
@click.argument("key_id")
@click.option("--overlap-hours", type=click.FloatRange(min=0), help="How long the old key keeps working "
              "(default keys.rotation_overlap_hours).")
@click.option("--ttl-days", type=click.FloatRange(min=0, min_open=True),
              help="The successor's lifetime (default the old key's original lifetime).")
@connection_options
def keys_rotate(connection: Connection, key_id: str, overlap_hours: float | None, ttl_days: float | None) -> None:
    """Issue a successor with the same settings; the old key expires after the overlap."""

    async def go(backend: Backend) -> None:
        successor = await backend.rotate_key(key_id, overlap_hours, ttl_days)
        if connection.as_json:
            emit_json(successor)
            return
        click.echo(f"Rotated {key_id}: the successor is {successor.get('display_prefix')}, expiring "
                   f"{short_time(successor.get('expires_at'))}:")
        _print_new_key(successor)

    _run(connection, go)


@keys.command("revoke")
@click.argument("key_id")
@connection_options
def keys_revoke(connection: Connection, key_id: str) -> None:
    """Revoke a key now (gateways stop accepting it within a second)."""

    async def go(backend: Backend) -> None:
        key = await backend.revoke_key(key_id)
        if connection.as_json:
            emit_json(key)
        else:
            click.echo(f"Revoked {key.get('display_prefix')} at {short_time(key.get('revoked_at'))}.")

    _run(connection, go)


# -- audit log ----------------------------------------------------------------------------------------------


@click.group("audit-log")
def audit_log() -> None:
    """The hash-chained audit log of identity changes."""


@audit_log.command("list")
@click.option("--after", type=click.IntRange(min=0), default=0, show_default=True,
              help="Only entries after this sequence number.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@connection_options
def audit_list(connection: Connection, after: int, limit: int) -> None:
    """List audit entries, oldest first."""

    async def go(backend: Backend) -> None:
        entries = await backend.list_audit(after, limit)
        if connection.as_json:
            emit_json(entries)
            return
        if not entries:
            click.echo("no entries")
            return
        print_table(["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "CLIENT"],
                    [[e.get("seq"), short_time(e.get("time")), e.get("actor"), e.get("action"), e.get("target"),
                      e.get("client_ip")] for e in entries])
        if len(entries) == limit:
            click.echo(f"(more may follow: --after {entries[-1].get('seq')})", err=True)

    _run(connection, go)


@audit_log.command("verify")
@connection_options
def audit_verify(connection: Connection) -> None:
    """Re-compute the hash chain. Exit 0 when intact, 1 at the first edited, missing or inserted entry."""

    async def go(backend: Backend) -> int:
        result = await backend.verify_audit()
        ok = result.get("ok") is True
        if connection.as_json:
            emit_json(result)
        elif ok:
            click.echo(f"audit log intact: {result.get('checked')} entries; head {result.get('last_seq')} "
                       f"{result.get('last_hash')} (keep this elsewhere to detect truncation)")
        if not ok:
            click.echo(f"error: the audit log is broken at entry {display_text(result.get('first_bad_seq'))}: "
                       f"{display_text(result.get('reason'))} (the {display_text(result.get('checked'))} entries "
                       f"before it are intact)", err=True)
        return 0 if ok else 1

    _run(connection, go)


def register(group: click.Group) -> None:
    for command in (init, migrate, consumers, roles, keys, audit_log):
        group.add_command(command)
