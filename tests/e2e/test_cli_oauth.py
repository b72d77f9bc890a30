"""`bastion oauth clients | keys | rotate-key` as an operator runs them: locally on the store named by ``-c``
and remotely through a running gateway's admin API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from bastion.identity.keys import KeyHasher
from bastion.oauth.revocation import CHANNEL
from bastion.oauth.server.store import OAuthStore
from bastion.storage.engine import create_engine
from tests.contract.test_counter_stores import REDIS_URL, require_redis
from tests.e2e.test_cli_identity import ADMIN_KEY_ENV, Cli, sqlite_secrets, write_config
from tests.e2e.test_oauth_admin import (
    ISSUER,
    READER_ROLE,
    access_token,
    echo_status,
    jwks_kids,
    oauth_config,
    signing_kid,
    token_id,
)
from tests.support.processes import Gateway, Upstream

SERVER_ON = {"server": {"enabled": True, "issuer": ISSUER}}


def verifies(data_dir: Path, client_id: str, secret: str) -> bool:
    """Whether the store accepts this secret for the client (opened like the gateway opens it)."""

    async def check() -> bool:
        engine = create_engine(f"sqlite:///{data_dir / 'bastion.db'}")
        try:
            store = OAuthStore(engine, KeyHasher((data_dir / "key-pepper").read_bytes().strip()))
            return await store.verify_client_secret(client_id, secret) is not None
        finally:
            await engine.dispose()

    return asyncio.run(check())


def stored_bytes(data_dir: Path) -> bytes:
    return b"".join(path.read_bytes() for path in data_dir.glob("bastion.db*"))


def secret_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("bcs_")]


def eventually(probe: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def site(tmp_path: Path) -> Callable[..., tuple[Cli, Path]]:
    """A configuration (with ``oauth`` as given) and a local-mode CLI on it."""

    def make(name: str = "site", **extra: Any) -> tuple[Cli, Path]:
        config = write_config(tmp_path / name, **extra)
        data_dir = tmp_path / name / "data"
        return Cli(mode=["-c", str(config)], secrets=sqlite_secrets(data_dir)), data_dir

    return make


# -- LOCAL mode ---------------------------------------------------------------------------------------------


def test_clients_locally(site: Callable[..., tuple[Cli, Path]]) -> None:
    cli, data_dir = site()
    shop = cli.json("consumers", "create", "shop")
    cli.json("consumers", "create", "other")

    created = cli.json("oauth", "clients", "create", "--consumer", "shop", "--name", "nightly export", "--kind",
                       "confidential", "--grant", "client_credentials", "--scope", "orders:read")
    secret = created.pop("client_secret")
    client_id = created["client_id"]
    assert client_id.startswith("bcl_") and secret.startswith("bcs_")
    assert created["consumer_id"] == shop["id"] and created["scopes"] == ["orders:read"]
    assert created["kind"] == "confidential" and created["grant_types"] == ["client_credentials"]
    assert verifies(data_dir, client_id, secret)

    human = cli.run("oauth", "clients", "create", "--consumer", shop["id"], "--name", "backup", "--kind",
                    "confidential", "--grant", "client_credentials")
    assert len(secret_lines(human.stdout)) == 1
    assert "only time the client secret is shown" in human.stderr
    backup_secret = secret_lines(human.stdout)[0]
    public = cli.json("oauth", "clients", "create", "--consumer", "other", "--name", "app", "--kind", "public",
                      "--grant", "authorization_code", "--grant", "refresh_token",
                      "--redirect-uri", "com.example.app:/cb")
    assert public["client_secret"] is None and public["redirect_uris"] == ["com.example.app:/cb"]
    assert public["grant_types"] == ["authorization_code", "refresh_token"]

    listed = cli.json("oauth", "clients", "list")
    assert [c["name"] for c in listed] == ["nightly export", "backup", "app"]
    assert listed[0] == created
    table = cli.run("oauth", "clients", "list").stdout.splitlines()
    assert table[0].split()[:4] == ["CLIENT", "ID", "NAME", "KIND"] and len(table) == 4
    assert "shop" in table[1] and "other" in table[3]

    updated = cli.json("oauth", "clients", "update", client_id, "--name", "export", "--scope", "orders:read",
                       "--scope", "orders:write", "--disable")
    assert updated["name"] == "export" and updated["status"] == "disabled"
    assert updated["scopes"] == ["orders:read", "orders:write"] and updated["grant_types"] == ["client_credentials"]
    assert not verifies(data_dir, client_id, secret)
    shown = cli.run("oauth", "clients", "update", client_id, "--enable", "--no-scopes").stdout
    assert f"shop ({shop['id']})" in shown and "client_credentials" in shown and "orders:read" not in shown
    assert verifies(data_dir, client_id, secret)

    rotated = cli.json("oauth", "clients", "rotate-secret", client_id, "--overlap-hours", "2")
    new_secret = rotated.pop("client_secret")
    assert new_secret != secret and rotated["previous_secret_expires_at"] is not None
    assert verifies(data_dir, client_id, secret) and verifies(data_dir, client_id, new_secret)
    rotated_human = cli.run("oauth", "clients", "rotate-secret", client_id, "--overlap-hours", "0")
    assert len(secret_lines(rotated_human.stdout)) == 1
    last_secret = secret_lines(rotated_human.stdout)[0]
    assert not verifies(data_dir, client_id, new_secret) and verifies(data_dir, client_id, last_secret)

    # refusals exit 1 with the store's message; usage errors exit 2
    assert "redirect URI" in cli.run("oauth", "clients", "create", "--consumer", "other", "--name", "x",
                                     "--kind", "public", "--grant", "authorization_code", "--redirect-uri",
                                     "http://app.example.com/cb", expect=1).stderr
    assert "public client has no secret" in cli.run("oauth", "clients", "rotate-secret", public["client_id"],
                                                    expect=1).stderr
    cli.run("oauth", "clients", "create", "--consumer", "shop", "--name", "x", "--kind", "confidential",
            "--grant", "password", expect=2)
    assert "nothing to change" in cli.run("oauth", "clients", "update", client_id, expect=2).stderr
    assert "contradict" in cli.run("oauth", "clients", "update", client_id, "--scope", "a:b", "--no-scopes",
                                   expect=2).stderr

    deleted = cli.json("oauth", "clients", "delete", client_id)
    assert deleted["client_id"] == client_id
    assert not verifies(data_dir, client_id, last_secret)
    assert "no such OAuth client" in cli.run("oauth", "clients", "show", client_id, expect=1).stderr
    assert "revoked its tokens" in cli.run("oauth", "clients", "delete", public["client_id"]).stdout

    actions = [e["action"] for e in cli.json("audit-log", "list", "--limit", "1000")
               if e["action"].startswith("oauth_client.")]
    assert actions == ["oauth_client.create"] * 3 + ["oauth_client.update"] * 2 \
        + ["oauth_client.rotate_secret"] * 2 + ["oauth_client.delete"] * 2

    # each secret was printed by the command that made it, and is stored nowhere
    secrets = [secret, backup_secret, new_secret, last_secret]
    for value in secrets:
        assert sum(value in output for output in cli.outputs) == 1
        assert value.encode() not in stored_bytes(data_dir)

    # without the authorization server there are no signing keys
    assert "oauth.server.enabled" in cli.run("oauth", "rotate-key", expect=1).stderr


def test_signing_keys_locally(site: Callable[..., tuple[Cli, Path]]) -> None:
    cli, data_dir = site(oauth=SERVER_ON)
    keys = cli.json("oauth", "keys")  # the CLI may run before the first start: it creates them like a node
    states = {key["state"]: key for key in keys}
    assert set(states) == {"active", "next"} and all(key["alg"] == "ES256" for key in keys)

    rotation = cli.json("oauth", "rotate-key")
    assert rotation["active"]["kid"] == states["next"]["kid"]
    after = {key["kid"]: key for key in rotation["items"]}
    assert after[states["active"]["kid"]]["state"] == "retired"
    assert after[states["active"]["kid"]]["keep_until"] is not None
    new_next = [key["kid"] for key in rotation["items"] if key["state"] == "next"]
    assert len(new_next) == 1 and new_next[0] not in {states["active"]["kid"], states["next"]["kid"]}
    assert cli.json("oauth", "keys") == rotation["items"]

    human = cli.run("oauth", "rotate-key").stdout
    assert "signs from now on" in human and "PUBLISHED UNTIL" in human
    table = cli.run("oauth", "keys").stdout.splitlines()
    assert table[0].split()[:3] == ["KID", "ALG", "STATE"] and len(table) == 1 + 4  # 2 retired, active, next
    entries = [e for e in cli.json("audit-log", "list", "--limit", "1000")
               if e["action"] == "oauth_signing_key.rotate"]
    assert len(entries) == 2 and entries[0]["actor"].startswith("cli:")
    stored = stored_bytes(data_dir)
    assert b'"d":' not in stored  # private keys are stored encrypted


# -- REMOTE mode --------------------------------------------------------------------------------------------


@pytest.fixture
def oauth_gateway(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Gateway:
    return make_gateway(oauth_config(upstream.url))


def test_remote_mode_through_the_admin_api(oauth_gateway: Gateway) -> None:
    gateway = oauth_gateway
    data_dir = gateway.config_path.parent / ".bastion"
    local = Cli(mode=["-c", str(gateway.config_path)], secrets=sqlite_secrets(data_dir))
    admin_key = local.json("init")["api_key"]["key"]
    remote = Cli(mode=["--admin-url", gateway.admin_url], env={ADMIN_KEY_ENV: admin_key},
                 secrets=sqlite_secrets(data_dir))
    remote.json("consumers", "create", "shop")

    created = remote.json("oauth", "clients", "create", "--consumer", "shop", "--name", "export", "--kind",
                          "confidential", "--grant", "client_credentials", "--scope", "orders:read")
    secret, client_id = created.pop("client_secret"), created["client_id"]
    assert verifies(data_dir, client_id, secret)
    assert remote.json("oauth", "clients", "show", client_id) == created
    assert local.json("oauth", "clients", "show", client_id) == created  # one record shape in both modes
    assert [c["client_id"] for c in remote.json("oauth", "clients", "list", "--consumer", "shop")] == [client_id]
    updated = remote.json("oauth", "clients", "update", client_id, "--name", "renamed", "--no-scopes")
    assert updated["name"] == "renamed" and updated["scopes"] == []
    rotated = remote.json("oauth", "clients", "rotate-secret", client_id, "--overlap-hours", "0")
    assert verifies(data_dir, client_id, rotated["client_secret"]) and not verifies(data_dir, client_id, secret)
    assert "public client cannot use" in remote.run(
        "oauth", "clients", "create", "--consumer", "shop", "--name", "x", "--kind", "public", "--grant",
        "client_credentials", expect=1).stderr
    remote.json("oauth", "clients", "delete", client_id)

    keys = remote.json("oauth", "keys")
    assert keys == local.json("oauth", "keys")
    rotation = remote.json("oauth", "rotate-key")
    assert rotation["active"]["kid"] == next(k["kid"] for k in keys if k["state"] == "next")
    assert local.json("oauth", "keys") == rotation["items"]
    emergency = remote.json("oauth", "rotate-key", "--emergency")
    withdrawn = next(k for k in emergency["items"] if k["kid"] == rotation["active"]["kid"])
    assert withdrawn["state"] == "retired" and withdrawn["keep_until"] == withdrawn["retired_at"]
    assert rotation["active"]["kid"] not in jwks_kids(gateway)
    entries = remote.json("audit-log", "list", "--limit", "1000")
    assert {e["actor"] for e in entries if e["action"].startswith("oauth_")} >= {"consumer:admin"}
    for value in (secret, rotated["client_secret"]):
        assert sum(value in output for output in remote.outputs + local.outputs) == 1
        assert value not in gateway.logs()

    # a rotation made locally, without Redis, reaches the gateway through its periodic key reload
    local_rotation = local.json("oauth", "rotate-key")
    new_next = next(k["kid"] for k in local_rotation["items"] if k["state"] == "next")
    assert eventually(lambda: new_next in jwks_kids(gateway), timeout=10.0), "the gateway never reloaded its keys"


def test_local_changes_reach_a_running_gateway(make_gateway: Callable[..., Gateway], upstream: Upstream) -> None:
    """With Redis, a rotation and a deletion made by the CLI are broadcast: the gateway acts on them at once."""
    require_redis()
    config = oauth_config(upstream.url)
    config["redis"] = REDIS_URL
    gateway = make_gateway(config)
    cli = Cli(mode=["-c", str(gateway.config_path)],
              secrets=sqlite_secrets(gateway.config_path.parent / ".bastion"))
    cli.json("roles", "put", READER_ROLE, "--permission", "orders:read")
    cli.json("consumers", "create", "shop", "--role", READER_ROLE)
    client = cli.json("oauth", "clients", "create", "--consumer", "shop", "--name", "export", "--kind",
                      "confidential", "--grant", "client_credentials", "--scope", "orders:read")
    credentials = (client["client_id"], client["client_secret"])
    old_token = access_token(gateway, *credentials)
    assert echo_status(gateway, old_token) == 200

    listener = redis.Redis.from_url(REDIS_URL).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(CHANNEL)
    try:
        rotation = cli.json("oauth", "rotate-key")
        assert _broadcast(listener, lambda data: data == b"keys"), "the rotation was not announced"
        new_next = next(k["kid"] for k in rotation["items"] if k["state"] == "next")
        assert eventually(lambda: new_next in jwks_kids(gateway), timeout=5.0)
        new_token = access_token(gateway, *credentials)
        assert signing_kid(new_token) == rotation["active"]["kid"] != signing_kid(old_token)
        assert echo_status(gateway, old_token) == echo_status(gateway, new_token) == 200

        cli.json("oauth", "clients", "delete", client["client_id"])
        jtis = {token_id(old_token), token_id(new_token)}
        assert _broadcast(listener, lambda data: jtis <= _revoked_jtis(data)), "the revocation was not announced"
        assert eventually(lambda: echo_status(gateway, new_token) == 401, timeout=3.0)
        assert echo_status(gateway, old_token) == 401
    finally:
        listener.close()


def _broadcast(listener: Any, wanted: Callable[[bytes], bool], timeout: float = 5.0) -> bool:
    """Whether a message the predicate accepts arrives on the channel (others may publish there too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = listener.get_message(timeout=0.5)
        data = message.get("data") if message else None
        if isinstance(data, bytes) and wanted(data):
            return True
    return False


def _revoked_jtis(data: bytes) -> set[str]:
    try:
        message = json.loads(data)
    except ValueError:
        return set()
    return {entry[0] for entry in message.get("revoked", [])} if isinstance(message, dict) else set()
