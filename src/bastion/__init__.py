"""Bastion: a security-first API gateway."""

import hashlib
import json
from pathlib import Path

__version__ = "0.1.0"
__all__ = ["__version__"]


def refuse_stale_native_build(package_root: Path) -> None:
    """The per-request modules may be compiled with mypyc (setup.py). A compiled module is imported in
    preference to its source, so an edited source must never run as its older compiled self."""
    manifest = package_root / "_native_manifest.json"
    if not manifest.is_file():
        return
    digests: dict[str, str] = json.loads(manifest.read_text())
    stale = sorted(path for path, digest in digests.items()
                   if (source := package_root.parent / path).is_file()
                   and hashlib.sha256(source.read_bytes()).hexdigest() != digest)
    if stale:
        raise ImportError(f"bastion: compiled modules are older than their sources ({', '.join(stale)}): "
                          "run `make native` to rebuild them, or `make pure` to run the sources")


refuse_stale_native_build(Path(__file__).resolve().parent)
