"""The generated reference docs match the code, and the error registry only ever grows."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from bastion.config.docs import main, render_config_reference, render_error_reference
from bastion.errors.codes import ALL_CODES, ErrorCode

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SNAPSHOT = Path(__file__).with_name("errors_snapshot.json")
REGENERATE = "docs are out of date: run `python -m bastion.config.docs` and commit the result"


def test_configuration_reference_in_sync() -> None:
    path = DOCS / "configuration.md"
    assert path.is_file(), REGENERATE
    assert path.read_text(encoding="utf-8") == render_config_reference(), REGENERATE


def test_error_reference_in_sync() -> None:
    path = DOCS / "errors.md"
    assert path.is_file(), REGENERATE
    assert path.read_text(encoding="utf-8") == render_error_reference(), REGENERATE


def test_check_mode_reports_stale_files(tmp_path: Path) -> None:
    assert main(["--docs-dir", str(tmp_path), "--check"]) == 1
    assert main(["--docs-dir", str(tmp_path)]) == 0
    assert (tmp_path / "configuration.md").read_text(encoding="utf-8") == render_config_reference()
    assert main(["--docs-dir", str(tmp_path), "--check"]) == 0


def test_every_code_is_documented() -> None:
    errors_doc = render_error_reference()
    for code in ALL_CODES:
        assert f'<a id="{code.code}"></a>' in errors_doc


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda c: c.code)
def test_error_code_shape(code: ErrorCode) -> None:
    assert re.fullmatch(r"^[a-z_]+\.[a-z_]+$", code.code), code.code
    assert 400 <= code.status <= 599, (code.code, code.status)
    assert code.title.strip() and code.description.strip()


def test_error_codes_are_unique() -> None:
    counts = Counter(code.code for code in ALL_CODES)
    duplicated = sorted(name for name, count in counts.items() if count > 1)
    assert not duplicated, f"error codes used twice: {duplicated}"


def test_error_registry_matches_snapshot() -> None:
    """Codes are never renamed or removed and never change status; new codes are added to the snapshot."""
    snapshot: dict[str, int] = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    registry = {code.code: code.status for code in ALL_CODES}

    removed = sorted(set(snapshot) - set(registry))
    assert not removed, (
        f"error codes removed or renamed: {removed}. Codes are part of the public contract: "
        "restore them in src/bastion/errors/codes.py (add a new code instead of renaming one)."
    )
    changed = {code: (status, registry[code]) for code, status in snapshot.items()
               if registry[code] != status}
    assert not changed, f"error code statuses changed (snapshot, registry): {changed}"

    missing = {code: status for code, status in registry.items() if code not in snapshot}
    if missing:
        lines = "\n".join(f'  "{code}": {status},' for code, status in sorted(missing.items()))
        pytest.fail(
            f"new error codes are not in {SNAPSHOT.relative_to(ROOT)}. If they are intended, add these "
            f"entries to the JSON object there (and regenerate the docs with "
            f"`python -m bastion.config.docs`):\n{lines}",
            pytrace=False,
        )
