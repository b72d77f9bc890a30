"""An acknowledged write is never lost: writers are killed with SIGKILL mid-loop, then every key id they
reported after its commit must be in the database (and the audit chain must still verify)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.storage.engine import create_engine
from bastion.storage.identity_store import IdentityStore
from tests.contract.test_identity_store import temporary_postgres_database

WRITER = Path(__file__).resolve().parents[1] / "support" / "key_writer.py"
RUN_SECONDS = 1.5


class Writer:
    """A key_writer process whose stdout lines are collected by a thread."""

    def __init__(self, url: str, name: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(WRITER), url, name], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == "ready":
                self.ready.set()
            elif line.endswith("\n"):  # a torn last line was never acknowledged
                self.lines.append(line.strip())

    def kill(self) -> list[str]:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._reader.join(10)
        assert self.process.stderr is not None
        stderr = self.process.stderr.read()
        self.process.stderr.close()
        assert self.process.returncode == -signal.SIGKILL, stderr
        return self.lines


def run_writers(url: str, names: list[str]) -> list[str]:
    writers = [Writer(url, name) for name in names]
    try:
        for writer in writers:
            assert writer.ready.wait(30), "the writer did not start"
        time.sleep(RUN_SECONDS)
    finally:
        acknowledged = [key_id for writer in writers for key_id in writer.kill()]
    return acknowledged


async def _check(url: str, acknowledged: list[str]) -> None:
    engine = create_engine(url)
    try:
        store = IdentityStore(engine)
        stored = {record.key_id for record in await store.list_keys(limit=1000)}
        if len(acknowledged) >= 1000:  # list_keys pages at 1000: check one by one instead
            stored = {key_id for key_id in acknowledged if await store.get_key(key_id) is not None}
        missing = [key_id for key_id in acknowledged if key_id not in stored]
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged keys lost"
        verification = await store.verify_audit_chain()
        assert verification.ok, verification
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'durable.db'}"
    else:
        with temporary_postgres_database() as url:
            yield url


@pytest.mark.parametrize("round_", [1, 2, 3])
def test_acknowledged_writes_survive_kill_9(database_url: str, round_: int) -> None:
    acknowledged = run_writers(database_url, [f"writer-{round_}"])
    assert len(acknowledged) >= 5, "the writer made too little progress to mean anything"
    asyncio.run(_check(database_url, acknowledged))
    print(f"round {round_}: {len(acknowledged)} acknowledged writes, none lost")


def test_two_writer_processes_keep_one_valid_chain(database_url: str) -> None:
    acknowledged = run_writers(database_url, ["writer-a", "writer-b"])
    assert len(acknowledged) >= 5
    asyncio.run(_check(database_url, acknowledged))

