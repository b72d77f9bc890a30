"""The identity commands as an operator runs them: `bastion init | migrate | consumers | roles | keys |
audit-log`, locally on SQLite and PostgreSQL, and remotely through a running gateway's admin API."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from bastion.identity.keys import parse_key
from tests.support.processes import BASTION, REPO, Gateway, Upstream, base_config

PG_SERVER = os.environ.get("BASTION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
ADMIN_KEY_ENV = "BASTION_ADMIN_KEY"


@dataclass
class Cli:
    """Runs `bastion <verb> ... <mode options>` as a subprocess and checks what every run must hold: no
    traceback, and never the pepper or a stored digest on either stream."""

    mode: list[str]
    env: dict[str, str] = field(default_factory=dict)
    secrets: Callable[[], list[str]] = lambda: []
    outputs: list[str] = field(default_factory=list)

    def run(self, *verb: str, expect: int = 0, env: dict[str, str] | None = None,
            mode: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = {k: v for k, v in os.environ.items() if k != ADMIN_KEY_ENV}
        environment.update(self.env)
        environment.update(env or {})
        result = subprocess.run([*BASTION, *verb, *(self.mode if mode is None else mode)], check=False,
                                capture_output=True, text=True, timeout=60, env=environment, cwd=REPO)
        assert result.returncode == expect, (verb, result.returncode, result.stdout, result.stderr)
        for needle in ("Traceback", 'File "', "sqlalchemy", "asyncpg."):
            assert needle not in result.stderr + result.stdout, (verb, result.stderr)
        for secret in self.secrets():
            assert secret not in result.stdout + result.stderr, verb
        if expect != 0:
            assert result.stderr.startswith(("error:", "warning:", "Usage:")), result.stderr
        self.outputs.append(result.stdout + result.stderr)
        return result

    def json(self, *verb: str, expect: int = 0, env: dict[str, str] | None = None) -> Any:
        result = self.run(*verb, "--json", expect=expect, env=env)
        return json.loads(result.stdout)  # nothing but JSON on stdout


def write_config(directory: Path, **extra: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bastion.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "server": {"data_dir": "data"}, **extra}))
    return path


def sqlite_secrets(data_dir: Path) -> Callable[[], list[str]]:
    """The pepper and every stored digest (hex and raw text forms), read fresh at each check."""

    def read() -> list[str]:
        found = []
        pepper = data_dir / "key-pepper"
        if pepper.exists():
            found.append(pepper.read_text().strip())
        database = data_dir / "bastion.db"
        if database.exists():
            with sqlite3.connect(database) as connection:
                for (digest,) in connection.execute("SELECT digest FROM api_keys"):
                    found.append(bytes(digest).hex())
        return found

    return read


@pytest.fixture
def local(tmp_path: Path) -> Cli:
    config = write_config(tmp_path / "site")
    return Cli(mode=["-c", str(config)], secrets=sqlite_secrets(tmp_path / "site" / "data"))


# -- LOCAL mode, SQLite -------------------------------------------------------------------------------------


def test_init_creates_the_first_admin_once(local: Cli, tmp_path: Path) -> None:
    created = local.json("init")
    consumer, api_key = created["consumer"], created["api_key"]
    assert consumer["name"] == "admin" and consumer["admin_role"] == "admin" and consumer["status"] == "active"
    parsed = parse_key(api_key["key"])
    assert parsed is not None and parsed.level == "admin" and parsed.key_id == api_key["key_id"]
    assert api_key["consumer_id"] == consumer["id"] and api_key["level"] == "admin"
    assert (tmp_path / "site" / "data" / "bastion.db").stat().st_mode & 0o077 == 0

    again = local.run("init", "--name", "root", expect=1)
    assert again.stdout == ""
    assert "already has an admin consumer ('admin')" in again.stderr
    assert [c["name"] for c in local.json("consumers", "list")] == ["admin"]

    # human output: the key alone on a line, and a warning that it is shown only once
    other = Cli(mode=["-c", str(write_config(tmp_path / "other"))])
    human = other.run("init", "--name", "ops")
    keys = [line for line in human.stdout.splitlines() if parse_key(line) is not None]
    assert len(keys) == 1
    assert "only time the key is shown" in human.stderr
    assert other.json("keys", "list")[0]["key_id"] == parse_key(keys[0]).key_id  # type: ignore[union-attr]


def test_roles_and_consumers_locally(local: Cli) -> None:
    local.json("init")
    # roles
    role = local.json("roles", "put", "shop-reader", "--permission", "orders:read", "--permission", "users:read",
                      "--description", "reads the shop")
    assert role == {"name": "shop-reader", "permissions": ["orders:read", "users:read"],
                    "description": "reads the shop"}
    kept = local.json("roles", "put", "shop-reader", "--permission", "orders:read")
    assert kept["permissions"] == ["orders:read"] and kept["description"] == "reads the shop"
    local.json("roles", "put", "auditor", "--permission", "audit:read")
    assert [r["name"] for r in local.json("roles", "list")] == ["auditor", "shop-reader"]
    table = local.run("roles", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "PERMISSIONS", "DESCRIPTION"]
    assert table[2].index("orders:read") == table[0].index("PERMISSIONS")  # aligned columns
    assert local.json("roles", "show", "shop-reader")["permissions"] == ["orders:read"]
    assert "no such role" in local.run("roles", "show", "nope", expect=1).stderr

    # consumers
    alice = local.json("consumers", "create", "alice", "--role", "shop-reader", "--plan", "gold",
                       "--allow", "10.0.0.0/8", "--metadata", "team=shop", "--metadata", "ticket=OPS-1")
    assert alice["roles"] == ["shop-reader"] and alice["plan"] == "gold"
    assert alice["allowed_cidrs"] == ["10.0.0.0/8"] and alice["metadata"] == {"team": "shop", "ticket": "OPS-1"}
    bob = local.json("consumers", "create", "bob", "--disabled")
    assert bob["status"] == "disabled" and bob["admin_role"] is None
    assert [c["name"] for c in local.json("consumers", "list")] == ["admin", "alice", "bob"]
    assert local.json("consumers", "show", "alice") == alice
    assert local.json("consumers", "show", alice["id"]) == alice
    shown = local.run("consumers", "show", "alice").stdout
    assert "plan:" in shown and "gold" in shown and alice["id"] in shown
    listing = local.run("consumers", "list").stdout.splitlines()
    assert listing[0].split()[:3] == ["NAME", "ID", "STATUS"] and len(listing) == 4

    updated = local.json("consumers", "update", "alice", "--disable", "--no-plan", "--role", "auditor",
                         "--role", "shop-reader", "--admin-role", "auditor", "--metadata", "team=ops")
    assert updated["status"] == "disabled" and updated["plan"] is None
    assert updated["roles"] == ["auditor", "shop-reader"] and updated["admin_role"] == "auditor"
    assert updated["metadata"] == {"team": "ops"} and updated["allowed_cidrs"] == ["10.0.0.0/8"]
    renamed = local.json("consumers", "update", alice["id"], "--name", "alice2", "--enable", "--no-allow",
                         "--admin-role", "none")
    assert renamed["name"] == "alice2" and renamed["status"] == "active" and renamed["allowed_cidrs"] == []
    assert renamed["admin_role"] is None

    # refusals: exit 1 with the store's message; usage errors exit 2
    assert "already exists" in local.run("consumers", "create", "bob", expect=1).stderr
    assert "unknown role(s): ghost" in local.run("consumers", "create", "carol", "--role", "ghost",
                                                 expect=1).stderr
    assert "not an IP address" in local.run("consumers", "create", "carol", "--allow", "10.0.0.300",
                                            expect=1).stderr
    assert "no consumer" in local.run("consumers", "show", "nobody", expect=1).stderr
    assert "nothing to change" in local.run("consumers", "update", "bob", expect=2).stderr
    local.run("consumers", "create", "carol", "--metadata", "novalue", expect=2)
    local.run("keys", "create", "--consumer", "bob", "--level", "root", expect=2)
    assert "still granted" in local.run("roles", "delete", "auditor", expect=1).stderr

    deleted = local.json("consumers", "delete", "alice2")
    assert deleted["id"] == alice["id"]
    assert [c["name"] for c in local.json("consumers", "list")] == ["admin", "bob"]
    local.json("roles", "delete", "auditor")
    assert [r["name"] for r in local.json("roles", "list")] == ["shop-reader"]


def test_keys_locally(local: Cli) -> None:
    local.json("init")
    local.json("roles", "put", "shop-reader", "--permission", "orders:read")
    alice = local.json("consumers", "create", "alice2", "--role", "shop-reader")
    local.json("consumers", "create", "bob")

    created = local.json("keys", "create", "--consumer", "alice2", "--level", "write", "--scope", "orders:read",
                         "--ttl-days", "10", "--allow", "192.0.2.0/24", "--description", "ci job")
    plaintext = created.pop("key")
    parsed = parse_key(plaintext)
    assert parsed is not None and parsed.level == "write" and parsed.key_id == created["key_id"]
    assert created["consumer_id"] == alice["id"] and created["scopes"] == ["orders:read"]
    assert created["allowed_cidrs"] == ["192.0.2.0/24"] and created["description"] == "ci job"
    key_id = created["key_id"]
    shown_key = local.json("keys", "show", key_id)
    assert shown_key == created and "key" not in shown_key
    listed = local.json("keys", "list", "--consumer", "alice2")
    assert [k["key_id"] for k in listed] == [key_id]
    assert len(local.json("keys", "list")) == 2  # the admin key too
    human_keys = local.run("keys", "list").stdout
    assert "alice2" in human_keys and "active" in human_keys and plaintext not in human_keys
    assert "lifetime is at most" in local.run("keys", "create", "--consumer", "bob", "--level", "read",
                                              "--ttl-days", "10000", expect=1).stderr

    rotated = local.json("keys", "rotate", key_id, "--overlap-hours", "2")
    successor = rotated.pop("key")
    assert parse_key(successor) is not None and successor != plaintext
    assert rotated["predecessor_id"] == key_id and rotated["scopes"] == ["orders:read"]
    assert _days(rotated["created_at"], rotated["expires_at"]) == 10  # the old key's lifetime by default
    old = local.json("keys", "show", key_id)
    assert old["successor_id"] == rotated["key_id"] and rotated["predecessor"] == old
    assert _days(old["created_at"], old["expires_at"]) < 1  # it now ends with the overlap
    assert "already been rotated" in local.run("keys", "rotate", key_id, expect=1).stderr
    human_rotate = local.run("keys", "rotate", rotated["key_id"])
    assert sum(parse_key(line) is not None for line in human_rotate.stdout.splitlines()) == 1

    revoked = local.json("keys", "revoke", key_id)
    assert revoked["revoked_at"] is not None
    assert "revoked" in local.run("keys", "show", key_id).stdout
    assert "no such key" in local.run("keys", "revoke", "AAAAAAAAAAAA", expect=1).stderr

    # deleting a consumer takes its keys with it
    deleted = local.json("consumers", "delete", "alice2")
    assert deleted["id"] == alice["id"]
    assert local.json("keys", "list", "--consumer", "bob") == []
    assert [k["level"] for k in local.json("keys", "list")] == ["admin"]
    assert "no consumer" in local.run("keys", "list", "--consumer", "alice2", expect=1).stderr

    # the plaintexts were printed only by the commands that created them
    assert sum(plaintext in output for output in local.outputs) == 1
    assert sum(successor in output for output in local.outputs) == 1


def test_audit_log_lists_changes_and_verify_finds_tampering(local: Cli, tmp_path: Path) -> None:
    local.json("init")
    local.json("roles", "put", "reader", "--permission", "orders:read")
    local.json("consumers", "create", "dave", "--role", "reader")
    entries = local.json("audit-log", "list")
    assert [e["action"] for e in entries] == ["consumer.create", "key.create", "role.create", "consumer.create"]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert {e["actor"] for e in entries} == {f"cli:{_os_user()}"}
    assert [e["seq"] for e in local.json("audit-log", "list", "--after", "2", "--limit", "1")] == [3]
    table = local.run("audit-log", "list").stdout.splitlines()
    assert table[0].split()[:5] == ["SEQ", "TIME", "ACTOR", "ACTION", "TARGET"] and len(table) == 5

    verified = local.json("audit-log", "verify")
    assert verified["ok"] is True and verified["checked"] == 4 and verified["last_seq"] == 4
    assert "intact" in local.run("audit-log", "verify").stdout

    with sqlite3.connect(tmp_path / "site" / "data" / "bastion.db") as connection:
        connection.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    broken = local.json("audit-log", "verify", expect=1)
    assert broken["ok"] is False and broken["first_bad_seq"] == 2 and "edited" in broken["reason"]
    human = local.run("audit-log", "verify", expect=1)
    assert human.stdout == ""
    assert "broken at entry 2: entry content does not match its hash (edited)" in human.stderr


def test_configuration_and_usage_errors(tmp_path: Path) -> None:
    cli = Cli(mode=[])
    missing = cli.run("consumers", "list", "-c", str(tmp_path / "absent.yaml"), expect=2)
    assert "cannot read file" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nserver:\n  data_dirr: x\nkeys:\n  pepper: env:NOT_SET_ANYWHERE_42\n")
    invalid = cli.run("init", "-c", str(bad), expect=2)
    assert "server.data_dirr: unknown key" in invalid.stderr and ":3:" in invalid.stderr
    unset = write_config(tmp_path / "unset", keys={"pepper": "env:NOT_SET_ANYWHERE_42"})
    assert "NOT_SET_ANYWHERE_42 is not set" in cli.run("roles", "list", "-c", str(unset), expect=2).stderr
    # remote mode needs a key, never from the command line only
    no_key = cli.run("roles", "list", "--admin-url", "http://127.0.0.1:9", expect=2)
    assert ADMIN_KEY_ENV in no_key.stderr
    both = cli.run("roles", "list", "--admin-url", "http://127.0.0.1:9", "-c", str(unset), expect=2,
                   env={ADMIN_KEY_ENV: "bst_a_" + "A" * 45})
    assert "not both" in both.stderr
    malformed = cli.run("roles", "list", "--admin-url", "http://127.0.0.1:9", expect=2,
                        env={ADMIN_KEY_ENV: "hunter2"})
    assert "not a well-formed" in malformed.stderr and "hunter2" not in malformed.stderr
    assert "http://" in cli.run("roles", "list", "--admin-url", "ftp://x", expect=2,
                                env={ADMIN_KEY_ENV: _fake_key()}).stderr
    refused = cli.run("roles", "list", "--admin-url", "http://127.0.0.1:9", expect=1,
                      env={ADMIN_KEY_ENV: _fake_key()})
    assert "cannot reach the admin API" in refused.stderr


# -- LOCAL mode, PostgreSQL ---------------------------------------------------------------------------------


def _pg_url(database: str) -> str:
    return PG_SERVER.rsplit("/", 1)[0] + "/" + database


async def _pg_admin(sql: str) -> None:
    connection = await asyncpg.connect(PG_SERVER, timeout=3)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new database (its URL), dropped afterwards. PostgreSQL down: skip, except in CI where it fails."""
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL at {PG_SERVER.split('@')[-1]} is unreachable: {type(exc).__name__}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(reason)
        pytest.skip(reason)
    name = f"bastion_cli_{uuid.uuid4().hex[:16]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url(name)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_postgresql_store_migrate_then_verbs(tmp_path: Path) -> None:
    with fresh_postgres_database() as url:
        config = write_config(tmp_path / "pg", store=url)
        cli = Cli(mode=["-c", str(config)])
        not_migrated = cli.run("consumers", "list", expect=1)
        assert "bastion migrate" in not_migrated.stderr
        migrated = cli.run("migrate")
        assert "revision 0002" in migrated.stdout
        assert cli.json("migrate") == {"revision": "0002", "head": "0002"}  # a second run changes nothing
        admin = cli.json("init")["consumer"]
        cli.json("roles", "put", "reader", "--permission", "orders:read")
        erin = cli.json("consumers", "create", "erin", "--role", "reader")
        key = cli.json("keys", "create", "--consumer", "erin", "--level", "read")
        assert parse_key(key["key"]) is not None and key["consumer_id"] == erin["id"]
        assert [c["name"] for c in cli.json("consumers", "list")] == [admin["name"], "erin"]
        assert cli.json("keys", "revoke", key["key_id"])["revoked_at"] is not None
        assert cli.json("audit-log", "verify")["checked"] == 6
    unreachable = write_config(tmp_path / "gone", store=url)  # the database no longer exists
    assert "identity store" in Cli(mode=["-c", str(unreachable)]).run("roles", "list", expect=1).stderr


# -- against a running gateway ------------------------------------------------------------------------------


def keyed_config(upstream_url: str) -> dict[str, Any]:
    """The demo API behind key-auth: /v1/echo needs the permission echo:use."""
    config = base_config(upstream_url)
    v1 = config["apis"][0]
    v1["public"] = False
    v1["policies"] = {"key-auth": {}}
    for route in v1["routes"]:
        if route["name"] == "echo":
            route["permissions"] = ["echo:use"]
    return config


def wait_for_status(gateway: Gateway, key: str, status: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    with gateway.client() as client:
        while True:
            got = client.get("/v1/echo", headers={"authorization": f"Bearer {key}"}).status_code
            if got == status or time.monotonic() > deadline:
                return got
            time.sleep(0.1)


@pytest.fixture
def keyed_gateway(make_gateway: Callable[..., Gateway], upstream: Upstream) -> Gateway:
    return make_gateway(keyed_config(upstream.url))


def test_local_changes_reach_a_running_gateway(keyed_gateway: Gateway) -> None:
    gateway = keyed_gateway
    cli = Cli(mode=["-c", str(gateway.config_path)],
              secrets=sqlite_secrets(gateway.config_path.parent / ".bastion"))
    cli.json("init")
    cli.json("roles", "put", "echoer", "--permission", "echo:use")
    cli.json("consumers", "create", "frank", "--role", "echoer")
    key = cli.json("keys", "create", "--consumer", "frank", "--level", "read")
    assert wait_for_status(gateway, key["key"], 200) == 200
    cli.json("keys", "revoke", key["key_id"])
    assert wait_for_status(gateway, key["key"], 401, timeout=3.0) == 401

    other = cli.json("keys", "create", "--consumer", "frank", "--level", "read")
    assert wait_for_status(gateway, other["key"], 200) == 200
    cli.json("consumers", "update", "frank", "--disable")
    assert wait_for_status(gateway, other["key"], 401, timeout=3.0) == 401


def test_remote_mode_through_the_admin_api(keyed_gateway: Gateway, tmp_path: Path) -> None:
    gateway = keyed_gateway
    local = Cli(mode=["-c", str(gateway.config_path)])
    admin_key = local.json("init")["api_key"]["key"]
    remote = Cli(mode=["--admin-url", gateway.admin_url], env={ADMIN_KEY_ENV: admin_key},
                 secrets=sqlite_secrets(gateway.config_path.parent / ".bastion"))

    role = remote.json("roles", "put", "echoer", "--permission", "echo:use", "--description", "may echo")
    assert role == {"name": "echoer", "permissions": ["echo:use"], "description": "may echo"}
    assert [r["name"] for r in remote.json("roles", "list")] == ["echoer"]
    grace = remote.json("consumers", "create", "grace", "--role", "echoer", "--metadata", "team=web")
    assert grace["roles"] == ["echoer"] and grace["metadata"] == {"team": "web"}
    assert remote.json("consumers", "show", "grace")["id"] == grace["id"]
    assert {c["name"] for c in remote.json("consumers", "list")} == {"admin", "grace"}
    updated = remote.json("consumers", "update", "grace", "--plan", "gold")
    assert updated["plan"] == "gold"

    key = remote.json("keys", "create", "--consumer", "grace", "--level", "read", "--description", "web")
    assert parse_key(key["key"]) is not None and key["consumer_id"] == grace["id"]
    assert wait_for_status(gateway, key["key"], 200) == 200
    assert [k["key_id"] for k in remote.json("keys", "list", "--consumer", "grace")] == [key["key_id"]]
    assert remote.json("keys", "show", key["key_id"])["description"] == "web"
    for verb in (("keys", "show", key["key_id"]), ("consumers", "show", "grace"), ("roles", "show", "echoer")):
        # one record shape in both modes
        assert _without_usage(local.json(*verb)) == _without_usage(remote.json(*verb))
    rotated = remote.json("keys", "rotate", key["key_id"], "--overlap-hours", "0", "--ttl-days", "7")
    assert parse_key(rotated["key"]) is not None and rotated["predecessor_id"] == key["key_id"]
    assert rotated["predecessor"]["successor_id"] == rotated["key_id"]
    assert _days(rotated["created_at"], rotated["expires_at"]) == 7
    assert wait_for_status(gateway, rotated["key"], 200) == 200
    assert wait_for_status(gateway, key["key"], 401) == 401  # no overlap: the old key stopped at once
    assert remote.json("keys", "revoke", rotated["key_id"])["revoked_at"] is not None
    assert wait_for_status(gateway, rotated["key"], 401) == 401

    # the store's refusals and unknown names come back as one line, exit 1
    assert "no consumer" in remote.run("consumers", "show", "nobody", expect=1).stderr
    assert remote.run("consumers", "create", "grace", expect=1).stderr.startswith("error: ")
    entries = remote.json("audit-log", "list", "--after", "2")
    assert [e["action"] for e in entries][:2] == ["role.create", "consumer.create"]
    assert {e["actor"] for e in entries} == {"consumer:admin"}  # the API records the caller, not the OS user
    assert remote.json("audit-log", "verify")["ok"] is True
    remote.json("consumers", "delete", "grace")
    remote.json("roles", "delete", "echoer")

    # the key from a file, from the command line (with a warning), and a wrong one
    key_file = tmp_path / "admin.key"
    key_file.write_text(admin_key + "\n")
    key_file.chmod(0o600)
    from_file = remote.run("roles", "list", "--admin-key-file", str(key_file), env={ADMIN_KEY_ENV: ""})
    assert from_file.stderr == ""
    key_file.chmod(0o644)
    assert "readable by other users" in remote.run("roles", "list", "--admin-key-file", str(key_file),
                                                   env={ADMIN_KEY_ENV: ""}).stderr
    on_command_line = remote.run("roles", "list", "--admin-key", admin_key, env={ADMIN_KEY_ENV: ""})
    assert "shell history" in on_command_line.stderr
    wrong = remote.run("roles", "list", expect=1, env={ADMIN_KEY_ENV: _fake_key()})
    assert "not accepted" in wrong.stderr
    with httpx.Client() as client:  # the admin API is still healthy after all that
        assert client.get(gateway.admin_url + "/healthz").status_code == 200


def _days(start: str, end: str) -> float:
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() / 86400, 3)


def _without_usage(record: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name != "last_used_at"}


def _fake_key() -> str:
    from bastion.identity.keys import KeyLevel, generate_key

    return generate_key(KeyLevel.ADMIN).plaintext


def _os_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
