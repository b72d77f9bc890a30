"""Build script: with ``BASTION_NATIVE=1`` the per-request modules are compiled to C with mypyc.

Why: the data plane is plain, strictly typed Python, and every request walks the same few hundred lines
(parser callbacks, routing, policies, the upstream client). mypyc turns exactly that kind of code into C
with native classes and direct calls; measured on the pass-through bench it takes about a third off the
gateway's CPU time per request. The same sources still run uncompiled (``make pure``), so nothing here
is a second implementation.

``make native`` (part of ``make demo``, ``make test`` and ``make bench``) runs
``BASTION_NATIVE=1 python setup.py build_ext --inplace``; the compiled modules land next to their sources
with a manifest of the source digests they were built from, which ``bastion/__init__.py`` checks so that
an edited source is never shadowed by a stale compiled module.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
SOURCE_ROOT = ROOT / "src"
MANIFEST = SOURCE_ROOT / "bastion" / "_native_manifest.json"

# The modules a proxied request runs through. Modules that define pydantic models or run once at start-up
# stay interpreted: compiling them gains nothing per request.
NATIVE_MODULES = [
    "bastion/server/http1.py",
    "bastion/server/clock.py",
    "bastion/server/per_loop.py",
    "bastion/server/write_batch.py",
    "bastion/proxy/cluster.py",
    "bastion/proxy/connection.py",
    "bastion/proxy/deadlines.py",
    "bastion/proxy/errors.py",
    "bastion/proxy/headers.py",
    "bastion/proxy/pool.py",
    "bastion/pipeline/alternatives.py",
    "bastion/pipeline/compiled.py",
    "bastion/pipeline/context.py",
    "bastion/pipeline/handler.py",
    "bastion/pipeline/mount.py",
    "bastion/pipeline/policy.py",
    "bastion/routing/path.py",
    "bastion/routing/router.py",
    "bastion/observability/access_log.py",
    "bastion/observability/metrics.py",
    "bastion/observability/redaction.py",
    "bastion/errors/codes.py",
    "bastion/errors/problem.py",
    "bastion/policies/counting.py",
    "bastion/policies/failed_auth.py",
    "bastion/policies/forwarding.py",
    "bastion/policies/authorize/policy.py",
    "bastion/policies/business_flow/policy.py",
    "bastion/policies/concurrency/policy.py",
    "bastion/policies/ip_allow/policy.py",
    "bastion/policies/json_limits/policy.py",
    "bastion/policies/key_auth/policy.py",
    "bastion/policies/oauth2/policy.py",
    "bastion/policies/query_limits/policy.py",
    "bastion/policies/quota/policy.py",
    "bastion/policies/rate_limit/keys.py",
    "bastion/policies/rate_limit/policy.py",
    "bastion/policies/security_headers/policy.py",
    "bastion/identity/authenticator.py",
    "bastion/identity/principal.py",
    "bastion/oauth/resource.py",
    "bastion/oauth/revocation.py",
    "bastion/oauth/server/keyset.py",
    "bastion/oauth/token_cache.py",
    "bastion/ratelimit/algorithms.py",
    "bastion/ratelimit/memory.py",
]


def source_digests() -> dict[str, str]:
    return {path: hashlib.sha256((SOURCE_ROOT / path).read_bytes()).hexdigest() for path in NATIVE_MODULES}


def native_extensions() -> list[object]:
    if os.environ.get("BASTION_NATIVE") != "1":
        return []
    from mypyc.build import mypycify  # only needed for the native build

    os.chdir(SOURCE_ROOT)  # module names follow the paths: bastion/server/http1.py -> bastion.server.http1
    try:
        return list(mypycify(NATIVE_MODULES, opt_level="3", group_name="bastion._native",
                             target_dir=str(ROOT / "build" / "mypyc")))
    finally:
        os.chdir(ROOT)


digests = source_digests()  # before compiling: a source edited during the build must show as stale
native = native_extensions()
setup(ext_modules=native)
if native and "build_ext" in sys.argv:
    MANIFEST.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
