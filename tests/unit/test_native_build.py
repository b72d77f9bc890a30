"""The guard that keeps a stale compiled module from shadowing its edited source."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bastion import refuse_stale_native_build


def _package(tmp_path: Path, source: bytes, recorded: bytes) -> Path:
    package_root = tmp_path / "bastion"
    (package_root / "server").mkdir(parents=True)
    (package_root / "server" / "http1.py").write_bytes(source)
    digests = {"bastion/server/http1.py": hashlib.sha256(recorded).hexdigest()}
    (package_root / "_native_manifest.json").write_text(json.dumps(digests))
    return package_root


def test_matching_sources_pass(tmp_path: Path) -> None:
    refuse_stale_native_build(_package(tmp_path, b"x = 1\n", b"x = 1\n"))


def test_an_edited_source_refuses_the_import(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match=r"bastion/server/http1\.py.*make native"):
        refuse_stale_native_build(_package(tmp_path, b"x = 2\n", b"x = 1\n"))


def test_no_manifest_means_interpreted(tmp_path: Path) -> None:
    (tmp_path / "bastion").mkdir()
    refuse_stale_native_build(tmp_path / "bastion")

